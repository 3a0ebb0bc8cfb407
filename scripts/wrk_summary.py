"""Reads the output of `wrk --latency`: requests/s, p50 and p99 (ms) and the
non-2xx count. Shared by scripts/bench-bigtable and scripts/bench-pubsub
(they run their Python with PYTHONPATH=scripts)."""

import re
import sys


def ms(value):
    """wrk's latency figure ("412.00us", "1.20ms", "2.00s", "1.02m") in ms."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[m.group(2)]


def parse(text, what="wrk"):
    """A dict with rps, p50, p99 and non2xx; exits with wrk's text when it
    cannot be read."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    # Anchored: "50%" / "99%" also end Stdev figures like "90.50%" on the
    # Thread Stats lines.
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    if not (rps and p50 and p99):
        sys.exit(f"cannot read wrk's output for {what}:\n{text}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {
        "rps": float(rps.group(1)),
        "p50": ms(p50.group(1)),
        "p99": ms(p99.group(1)),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
    }
