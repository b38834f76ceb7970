"""Shared test settings: hypothesis runs are derandomized so every run checks the same cases."""

from hypothesis import settings

settings.register_profile("sparsekit", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("sparsekit")
