"""The artifact store, run against a real directory and a real S3-speaking server (moto) on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from agentq.config import S3Spec, StoreSpec
from agentq.store import FileStore, IntegrityError, StoreError, StoreKeyError, open_store

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

CREDS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
MB = 1 << 20


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch):
    for name, value in CREDS.items():
        monkeypatch.setenv(name, value)


def _bucket(endpoint: str) -> str:
    name = f"b-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTQ_CACHE", str(tmp_path / "cache"))
    if request.param == "file":
        return open_store(StoreSpec(path=str(tmp_path / "store")))
    endpoint = request.getfixturevalue("s3_endpoint")
    return open_store(StoreSpec(s3=S3Spec(bucket=_bucket(endpoint), endpoint=endpoint, prefix="team")))


def _corrupt(store, key: str, data: bytes) -> None:
    """Change an object's bytes behind the store's back, keeping the recorded digest."""
    if isinstance(store, FileStore):
        (store.root / key).write_bytes(data)
    else:
        store.client.put_object(
            Bucket=store.bucket, Key=store._k(key), Body=data, Metadata={"sha256": store.sha256(key)}
        )


def test_bytes_list_exists_delete(store):
    store.put_bytes("rounds/r1/preferences.jsonl", b'{"a": 1}\n')
    store.put_text("rounds/r1/eval/summary.json", "{}")
    store.put_bytes("rounds/r10/spec.yaml", b"x")
    assert store.get_bytes("rounds/r1/preferences.jsonl") == b'{"a": 1}\n'
    assert store.exists("rounds/r1/eval/summary.json") and not store.exists("rounds/r1/nope")
    # a prefix is a directory: r1 must not match r10
    assert store.list("rounds/r1") == ["rounds/r1/eval/summary.json", "rounds/r1/preferences.jsonl"]
    assert store.list("rounds/r1/preferences.jsonl") == ["rounds/r1/preferences.jsonl"]
    assert store.list() == [
        "rounds/r1/eval/summary.json",
        "rounds/r1/preferences.jsonl",
        "rounds/r10/spec.yaml",
    ]
    assert store.sha256("rounds/r10/spec.yaml") == hashlib.sha256(b"x").hexdigest()
    assert store.delete_prefix("rounds/r1") == 2
    assert store.list() == ["rounds/r10/spec.yaml"]
    with pytest.raises(StoreKeyError, match="rounds/r1/preferences.jsonl"):
        store.get_bytes("rounds/r1/preferences.jsonl")


@pytest.mark.parametrize("bad", ["../escape", "a//b", "/", ".agentq/tmp/x", "a/./b"])
def test_bad_keys_are_refused(store, bad):
    with pytest.raises(StoreError, match="key"):
        store.put_bytes(bad, b"x")


def test_50mb_round_trip_multipart(store, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(50 * MB))
    store.put_file("rounds/r1/merged/model.safetensors", src)
    out = tmp_path / "back" / "model.safetensors"
    store.get_file("rounds/r1/merged/model.safetensors", out)
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == want
    assert store.sha256("rounds/r1/merged/model.safetensors") == want
    if not isinstance(store, FileStore):  # a multipart ETag is "<md5 of md5s>-<parts>"
        head = store.client.head_object(
            Bucket=store.bucket, Key=store._k("rounds/r1/merged/model.safetensors")
        )
        assert head["ETag"].strip('"').endswith("-4")


def test_corruption_is_detected(store, tmp_path):
    store.put_bytes("rounds/r1/preferences.jsonl", b"good data\n")
    _corrupt(store, "rounds/r1/preferences.jsonl", b"bad  data\n")
    with pytest.raises(IntegrityError, match="preferences.jsonl.*corrupt"):
        store.get_bytes("rounds/r1/preferences.jsonl")
    dest = tmp_path / "prefs.jsonl"
    dest.write_text("previous\n")
    with pytest.raises(IntegrityError):
        store.get_file("rounds/r1/preferences.jsonl", dest)
    assert dest.read_text() == "previous\n"  # the failed download left the old file alone
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_dirs_and_local_dir(store, tmp_path):
    src = tmp_path / "adapter"
    (src / "sub").mkdir(parents=True)
    (src / "adapter_config.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(b"\x00\x01")
    assert store.put_dir("rounds/r1/adapter", src) == [
        "rounds/r1/adapter/adapter_config.json",
        "rounds/r1/adapter/sub/w.bin",
    ]
    store.get_dir("rounds/r1/adapter", tmp_path / "copy")
    assert (tmp_path / "copy" / "sub" / "w.bin").read_bytes() == b"\x00\x01"
    local = store.local_dir("rounds/r1/adapter")
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == [
        "adapter_config.json",
        "sub/w.bin",
    ]
    if isinstance(store, FileStore):
        assert local == store.root / "rounds/r1/adapter"  # the real directory, no copy
    # the local view follows the store: a changed object is refreshed, a deleted one disappears
    store.put_text("rounds/r1/adapter/adapter_config.json", '{"r": 8}')
    store.delete_prefix("rounds/r1/adapter/sub")
    local = store.local_dir("rounds/r1/adapter")
    assert (local / "adapter_config.json").read_text() == '{"r": 8}'
    assert not (local / "sub" / "w.bin").exists()
    with pytest.raises(StoreKeyError, match="rounds/r2"):
        store.local_dir("rounds/r2")


def test_writing_dir_replaces_only_on_success(store):
    with store.writing_dir("rounds/r1/merged") as d:
        d.mkdir()
        (d / "a.txt").write_text("v1")
        (d / "b.txt").write_text("v1")
    assert store.list("rounds/r1/merged") == ["rounds/r1/merged/a.txt", "rounds/r1/merged/b.txt"]
    with pytest.raises(RuntimeError, match="boom"), store.writing_dir("rounds/r1/merged") as d:
        d.mkdir()
        (d / "a.txt").write_text("v2")
        raise RuntimeError("boom")
    assert store.get_text("rounds/r1/merged/a.txt") == "v1"
    with store.writing_dir("rounds/r1/merged") as d:
        d.mkdir()
        (d / "a.txt").write_text("v3")
    assert store.list("rounds/r1/merged") == ["rounds/r1/merged/a.txt"]
    assert store.get_text("rounds/r1/merged/a.txt") == "v3"
    assert store.sha256("rounds/r1/merged/a.txt") == hashlib.sha256(b"v3").hexdigest()


CHILD = textwrap.dedent("""
    import sys
    from boto3.s3.transfer import TransferConfig
    from agentq.config import S3Spec, StoreSpec
    from agentq.store import open_store
    kind, where, key, src = sys.argv[1:5]
    if kind == "file":
        store = open_store(StoreSpec(path=where))
    else:  # throttled so the parent can kill it between parts
        cfg = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20, max_concurrency=1,
                             max_bandwidth=8 << 20)
        bucket, endpoint = where.split("@")
        store = open_store(StoreSpec(s3=S3Spec(bucket=bucket, endpoint=endpoint)), transfer_config=cfg)
    store.put_file(key, src)
    print("finished")
