"""The pieces of the real-cluster e2e (tests/e2e) that can be checked without bringing a cluster up: the
scenario registry, the image inputs and CPU variants, the cluster's refusals and lock, the DNS data, and the
wiring of `make e2e` into CI. `make e2e` itself runs the cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from e2e import cluster, dns, images
from e2e.scenarios import REGISTRY, load, scenario

from agentq.config import RoundFile

ROOT = Path(__file__).resolve().parents[1]


def test_every_scenario_module_registers_one_ordered_documented_scenario():
    scenarios = load()
    names = [s.name for s in scenarios]
    modules = sorted(p.stem for p in (ROOT / "tests" / "e2e" / "scenarios").glob("*.py") if p.stem != "__init__")
    assert len(names) == len(set(names)) == len(modules)
    wanted = {"round", "sandbox-isolation", "sandbox-refuses", "pod-deleted", "operator-deleted", "campaign"}
    assert wanted <= set(names)
    assert names[0] == "round"  # the others build on a cluster that has run one round
    assert all(s.doc for s in scenarios), [s.name for s in scenarios if not s.doc]


def test_a_name_registered_twice_is_refused():
    load()

    def impostor(ctx):
        return {}

    with pytest.raises(ValueError, match="registered twice"):
        scenario("round", order=1)(impostor)
    assert REGISTRY["round"].run is not impostor


def test_the_e2e_round_is_a_valid_round_with_store_relative_tasks():
    round_file = RoundFile.model_validate(yaml.safe_load((ROOT / "tests" / "e2e" / "round.yaml").read_text()))
    assert round_file.spec.store.pvc == "agentq-artifacts"
    assert round_file.spec.collect.shards == 2 and round_file.spec.model.backend == "scripted"
    for split in ("train", "test"):
        key = getattr(round_file.spec.dataset, split)
        assert not Path(key).is_absolute() and (ROOT / "images" / "mock-model" / key).exists()


def test_image_tags_follow_their_inputs(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("x = 1\n")
    first = images.digest([tmp_path], {"BASE_IMAGE": "b"})
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "module.cpython-311.pyc").write_bytes(b"\0")
    assert images.digest([tmp_path], {"BASE_IMAGE": "b"}) == first  # caches do not count
    source.write_text("x = 2\n")
    assert images.digest([tmp_path], {"BASE_IMAGE": "b"}) != first
    assert images.digest([tmp_path], {"BASE_IMAGE": "other"}) != images.digest([tmp_path], {"BASE_IMAGE": "b"})


def test_only_earlier_tags_of_the_same_image_are_superseded():
    refs = ["localhost/agentq/infer:aaa", "localhost/agentq/infer:bbb", "localhost/agentq/infer-x:aaa",
            "localhost/agentq/train:aaa"]
    assert images._superseded(refs, "localhost/agentq/infer:bbb") == ["localhost/agentq/infer:aaa"]


def test_an_images_earlier_tags_leave_the_oci_layout_with_only_their_own_blobs(tmp_path, monkeypatch):
    """The OCI layout buildah pushes into keeps every blob a current tag uses (the shared venv layer) and drops
    what only an earlier tag of the same image used."""
    import hashlib

    monkeypatch.setattr(images, "OCI_DIR", tmp_path)
    blobs = tmp_path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(content: str) -> str:
        digest = hashlib.sha256(content.encode()).hexdigest()
        (blobs / digest).write_text(content)
        return f"sha256:{digest}"

    venv = blob("venv layer")

    def image(ref: str, own: str) -> dict:
        manifest = blob(json.dumps({"config": {"digest": blob(f"config {own}")},
                                    "layers": [{"digest": venv}, {"digest": blob(f"layer {own}")}]}))
        return {"digest": manifest, "annotations": {images.REF_NAME: ref}}

    entries = [image("localhost/agentq/infer:old", "old"), image("localhost/agentq/train:a", "train"),
               image("localhost/agentq/infer:new", "new")]
    (tmp_path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    only_old = set(images._digests(entries[0])) - {venv}
    images._forget_superseded_blobs("localhost/agentq/infer:new")
    index = json.loads((tmp_path / "index.json").read_text())
    assert [m["annotations"][images.REF_NAME] for m in index["manifests"]] == [
        "localhost/agentq/train:a", "localhost/agentq/infer:new"]
    left = {f"sha256:{p.name}" for p in blobs.iterdir()}
    assert left == {d for m in index["manifests"] for d in images._digests(m)} and venv in left
    assert not only_old & left


def test_cpu_variants_install_the_cpu_pins_of_every_step():
    """The CPU infer and train images take REQUIREMENTS=the CPU pins: torch's CPU build, and every package the
    CUDA images pin directly except the CUDA-only ones (bitsandbytes, torch's nvidia-* wheels)."""
    from lockfile import lock as pins

    specs = {s.name: s for s in images.IMAGES}
    cpu = pins.read_pins(ROOT / images.CPU_REQUIREMENTS)
    assert cpu["torch"].endswith("+cpu")
    for name in ("infer", "train"):
        assert dict(specs[name].build_args)["REQUIREMENTS"] == images.CPU_REQUIREMENTS
        assert f"ARG REQUIREMENTS=images/requirements/{name}.txt" in (ROOT / specs[name].dockerfile).read_text()
        cuda = pins.read_pins(ROOT / "images" / "requirements" / f"{name}.txt")
        missing = {n for n in cuda if n not in cpu and not n.startswith(("nvidia-", "cuda-", "triton"))}
        assert missing <= {"bitsandbytes"}, missing


def test_build_pip_conf_uses_the_local_wheel_folder_or_the_cpu_index(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    conf, volumes = images._pip_conf(tmp_path)
    assert "find-links = /wheels" in conf.read_text() and f"{wheels}:/wheels:ro" in volumes
    assert f"{conf}:/etc/pip.conf:ro" in volumes
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setattr(images.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", ""))
    conf, _ = images._pip_conf(tmp_path)
    assert f"extra-index-url = {images.CPU_TORCH_INDEX}" in conf.read_text()


def test_a_missing_host_tool_is_one_line_naming_it(monkeypatch):
    monkeypatch.setattr(cluster.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cluster.shutil, "which", lambda tool: None if tool == "runc" else f"/usr/bin/{tool}")
    with pytest.raises(cluster.ClusterUnavailable) as err:
        cluster.preflight()
    assert "runc is missing (apt-get install runc)" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setattr(cluster.os, "geteuid", lambda: 1000)
    with pytest.raises(cluster.ClusterUnavailable, match="needs root"):
        cluster.preflight()


def test_missing_kubernetes_binaries_name_the_build(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTQ_TESTENV_BIN", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(cluster.ClusterUnavailable, match=r"scripts/testenv.sh --node"):
        cluster.kube_bin_dir()


def test_a_second_cluster_on_the_machine_is_refused_while_the_first_holds_the_lock(monkeypatch, tmp_path):
    """The lock is a flock the daemons inherit: while any holds it, `up` refuses with one line naming where
    the running cluster came from."""
    monkeypatch.setattr(cluster, "LOCK_FILE", tmp_path / "cluster.lock")
    monkeypatch.setattr(cluster, "RUN_DIR", tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "state.json").write_text(json.dumps({"repo": "/work/elsewhere"}))
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(tmp_path / 'cluster.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(cluster.ClusterBusy) as err:
            cluster.take_lock()
        assert "already runs on this machine (started from /work/elsewhere)" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    fd = cluster.take_lock()  # free again once its holder is gone
    cluster.os.close(fd)


def test_the_cluster_never_uses_the_fast_tests_addresses():
    """The fast tests' API servers (tests/testenv.py) use 127.0.0.1 and the service range 10.0.0.0/24 on ports
    the OS picks; the real cluster's networks stay clear of that range and of each other."""
    import ipaddress

    testenv_services = ipaddress.ip_network("10.0.0.0/24")
    assert not cluster.POD_CIDR.overlaps(testenv_services) and not cluster.SERVICE_CIDR.overlaps(testenv_services)
    assert not cluster.POD_CIDR.overlaps(cluster.SERVICE_CIDR)
    assert cluster.NODE_IP in {str(h) for h in cluster.POD_CIDR.hosts()}


def test_dns_data_names_every_service_with_a_cluster_ip(tmp_path):
    services = [{"metadata": {"name": "agentq-sandbox", "namespace": "agentq-system"},
                 "spec": {"clusterIP": "10.1.0.5"}},
                {"metadata": {"name": "headless", "namespace": "x"}, "spec": {"clusterIP": "None"}},
                {"metadata": {"name": "kubernetes", "namespace": "default"}, "spec": {"clusterIP": "10.1.0.1"}}]
    lines = dns.hosts_lines(services, "cluster.local")
    assert lines == ["10.1.0.1 kubernetes.default.svc.cluster.local",
                     "10.1.0.5 agentq-sandbox.agentq-system.svc.cluster.local"]
    dns.write_hosts(tmp_path, lines)
    assert (tmp_path / "services").read_text().splitlines() == lines
    assert not list(tmp_path.glob(".*.tmp"))


def test_ci_runs_the_e2e_after_the_tests_and_make_knows_it():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci.index("make test") < ci.index("make e2e")
    done = subprocess.run(["make", "-n", "e2e"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "scripts/testenv.sh --node" in done.stdout and "-m e2e.run" in done.stdout


def test_cluster_scripts_pass_shellcheck():
    done = subprocess.run([str(Path(sys.executable).parent / "shellcheck"), "--severity=warning",
                           str(ROOT / "scripts" / "cluster.sh"), str(ROOT / "scripts" / "testenv.sh")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
