"""Sending: the per-zone scheduler, the delivery machine's driver, connections, limits (rates,
warm-up, backoff, suspensions, blacklist) and the retry schedule."""
