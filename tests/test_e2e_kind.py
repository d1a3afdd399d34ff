"""What of the kind CI can run without a Docker engine: the script and workflow are checked statically, and the
mock-model image's steps run here exactly as the operator's Jobs would run them in kind: the Job manifests come
from controller.jobs, and each container's command runs with that container's environment (the PVC mount,
the termination-message file and SANDBOX_URL pointing at a real `agentq sandbox serve`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from testenv import stop_process

from agentq.config import load_round
from controller.jobs import PVC_MOUNT, RESULT_FILE, ROUND_PATH, build_job, spec_configmap, units
from controller.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPT = ROOT / "scripts" / "e2e-kind.sh"
WORKFLOW = ROOT / ".github" / "workflows" / "e2e-kind.yml"
KIND_VALUES = ROOT / "charts" / "agentq" / "ci" / "kind-values.yaml"
MOCK = ROOT / "images" / "mock-model"
ROUND = MOCK / "round.yaml"


def test_script_passes_shellcheck():
    done = subprocess.run([str(BIN / "shellcheck"), "--severity=style", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    assert os.access(SCRIPT, os.X_OK)


def test_shellcheck_catches_a_bad_script(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $DIR/*\n")
    assert subprocess.run([str(BIN / "shellcheck"), str(bad)], capture_output=True).returncode != 0


def test_workflow_runs_the_script():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"pull_request", "push", "workflow_dispatch"} <= set(triggers)
    (job,) = workflow["jobs"].values()
    assert job["runs-on"].startswith("ubuntu") and job["timeout-minutes"] <= 60
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert "scripts/e2e-kind.sh" in runs
    assert any(step.get("uses", "").startswith("actions/checkout@v") for step in job["steps"])


def test_script_uses_what_the_repository_has():
    text = SCRIPT.read_text()
    values = yaml.safe_load(KIND_VALUES.read_text())
    built = set(re.findall(r"for image in ([\w\s-]+); do", text)[0].split())
    assert built == {"controller", "sandbox", "mock-model"}
    for image in built:
        assert (ROOT / "images" / image / "Dockerfile").exists()
    tags = {f"{v['repository']}:{v['tag']}" for k, v in values["images"].items() if isinstance(v, dict)}
    assert tags == {f"agentq-{image}:ci" for image in built}, "kind values must use the images the script loads"
    assert "images/mock-model/round.yaml" in text and "ci/kind-values.yaml" in text
    # The shared volume the script provides is the one the chart's PVC asks for.
    pvc = values["artifacts"]["pvc"]
    assert f"storageClassName: {pvc['storageClassName']}" in text and "ReadWriteMany" in pvc["accessModes"]
    assert f"claimName\":\"{pvc['name']}\"" in text
    round_file = load_round(ROUND)
    assert round_file.spec.store.pvc == pvc["name"]
    assert f"agentq.dev/pool: {'inference'}" in text and "agentq.dev/pool: training" in text
    assert values["pools"]["inference"]["nodeSelector"] == {"agentq.dev/pool": "inference"}
    assert values["pools"]["training"]["nodeSelector"] == {"agentq.dev/pool": "training"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Recorder(BaseHTTPRequestHandler):
    """Forwards to the sandbox and counts what it forwarded: the server itself logs no requests."""

    upstream = ""
    calls: list[str] = []

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def _forward(self, data: bytes | None) -> None:
        self.calls.append(f"{self.command} {self.path}")
        request = urllib.request.Request(self.upstream + self.path, data=data, method=self.command,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, body = err.code, err.read()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._forward(None)

    def do_POST(self):  # noqa: N802
        self._forward(self.rfile.read(int(self.headers.get("Content-Length") or 0)))


@pytest.fixture
def sandbox(tmp_path):
    """A real `agentq sandbox serve`, as the chart's sandbox pod runs it, behind a request-counting proxy."""
    port = _free_port()
    log = tmp_path / "sandbox.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "agentq"), "sandbox", "serve", "--host", "127.0.0.1", "--port", str(port),
                                 "--workers", "2"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"sandbox did not start:\n{log.read_text()}") from None
                time.sleep(0.2)
        recorder = type("Recorder", (_Recorder,), {"upstream": url, "calls": []})
        proxy = ThreadingHTTPServer(("127.0.0.1", 0), recorder)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{proxy.server_address[1]}", recorder.calls
        finally:
            proxy.shutdown()
            proxy.server_close()
    finally:
        stop_process(proc)


