"""The artifact store's contract, on both back ends: a local directory and an object store
(a real S3-compatible server). Whatever the back end, a key holds a whole file or nothing,
keys cannot leave the store, and `release` leaves no scratch copy behind."""

from __future__ import annotations

import pytest

from service.settings import Settings
from service.store.artifacts import DirectoryStore, ObjectStore, TooLarge, open_artifacts


@pytest.fixture(params=["directory", "s3"])
def store(request, tmp_path):
    if request.param == "directory":
        return DirectoryStore(tmp_path / "artifacts")
    bucket = request.getfixturevalue("s3_bucket")
    return ObjectStore(f"{bucket}/prefix", tmp_path / "scratch")


def _scratch_files(store) -> list:
    return [p for p in store.scratch_dir.rglob("*") if p.is_file()]


def test_a_key_holds_what_was_written_and_nothing_else(store):
    store.write_bytes("jobs/a/out/report.json", b'{"ok": true}')
    assert store.exists("jobs/a/out/report.json") and not store.exists("jobs/a/out/x")
    assert store.read_bytes("jobs/a/out/report.json") == b'{"ok": true}'
    with store.open("jobs/a/out/report.json") as fh:
        assert fh.read() == b'{"ok": true}'
    with store.writing("jobs/a/stages/s/model.safetensors") as path:
        path.write_bytes(b"weights")
    fetched = store.fetch("jobs/a/stages/s/model.safetensors")
    assert fetched.read_bytes() == b"weights"
    with pytest.raises(FileNotFoundError, match="jobs/a/none"):
        store.fetch("jobs/a/none")
    store.delete_prefix("jobs/a")
    assert not store.exists("jobs/a/out/report.json")
    store.delete_prefix("jobs/never")  # nothing there: nothing to do
    store.release()
    assert _scratch_files(store) == []


def test_a_failed_write_or_upload_stores_nothing_and_leaves_no_scratch(store):
    with pytest.raises(RuntimeError):
        with store.writing("jobs/b/out/purified.safetensors") as path:
            path.write_bytes(b"half")
            raise RuntimeError("the disk filled")
    assert not store.exists("jobs/b/out/purified.safetensors")
    upload = store.upload(limit=8)
    upload.write(b"1234")
    with pytest.raises(TooLarge):
        upload.write(b"56789")
    upload.abort()
    assert _scratch_files(store) == []
    upload = store.upload(limit=8)
    upload.write(b"1234")
    upload.commit("uploads/c.safetensors")
    assert store.read_bytes("uploads/c.safetensors") == b"1234" and _scratch_files(store) == []


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../x", "a//b", "", "a\\b"])
def test_keys_cannot_leave_the_store(store, key):
    with pytest.raises(ValueError, match="leaves the store"):
        store.write_bytes(key, b"x")


def test_the_settings_choose_the_back_end(tmp_path, s3_bucket, s3_server):
    local = open_artifacts(Settings(data_dir=tmp_path))
    assert isinstance(local, DirectoryStore) and local.root == (tmp_path / "artifacts").resolve()
    # the endpoint from the settings, the credentials from the standard AWS_* variables
    remote = open_artifacts(Settings(data_dir=tmp_path, artifact_url=f"{s3_bucket}/p",
                                     artifact_endpoint_url=s3_server))
    assert isinstance(remote, ObjectStore) and remote.scratch_dir == (tmp_path / "scratch")
    remote.write_bytes("k", b"v")
    assert remote.read_bytes("k") == b"v" and remote.local_path("k") is None
    shown = repr(Settings(artifact_secret_access_key="hunter2"))
    assert "hunter2" not in shown and "secret" not in shown
