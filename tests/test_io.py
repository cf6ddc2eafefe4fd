"""Atomic writes: whole files only, ordinary permissions, the old file kept when a write fails."""
import stat

import pytest

from bench.io import atomic_write, atomic_write_json


def test_atomic_write_respects_umask_and_keeps_old_file_on_error(tmp_path):
    from bench import io

    p = atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~io._UMASK      # what open() would give, not 0600

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "a.json", boom)
    assert (tmp_path / "a.json").read_text().strip() == '{\n  "x": 1\n}'.strip()
    assert [q.name for q in tmp_path.iterdir()] == ["a.json"], "a temp file was left behind"