""")


def _wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(
                f"uploader exited (rc={proc.returncode}) before {what}: {proc.stdout.read()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_killed_upload_leaves_no_visible_object(kind, tmp_path, request):
    """SIGKILL the uploading process mid-object: readers must see no trace of it."""
    key = "rounds/r1/merged/model.safetensors"
    env = {**os.environ, **CREDS}
    if kind == "file":
        # A FIFO source lets the test decide exactly how much the writer has received when it dies.
        src = tmp_path / "fifo"
        os.mkfifo(src)
        store = FileStore(tmp_path / "store")
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, kind, str(store.root), key, str(src)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        with open(src, "wb") as fifo:
            fifo.write(os.urandom(8 * MB))
            fifo.flush()
            parts = store.root / ".agentq" / "tmp"
            _wait_for(lambda: any(p.stat().st_size > 0 for p in parts.glob("*.part")), "partial write", proc)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = _bucket(endpoint)
        src = tmp_path / "big.bin"
        src.write_bytes(os.urandom(50 * MB))
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

        def part_uploaded() -> bool:
            uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            return any(
                client.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts")
                for u in uploads
            )

        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, kind, f"{bucket}@{endpoint}", key, str(src)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _wait_for(part_uploaded, "a multipart part", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # the upload really was cut off mid-way, not before it began
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads")
        store = open_store(StoreSpec(s3=S3Spec(bucket=bucket, endpoint=endpoint)))
    assert proc.returncode == -signal.SIGKILL
    assert not store.exists(key)
    assert store.list() == []
    assert store.sha256(key) is None or kind == "file"  # a file digest may precede its data
    with pytest.raises(StoreKeyError):
        store.get_bytes(key)


def test_bad_endpoint_names_endpoint_and_bucket():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.raises(StoreError, match=rf"{endpoint}.*bucket 'artifacts'"):
        open_store(StoreSpec(s3=S3Spec(bucket="artifacts", endpoint=endpoint)))


def test_missing_bucket_names_bucket(s3_endpoint):
    with pytest.raises(StoreError, match="bucket 'no-such-bucket'"):
        open_store(StoreSpec(s3=S3Spec(bucket="no-such-bucket", endpoint=s3_endpoint)))


def test_pvc_root_comes_from_the_job_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTQ_STORE_PATH", str(tmp_path / "mnt"))
    store = open_store(StoreSpec(pvc="agentq-artifacts"))
    assert isinstance(store, FileStore) and store.root == tmp_path / "mnt"
    assert open_store(StoreSpec(pvc="x"), pvc_root=str(tmp_path / "other")).root == tmp_path / "other"


def test_staging_of_a_killed_writer_is_removed_by_the_next_one(tmp_path, monkeypatch):
    """A kill during train or merge leaves its staging copy; the next publish on this host removes it."""
    monkeypatch.setenv("AGENTQ_CACHE", str(tmp_path / "cache"))
    store = FileStore(tmp_path / "store")
    child = subprocess.Popen([sys.executable, "-c", CHILD_WRITER, str(store.root)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "staging"
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = list((store.root / ".agentq" / "tmp").glob("dir-*"))
    assert len(left) == 1 and (left[0] / "new" / "weights.bin").exists()
    with store.writing_dir("rounds/r1/adapter") as d:
        d.mkdir()
        (d / "a.txt").write_text("ok")
    assert list((store.root / ".agentq" / "tmp").glob("dir-*")) == []
    assert store.get_text("rounds/r1/adapter/a.txt") == "ok"


CHILD_WRITER = textwrap.dedent("""
    import sys, time
    from agentq.store import FileStore
    with FileStore(sys.argv[1]).writing_dir("rounds/r1/adapter") as d:
        d.mkdir()
        (d / "weights.bin").write_bytes(b"x" * 1000)
        print("staging", flush=True)
        time.sleep(60)
