"""app.storage.ObjectStore against a real S3 server (moto on loopback): uploads with
manifests, verified downloads, deletion, the bounded cache, and errors that name the store."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from app.storage import ArtifactMissing, StorageError
from app.storage.objects import CACHE_DIR, ObjectStore


@pytest.fixture
def bucket(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    name = f"b{secrets.token_hex(6)}"
    s3_server.make_bucket(name)
    return name


def _folder(root: Path, key: str, files: dict[str, bytes]) -> Path:
    d = root / key
    for rel, body in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(body)
    return d


def test_a_folder_round_trips_to_another_host_and_verifies(bucket: str, tmp_path: Path, s3_server: Any) -> None:
    a = ObjectStore(f"s3://{bucket}/pre", tmp_path / "a", 1 << 30)
    files = {"tensors.safetensors": secrets.token_bytes(3_000_000), "state.json": b'{"step": 10}', "sub/x": b""}
    _folder(a.root, "jobs/j/checkpoints/step-10", files)
    a.put("jobs/j/checkpoints/step-10")

    manifest = json.loads(
        s3_server.client().get_object(Bucket=bucket, Key="pre/jobs/j/checkpoints/step-10.manifest.json")["Body"].read()
    )
    assert (
        manifest["files"]["state.json"]["size"] == 12 and len(manifest["files"]["tensors.safetensors"]["sha256"]) == 64
    )
    assert manifest["bytes"] == sum(len(v) for v in files.values())

    b = ObjectStore(f"s3://{bucket}/pre", tmp_path / "b", 1 << 30)  # a second host: an empty data directory
    assert b.exists("jobs/j/checkpoints/step-10") and not b.exists("jobs/j/checkpoints/step-20")
    got = b.get("jobs/j/checkpoints/step-10")
    assert got == tmp_path / "b" / "jobs/j/checkpoints/step-10"
    assert {str(p.relative_to(got)): p.read_bytes() for p in got.rglob("*") if p.is_file()} == files
    assert b.size("jobs/j") >= manifest["bytes"]


def test_a_file_artifact_and_its_stream(bucket: str, tmp_path: Path) -> None:
    a = ObjectStore(f"s3://{bucket}", tmp_path / "a", 1 << 30)
    body = secrets.token_bytes(2_500_000)
    (a.root / "datasets/t").mkdir(parents=True)
    (a.root / "datasets/t/ds_1.jsonl").write_bytes(body)
    a.put("datasets/t/ds_1.jsonl")
    b = ObjectStore(f"s3://{bucket}", tmp_path / "b", 1 << 30)
    assert b.get("datasets/t/ds_1.jsonl").read_bytes() == body
    with b.open("datasets/t/ds_1.jsonl") as f:
        assert f.read() == body


def test_a_corrupted_object_is_refused_not_served(bucket: str, tmp_path: Path, s3_server: Any) -> None:
    a = ObjectStore(f"s3://{bucket}", tmp_path / "a", 1 << 30)
    _folder(a.root, "k", {"w": b"x" * 1000})
    a.put("k")
    s3_server.client().put_object(Bucket=bucket, Key="k/w", Body=b"y" * 1000)  # same size, other bytes
    b = ObjectStore(f"s3://{bucket}", tmp_path / "b", 1 << 30)
    with pytest.raises(StorageError, match="does not match its manifest"):
        b.get("k")
    assert not (tmp_path / "b" / "k").exists()  # nothing half-verified left in place


def test_objects_without_a_manifest_do_not_exist(bucket: str, tmp_path: Path, s3_server: Any) -> None:
    s3_server.client().put_object(Bucket=bucket, Key="half/w", Body=b"partial")  # an upload cut before its manifest
    b = ObjectStore(f"s3://{bucket}", tmp_path / "b", 1 << 30)
    assert not b.exists("half")
    with pytest.raises(ArtifactMissing):
        b.get("half")


def test_delete_removes_the_objects_and_a_prefix_takes_everything_under_it(
    bucket: str, tmp_path: Path, s3_server: Any
) -> None:
    a = ObjectStore(f"s3://{bucket}", tmp_path / "a", 1 << 30)
    for key in ("jobs/j/checkpoints/step-1", "jobs/j/model", "jobs/other/model"):
        _folder(a.root, key, {"w": b"1"})
        a.put(key)
    a.delete("jobs/j/checkpoints/step-1")
    assert not a.exists("jobs/j/checkpoints/step-1") and a.exists("jobs/j/model")
    a.delete("jobs/j")
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert sorted(keys) == ["jobs/other/model.manifest.json", "jobs/other/model/w"]
    assert not (a.root / "jobs/j").exists() and not (a.root / CACHE_DIR / "jobs/j").exists()


def test_the_cache_stays_under_its_bound(bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.storage.objects.CACHE_GRACE_S", 0.0)
    a = ObjectStore(f"s3://{bucket}", tmp_path / "a", 1 << 30)
    for i in range(4):
        _folder(a.root, f"m/{i}", {"w": bytes(1000)})
        a.put(f"m/{i}")
    b = ObjectStore(f"s3://{bucket}", tmp_path / "b", 2500)
    for i in range(4):
        b.get(f"m/{i}")
    kept = sorted(p.name for p in (tmp_path / "b" / "m").iterdir())
    assert kept == ["2", "3"]  # the two most recently used copies; the others went
    assert (b.get("m/0") / "w").read_bytes() == bytes(1000)  # and come back from the store on demand


def test_errors_name_the_store(s3_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    with pytest.raises(StorageError, match=r"s3://no-such-bucket.*does not exist"):
        ObjectStore("s3://no-such-bucket/p", tmp_path, 1 << 30).check()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr("app.storage.objects.ATTEMPTS", 2)
    with pytest.raises(StorageError, match=r"s3://b/p.*cannot connect"):
        ObjectStore("s3://b/p", tmp_path, 1 << 30).check()


def test_wrong_credentials_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A moto server that checks credentials (IAM): an unknown access key, and a known key with
    the wrong secret, are each named, not reported as a bare PermissionError."""
    import boto3

    from tests.s3 import S3Server, boto_credentials

    server = S3Server(tmp_path / "moto-auth.log", auth_after=2)  # the two IAM calls below go through
    try:
        iam = boto3.client("iam", endpoint_url=server.endpoint, **boto_credentials())
        iam.create_user(UserName="stagecraft")
        key = iam.create_access_key(UserName="stagecraft")["AccessKey"]["AccessKeyId"]
        monkeypatch.setattr("app.storage.objects.ATTEMPTS", 1)
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        with pytest.raises(StorageError, match=r"access key is not known to the store \(AWS_ACCESS_KEY_ID\)"):
            ObjectStore("s3://b/p", tmp_path / "a", 1 << 30).check()
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-its-secret")
        with pytest.raises(StorageError, match=r"secret key does not match \(AWS_SECRET_ACCESS_KEY\)"):
            ObjectStore("s3://b/p", tmp_path / "b", 1 << 30).check()
    finally:
        server.stop()


