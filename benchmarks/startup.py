"""Start-up time of the command-line interfaces: ``--version`` and ``--help``.

    python benchmarks/startup.py [--runs 20]

Each command runs ``--runs`` times as a fresh process (what a user and every
workflow task pay before any work); the table gives the minimum and median
wall time next to a bare ``python -c pass`` of the same interpreter, and the
modules each command imported that matter for start-up (from
``-X importtime``).  Results go to benchmarks/results/startup-<date>.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
HEAVY = ("numpy", "scipy", "zarr", "torch", "cellpose", "dask", "tqdm")
COMMANDS = [
    ["python", "-c", "pass"],
    ["pystitch", "--version"],
    ["pystitch", "--help"],
    ["pystitch", "run", "--help"],
    ["plan-blocks", "--help"],
    ["segment-block", "--help"],
    ["face-pairs", "--help"],
    ["resolve", "--help"],
    ["apply-lut", "--help"],
    ["pystitch", "finalize", "--help"],
]


def _argv(cmd: list[str]) -> list[str]:
    exe = sys.executable if cmd[0] == "python" else str(BIN / cmd[0])
    return [exe, *cmd[1:]]


def measure(cmd: list[str], runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(_argv(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def heavy_imports(cmd: list[str]) -> list[str]:
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    res = subprocess.run(_argv(cmd), env=env, capture_output=True, text=True, check=True)
    names = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if "|" in line}
    return sorted(names & set(HEAVY))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    rows = []
    for cmd in COMMANDS:
        best, median = measure(cmd, args.runs)
        heavy = heavy_imports(cmd) if cmd[0] != "python" else []
        rows.append((" ".join(cmd), best, median, heavy))
        print(f"{' '.join(cmd):28s} min {best * 1000:6.0f} ms  median {median * 1000:6.0f} ms  {heavy}", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"# CLI start-up — {dt.date.today()}", "",
             f"{args.runs} runs each, fresh processes; {os.cpu_count()} CPUs, load average {load:.1f} at the end "
             f"(a shared machine: the minimum is the better estimate). Target: under 0.3 s.", "",
             "| command | min ms | median ms | heavy modules imported |", "|---|---|---|---|"]
    for name, best, median, heavy in rows:
        lines.append(f"| `{name}` | {best * 1000:.0f} | {median * 1000:.0f} | {', '.join(heavy) or 'none'} |")
    out = HERE / "results" / f"startup-{dt.date.today()}.md"
    out.write_text("\n".join(lines) + "\n")
    print(out)


if __name__ == "__main__":
    main()
