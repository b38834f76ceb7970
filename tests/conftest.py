"""Shared test settings: hypothesis runs are derandomized so every run checks the same cases."""

import os

from hypothesis import settings

settings.register_profile("sparsekit", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("sparsekit")

# Under pytest-xdist (`make unit` runs two workers) the workers already fill the cores: one OpenMP
# thread each (torch reads this on import), as more threads than cores spin waiting on a busy machine.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# Files that take longest, by wall time, start first: with `make unit`'s workers (`--dist loadfile`,
# `--no-loadscope-reorder`) the short files then fill both workers to the end. The sweep's hang test
# mostly waits for its run limit, so the other worker has the CPU meanwhile.
LONGEST_FIRST = (
    "test_sweep_hang.py",
    "test_torch_layers.py",
    "test_cli.py",
    "test_fuse_cli.py",
    "test_sweep.py",
    "test_torch_blockmask.py",
    "test_hf_fusion.py",
    "test_patterns.py",
)


def pytest_collection_modifyitems(items):
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return

    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)
