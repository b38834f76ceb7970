"""The live tests run only when named (`make test-live` passes the file): each run starts JupyterLab,
Voilà and Chromium and executes the chapters for minutes, so `pytest tests` and `make unit` skip
collecting them (pytest collects a file named on the command line even when it is ignored here)."""

collect_ignore_glob = ["test_*.py"]
