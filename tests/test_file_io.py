"""extdm_diffusers.file_io: atomic writes that leave files readable by the team (the umask's mode, not 0600)."""

import os
import stat

import pytest

from extdm_diffusers.file_io import atomic_path, atomic_write_bytes, atomic_write_text


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_get_the_umask_mode(tmp_path, umask):
    atomic_write_text(tmp_path / "metrics.json", "{}\n")
    atomic_write_bytes(tmp_path / "clip.npz", b"\x00\x01")
    with atomic_path(tmp_path / "clip.gif") as tmp:
        assert tmp.suffix == ".gif" and tmp.parent == tmp_path and not tmp.exists()
        tmp.write_bytes(b"GIF89a")
    for name in ("metrics.json", "clip.npz", "clip.gif"):
        assert _mode(tmp_path / name) == 0o666 & ~umask, name
    assert (tmp_path / "metrics.json").read_text() == "{}\n" and (tmp_path / "clip.npz").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif", "clip.npz", "metrics.json"]


def test_replacing_a_file_keeps_no_temporary_and_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "per_video.jsonl"
    atomic_write_text(target, "old\n")
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["per_video.jsonl"]
