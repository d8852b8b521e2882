"""Run a command to its end and measure its own peak RSS, for the memory benchmarks."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Starts the measured command and prints its exit code and peak RSS (KiB). A forked child's
# ru_maxrss starts from its parent's RSS at the fork and survives exec, so the measured process is
# forked from this small launcher, never from a benchmark that holds generated rows.
LAUNCHER = (
    "import os, subprocess, sys; child = subprocess.Popen(sys.argv[1:], stdout=sys.stderr);"
    " _, status, usage = os.wait4(child.pid, 0); print(os.waitstatus_to_exitcode(status),"
    " usage.ru_maxrss)"
)


def run_measured(command: Sequence[str], log: Path) -> tuple[int, float]:
    """Run `command` to its end (its output in `log`): its own peak RSS in bytes and its wall
    seconds; exits with the log's tail when it fails."""
    began = time.perf_counter()
    with open(log, "wb") as out:
        done = subprocess.run(
            [sys.executable, "-c", LAUNCHER, *command], cwd=ROOT, stdout=subprocess.PIPE,
            stderr=out, text=True,
        )  # fmt: skip
    seconds = time.perf_counter() - began
    code, peak_kib = (int(x) for x in done.stdout.split())
    if done.returncode != 0 or code != 0:
        sys.exit(f"{' '.join(command)} failed ({code}):\n{log.read_text()[-3000:]}")
    return peak_kib * 1024, seconds  # Linux reports KiB
