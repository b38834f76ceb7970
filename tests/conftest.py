"""Shared test settings: hypothesis runs are derandomized so every run checks the same cases."""

import os

from hypothesis import settings

settings.register_profile("sparsekit", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("sparsekit")

# Under pytest-xdist (`make unit` runs two workers) the workers already fill the cores: one OpenMP
# thread each (torch reads this on import), as more threads than cores spin waiting on a busy machine.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
