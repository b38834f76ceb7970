"""Start-up cost of a sweep's runs: forked from a server that has papermill loaded vs spawned.

Run by hand: ``.venv/bin/python benchmarks/bench_sweep.py [RUNS]``. A tiny two-cell chapter (its
work is negligible, so what is measured is starting a run and its kernel) is swept over ``RUNS``
points (default 8), one run at a time and then two at a time, once with the sweep's own way of
starting runs (a fork of a server that has imported papermill) and once with freshly spawned
processes, the baseline, in the same process. Prints wall seconds per run and the ratio.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

from sparsekit import sweep

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from chapters import write_chapter  # noqa: E402


def seconds_per_run(chapter: Path, out: Path, runs: int, jobs: int) -> float:
    start = time.perf_counter()
    sweep.run_sweep(chapter, {"point": list(range(runs))}, out_dir=out, jobs=jobs)
    return (time.perf_counter() - start) / runs


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    print(f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs")
    print(f"{runs} runs of a two-cell chapter; seconds per run (wall), lower is better")
    spawned = mock.patch.object(sweep, "_run_context", lambda: multiprocessing.get_context("spawn"))
    with tempfile.TemporaryDirectory() as tmp:
        chapter = write_chapter(Path(tmp) / "chapter.ipynb", "point = 0", record="{'point': point}")
        # Warm-up: the fork server starts once per process (its papermill import is not a run's).
        sweep.run_sweep(chapter, {"point": [0]}, out_dir=Path(tmp) / "warm", jobs=1)
        for jobs in (1, 2):
            forked = seconds_per_run(chapter, Path(tmp) / f"forked{jobs}", runs, jobs)
            with spawned:
                baseline = seconds_per_run(chapter, Path(tmp) / f"spawned{jobs}", runs, jobs)
            print(
                f"  jobs={jobs}: forked from the server {forked:5.2f} s   spawned (baseline) "
                f"{baseline:5.2f} s   {baseline / forked:4.1f} x faster"
            )


if __name__ == "__main__":
    main()