""")


def test_s3_directory_publish_is_atomic_and_failed_ones_leave_nothing(s3_endpoint, tmp_path, monkeypatch):
    """The old version stays whole until the new one is complete; leftovers of failed or killed publishes are
    invisible to readers and gone after the next publish."""
    monkeypatch.setenv("AGENTQ_CACHE", str(tmp_path / "cache"))
    bucket = _bucket(s3_endpoint)
    store = open_store(StoreSpec(s3=S3Spec(bucket=bucket, endpoint=s3_endpoint)))
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")

    def raw_keys() -> list[str]:
        return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))

    with store.writing_dir("rounds/r1/merged") as d:
        d.mkdir()
        (d / "a.txt").write_text("v1")
        (d / "b.txt").write_text("v1")
    real_put = store.put_file
    calls = []

    def failing_put(key, path):
        calls.append(key)
        if len(calls) == 2:
            raise StoreError("network gone")
        real_put(key, path)

    monkeypatch.setattr(store, "put_file", failing_put)
    with pytest.raises(StoreError, match="network gone"), store.writing_dir("rounds/r1/merged") as d:
        d.mkdir()
        (d / "a.txt").write_text("v2")
        (d / "b.txt").write_text("v2")
    monkeypatch.setattr(store, "put_file", real_put)
    assert store.list("rounds/r1/merged") == ["rounds/r1/merged/a.txt", "rounds/r1/merged/b.txt"]
    assert store.get_text("rounds/r1/merged/b.txt") == "v1"
    local = store.local_dir("rounds/r1/merged")
    assert sorted(p.name for p in local.iterdir()) == ["a.txt", "b.txt"] and (local / "a.txt").read_text() == "v1"

    # a killed publisher's half-uploaded version: nobody reads it, the next publish deletes it
    client.put_object(Bucket=bucket, Key="rounds/r1/merged.versions/deadbeef/a.txt", Body=b"half")
    assert "rounds/r1/merged/a.txt" in store.list("rounds") and store.get_text("rounds/r1/merged/a.txt") == "v1"
    with store.writing_dir("rounds/r1/merged") as d:
        d.mkdir()
        (d / "a.txt").write_text("v3")
    assert store.list("rounds/r1/merged") == ["rounds/r1/merged/a.txt"]
    assert store.get_text("rounds/r1/merged/a.txt") == "v3" and not store.exists("rounds/r1/merged/b.txt")
    assert [k for k in raw_keys() if "deadbeef" in k or "b.txt" in k] == []
    assert store.delete_prefix("rounds/r1") >= 2 and raw_keys() == []


def test_s3_lease_excludes_a_second_run_until_released_or_expired(s3_endpoint, tmp_path, monkeypatch):
    from agentq.store import LeaseHeld
    from agentq.workspace import Lease

    monkeypatch.setenv("AGENTQ_CACHE", str(tmp_path / "cache"))
    store = open_store(StoreSpec(s3=S3Spec(bucket=_bucket(s3_endpoint), endpoint=s3_endpoint)))
    key = "rounds/r1/locks/collect-shard-0-of-1.lease"
    first = store.acquire_lease(key, "machine-a:1", ttl_s=30)
    with pytest.raises(LeaseHeld, match="held by machine-a:1"):
        store.acquire_lease(key, "machine-b:2", ttl_s=30)
    renewed = store.renew_lease(key, "machine-a:1", first, ttl_s=30)
    with pytest.raises(LeaseHeld, match="lease lost"):
        store.renew_lease(key, "machine-a:1", first, ttl_s=30)  # a stale token cannot renew
    store.release_lease(key, renewed)
    second = store.acquire_lease(key, "machine-b:2", ttl_s=0.5)  # free again
    time.sleep(0.7)
    third = store.acquire_lease(key, "machine-c:3", ttl_s=30)  # machine-b died: its lease expired, taken over
    with pytest.raises(LeaseHeld, match="lease lost"):
        store.renew_lease(key, "machine-b:2", second, ttl_s=30)
    store.release_lease(key, third)

    # the workspace's Lease renews in the background while a step runs, so a long step keeps it
    held = Lease(store, key, ttl_s=1.0)
    time.sleep(1.5)
    with pytest.raises(LeaseHeld):
        store.acquire_lease(key, "machine-d:4", ttl_s=30)
    held.release()
    assert not store.exists(key)


def test_a_step_running_on_another_machine_with_an_s3_store_is_refused(s3_endpoint, tmp_path, monkeypatch, capsys):
    """No shared filesystem: only the store's lease can tell the second machine that the step is running."""
    import agentq.workspace
    from agentq.cli import main

    bucket = _bucket(s3_endpoint)
    from agentq.tasks.schema import Task, write_tasks

    write_tasks(tmp_path / "t.jsonl", [Task(id="t1", source="test", group="g", description="add one",
                                            buggy_code="def inc(x):\n    return x\n",
                                            reference_code="def inc(x):\n    return x + 1\n", entry_point="inc",
                                            tests="from solution import *\ndef test_one():\n    assert inc(1) == 2\n")])
    round_yaml = tmp_path / "round.yaml"
    round_yaml.write_text(
        "apiVersion: agentq.dev/v1alpha1\nkind: AgentQRound\nmetadata: {name: r}\nspec:\n"
        "  model: {base: tiny, backend: scripted}\n  dataset: {train: t.jsonl, test: t.jsonl}\n"
        f"  store: {{s3: {{bucket: {bucket}, endpoint: '{s3_endpoint}'}}}}\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom agentq.config import load_round\nfrom agentq.workspace import RoundWorkspace\n"
         "ws = RoundWorkspace(load_round(sys.argv[1]), sys.argv[1])\nws.finished('collect-shard-0-of-2', 'd')\n"
         "print('held', flush=True)\ntime.sleep(60)", str(round_yaml)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "AGENTQ_WORK_DIR": str(tmp_path / "machine-a")},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("AGENTQ_WORK_DIR", str(tmp_path / "machine-b"))
        monkeypatch.setattr(agentq.workspace, "LEASE_TTL_S", 0.5)  # wait 1 s, not 2 minutes, before refusing
        assert main(["collect", "--round", str(round_yaml), "--shard", "0", "--num-shards", "2"]) == 2
        err = capsys.readouterr().err
        assert "step 'collect-shard-0-of-2' is running elsewhere" in err
        assert f"{os.uname().nodename}:{holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
