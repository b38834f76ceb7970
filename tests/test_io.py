"""Files are written whole or not at all."""

from __future__ import annotations

import os

import pytest

from sparsekit._io import atomic_write, atomic_write_text


def test_atomic_write_replaces_the_file(tmp_path):
    path = tmp_path / "a" / "b.txt"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["b.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "c.txt"
    atomic_write_text(path, "kept")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["c.txt"]


def test_written_files_get_the_usual_permissions(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    path = atomic_write_text(tmp_path / "d.txt", "x")
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600