def _container_env(job: dict, store: Path, result: Path, home: Path) -> dict[str, str]:
    """The Job container's environment, with its mounts mapped to local paths."""
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "PYTHONUNBUFFERED": "1"}
    for item in container["env"]:
        value = item["value"]
        env[item["name"]] = {PVC_MOUNT: str(store), RESULT_FILE: str(result)}.get(value, value)
    return env


def _run_units(tmp_path: Path, sandbox_url: str, steps: set[str]) -> tuple[Path, dict[str, dict]]:
    """Run the round's Jobs for `steps` in the operator's order: each container's command with its environment."""
    values = yaml.safe_load(KIND_VALUES.read_text())
    settings = OperatorSettings.model_validate({
        "pools": values["pools"], "sandboxUrl": sandbox_url,
        "images": {"infer": "agentq-mock-model:ci", "train": "agentq-mock-model:ci"}})
    body = {"apiVersion": "agentq.dev/v1alpha1", "kind": "AgentQRound",
            "metadata": {"name": load_round(ROUND).name, "namespace": "agentq-system", "uid": "e2e"},
            "spec": yaml.safe_load(ROUND.read_text())["spec"]}
    store, home, spec_dir = tmp_path / "artifacts", tmp_path / "home", tmp_path / "etc-agentq"
    for d in (store, home, spec_dir):
        d.mkdir()
    round_path = spec_dir / "round.yaml"
    round_path.write_text(spec_configmap(body)["data"]["round.yaml"])
    # The image's working directory: the round names its baked-in tasks relative to it.
    workdir = tmp_path / "opt-agentq"
    shutil.copytree(MOCK / "tasks", workdir / "tasks")

    results = {}
    for stage in units(load_round(ROUND).spec):
        for unit in (u for u in stage if u.step in steps):
            job = build_job(body, unit, 0, settings)
            container = job["spec"]["template"]["spec"]["containers"][0]
            assert container["image"] == "agentq-mock-model:ci"
            assert "resources" not in container, "kind has no GPUs: no nvidia.com/gpu request"
            command = [str(round_path) if a == ROUND_PATH else a for a in container["command"]]
            result = tmp_path / f"{job['metadata']['name']}.termination-log"
            done = subprocess.run(command, cwd=workdir, env=_container_env(job, store, result, home),
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            results[unit.key] = json.loads(result.read_text())
    return store / "rounds" / body["metadata"]["name"], results


@pytest.mark.slow
def test_mock_model_steps_run_as_the_kind_jobs_would(tmp_path, sandbox):
    url, calls = sandbox
    assert json.load(urllib.request.urlopen(f"{url}/healthz", timeout=10))["ok"] and calls == ["GET /healthz"]
    prefix, results = _run_units(tmp_path, url, {"collect", "preferences", "train", "merge", "evaluate", "report"})
    for name in ("spec.yaml", "trajectories/shard-0-of-2.jsonl", "trajectories/shard-1-of-2.jsonl",
                 "preferences.jsonl", "adapter/adapter_config.json", "merged/config.json",
                 "eval/summary.json", "eval/report.md"):
        assert (prefix / name).exists(), f"missing artifact {name}"
    assert results["collect-0"]["tasks"] + results["collect-1"]["tasks"] == 5
    assert set(results) == {"collect-0", "collect-1", "preferences", "train", "merge", "evaluate-0", "report"}


def test_collect_uses_the_sandbox_at_sandbox_url(tmp_path, sandbox):
    url, calls = sandbox
    _run_units(tmp_path, url, {"collect"})
    assert any(call.startswith("POST /run") for call in calls), "collect ran its candidates outside the sandbox"
