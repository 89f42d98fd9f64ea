"""A kdjax command's host memory over time: runs `kdjax ARGS...` in this process and prints its
resident set size every few seconds, then the peak.

    python bench/rss_timeline.py --every 3 -- finetune --config configs/finetune/korquad.py \
        --config.model=MODEL --config.task.data_dir=../shared/data/ko --workdir /tmp/kq

What it is for: telling a process that grows (a leak: RSS climbs with every step or every
evaluation) from one that is simply big (RSS rises to a plateau). The KorQuAD runs of the
Korean table were measured with it: the LF-V3 student at 384-token rows stays within 1.2-3.6 GB
over 3 epochs with evaluations between (no growth), while the 12-layer teacher reached the
machine's 24 GB. Linux only (reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time


def rss_gb() -> float:
    """This process's resident set size in GB (VmRSS)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1e6
    return 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--every", type=float, default=3.0, help="seconds between samples")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="the kdjax command and its arguments, after --")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the kdjax command after --, e.g. -- finetune --config ...")
    peak = [0.0]
    t0 = time.perf_counter()

    def sample() -> None:
        while True:
            now = rss_gb()
            peak[0] = max(peak[0], now)
            print(f"[rss {time.perf_counter() - t0:7.1f} s] {now:6.2f} GB", flush=True)
            time.sleep(args.every)

    threading.Thread(target=sample, daemon=True).start()
    from kdjax.cli import main as kdjax_main

    try:
        status = kdjax_main(command)
    finally:
        peak[0] = max(peak[0], rss_gb())
        print(f"[rss] peak {peak[0]:.2f} GB (sampled every {args.every:g} s), "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
