"""Checked, resumable downloads and resumable split writing shared by all builders."""

from __future__ import annotations

import hashlib
import json

import datasets
import pytest

from datasets_helpers import serve_directory

from extdm_diffusers.data.builders import BuildError, raw_files
from extdm_diffusers.data.builders import splits as split_writing


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def test_download_verifies_md5_and_renames_atomically(tmp_path):
    (tmp_path / "srv").mkdir()
    payload = bytes(range(256)) * 100
    (tmp_path / "srv" / "file.bin").write_bytes(payload)
    destination = tmp_path / "out" / "file.bin"
    with serve_directory(tmp_path / "srv") as (url, _):
        raw_files.download_file(url + "file.bin", destination, md5=hashlib.md5(payload).hexdigest())
    assert destination.read_bytes() == payload
    assert not destination.with_name("file.bin.part").exists()


def test_download_resumes_a_partial_file_with_a_range_request(tmp_path):
    (tmp_path / "srv").mkdir()
    payload = b"0123456789" * 1000
    (tmp_path / "srv" / "file.bin").write_bytes(payload)
    destination = tmp_path / "file.bin"
    destination.with_name("file.bin.part").write_bytes(payload[:3000])
    with serve_directory(tmp_path / "srv") as (url, seen):
        raw_files.download_file(url + "file.bin", destination, sha256=hashlib.sha256(payload).hexdigest())
    assert seen == [("/file.bin", "bytes=3000-")]
    assert destination.read_bytes() == payload


def test_download_restarts_when_the_server_ignores_range(tmp_path):
    (tmp_path / "srv").mkdir()
    payload = b"abcdef" * 500
    (tmp_path / "srv" / "file.bin").write_bytes(payload)
    destination = tmp_path / "file.bin"
    destination.with_name("file.bin.part").write_bytes(b"garbage")
    with serve_directory(tmp_path / "srv", supports_range=False) as (url, _):
        raw_files.download_file(url + "file.bin", destination, md5=hashlib.md5(payload).hexdigest())
    assert destination.read_bytes() == payload


def test_download_rejects_a_checksum_mismatch_and_drops_the_partial(tmp_path):
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "file.bin").write_bytes(b"tampered")
    destination = tmp_path / "file.bin"
    with serve_directory(tmp_path / "srv") as (url, _):
        with pytest.raises(BuildError, match="corrupt.*md5"):
            raw_files.download_file(url + "file.bin", destination, md5="0" * 32)
    assert not destination.exists() and not destination.with_name("file.bin.part").exists()


def test_download_reports_http_errors_with_the_url(tmp_path):
    (tmp_path / "srv").mkdir()
    with serve_directory(tmp_path / "srv") as (url, _):
        with pytest.raises(BuildError, match=r"missing\.bin failed: HTTP 404"):
            raw_files.download_file(url + "missing.bin", tmp_path / "missing.bin")


def _rows(count: int, start: int = 0):
    for i in range(start, start + count):
        yield {"x": i}


def test_write_splits_skips_finished_splits_and_refuses_changed_settings(tmp_path):
    features = datasets.Features({"x": datasets.Value("int32")})
    out = tmp_path / "out"
    built = split_writing.write_splits(out, {"train": (_rows, {"count": 3}), "test": (_rows, {"count": 2})}, features)
    assert {k: len(v) for k, v in built.items()} == {"train": 3, "test": 2}
    assert json.loads((out / "dataset_dict.json").read_text()) == {"splits": ["train", "test"]}
    mtime = (out / "train" / "state.json").stat().st_mtime_ns
    again = split_writing.write_splits(out, {"train": (_rows, {"count": 3}), "test": (_rows, {"count": 2})}, features)
    assert (out / "train" / "state.json").stat().st_mtime_ns == mtime  # skipped, not rewritten
    assert again["train"]["x"] == [0, 1, 2]  # no duplicated rows
    with pytest.raises(BuildError, match="other settings.*--overwrite"):
        split_writing.write_splits(out, {"train": (_rows, {"count": 5}), "test": (_rows, {"count": 2})}, features)
    rebuilt = split_writing.write_splits(out, {"train": (_rows, {"count": 5}), "test": (_rows, {"count": 2})}, features,
                                  overwrite=True)
    assert rebuilt["train"]["x"] == [0, 1, 2, 3, 4]
    assert not list(out.glob(".*"))  # no staging/cache leftovers


def _failing_rows():
    yield {"x": 1}
    raise BuildError("raw file broken.avi is corrupt")


def test_a_failing_split_leaves_no_partial_split_behind(tmp_path):
    features = datasets.Features({"x": datasets.Value("int32")})
    with pytest.raises(BuildError, match="broken.avi is corrupt"):
        split_writing.write_splits(tmp_path, {"train": (_failing_rows, {})}, features)
    assert not (tmp_path / "train").exists()
