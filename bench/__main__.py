"""``python -m bench [NAME ...] [--quick]``: run garrison's benchmarks against their peers."""

from __future__ import annotations

import argparse
import os
import sys

from ._harness import discover, main


def cli(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen benchmarks; the exit status."""
    found = discover()
    pillars = sorted(set(found.values()))
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run garrison's benchmarks side by side with their peers; each prints a "
        "table and writes bench/results/NAME.json.",
        epilog=f"pillars: {', '.join(pillars) or 'none'}; "
        f"benchmarks: {', '.join(sorted(found)) or 'none'}",
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="a pillar or a benchmark module (default: all)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
        help="short runs for smoke tests (also BENCH_QUICK=1)",
    )
    parser.add_argument("--list", action="store_true", help="list pillars and benchmarks")
    args = parser.parse_args(argv)
    if args.list:
        for name, pillar in sorted(found.items(), key=lambda kv: (kv[1], kv[0])):
            print(f"{pillar:12} {name}")
        return 0
    return main(args.names, args.quick)


if __name__ == "__main__":
    sys.exit(cli())
