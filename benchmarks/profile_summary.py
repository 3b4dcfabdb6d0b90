"""Sum a py-spy raw profile (collapsed stacks) by function: where the relay's time goes.

    python -m benchmarks.profile_summary zonemta-profile.txt [--top 40]

Prints, per function, the share of samples spent in it (self) and under it (total), and
the share per thread, so the hot path shows without a flamegraph viewer.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path


def summarise(path: Path, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        threads[frames[0]] += count
        own[frames[-1]] += count
        for frame in set(frames[1:]):
            total[frame] += count
    if not samples:
        return "no samples"
    lines = [f"{samples} samples", "", "per thread:"]
    lines += [f"  {n / samples:6.1%}  {name}" for name, n in threads.most_common(10)]
    lines += ["", "self time:"]
    lines += [f"  {n / samples:6.1%}  {name}" for name, n in own.most_common(top)]
    lines += ["", "total time (inclusive):"]
    lines += [f"  {n / samples:6.1%}  {name}" for name, n in total.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    print(summarise(args.profile, args.top))


if __name__ == "__main__":
    main()
