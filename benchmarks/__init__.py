"""Load benchmarking harness for zonemta, side by side with Postfix.

Entry point: ``python -m benchmarks.relay`` (see ``benchmarks/README.md``). The pieces:

- :mod:`benchmarks.sink`: a fast trio SMTP sink (the MX the relay delivers to), run as its own
  process; it reports arrival time per ``X-Bench-Id``.
- :mod:`benchmarks.inject`: a trio SMTP client that offers a bounded load over C connections.
- :mod:`benchmarks.procstat`: CPU seconds and memory of a process tree, read from ``/proc``.
- :mod:`benchmarks.postfix`: a private Postfix instance on loopback (the peer).
- :mod:`benchmarks.zonemta_relay`: the relay under test, started from a generated TOML config.
- :mod:`benchmarks.report`: percentiles, figures per system, the table and the JSON file.

The harness deliberately does not import ``zonemta``: it talks to the relay over SMTP only,
so it measures (and survives) whatever the relay does.
"""