def test_a_failing_upload_is_retried_then_refused_leaving_nothing(
    bucket: str, tmp_path: Path, s3_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Transfers that fail are tried again; one that keeps failing raises StorageError and
    leaves neither a manifest nor stray objects (so nothing half-written can be registered)."""
    monkeypatch.setattr("app.storage.objects.time.sleep", lambda s: None)
    store = ObjectStore(f"s3://{bucket}", tmp_path, 1 << 30)
    _folder(store.root, "ckpt", {"a": b"1" * 100, "b": b"2" * 100})
    real = store.fs.put_file
    failures = {"n": 0}

    def flaky(source: str, target: str, **kw: Any) -> None:
        if target.endswith("/b") and failures["n"] < 2:  # the second file fails twice, then goes
            failures["n"] += 1
            raise ConnectionError("connection reset by peer")
        real(source, target, **kw)

    monkeypatch.setattr(store.fs, "put_file", flaky)
    store.put("ckpt")
    assert failures["n"] == 2 and store.exists("ckpt")

    def broken(source: str, target: str, **kw: Any) -> None:
        if target.endswith("/b"):
            raise ConnectionError("connection reset by peer")
        real(source, target, **kw)

    _folder(store.root, "ckpt2", {"a": b"1" * 100, "b": b"2" * 100})
    monkeypatch.setattr(store.fs, "put_file", broken)
    with pytest.raises(StorageError, match=r"uploading ckpt2/b failed"):
        store.put("ckpt2")
    assert not store.exists("ckpt2")
    assert [
        o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket, Prefix="ckpt2").get("Contents", [])
    ] == []
