"""A real kube-apiserver + etcd on 127.0.0.1 for the operator's tests and benchmark, and on request
(`controllers=True`) a kube-controller-manager running the Job, TTL-after-finished and garbage-collector
controllers, so Jobs, TTLs and ownerReferences behave as in a cluster. There is no scheduler or kubelet:
callers play the kubelet with `job_pod`/`finish_job` (a pod that ran, and the Job status the Job controller
writes for it, which the real Job controller, when it runs, computes from that pod on its own).

The binaries come from scripts/testenv.sh (built once from Debian's kubernetes source package, cached
outside the repo); $AGENTQ_TESTENV_BIN or $KUBEBUILDER_ASSETS point at them.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ADMIN_TOKEN = "agentq-admin-token"
OPERATOR_TOKEN = "agentq-operator-token"
OPERATOR_NAMESPACE = "agentq-system"
OPERATOR_SA = "agentq-operator"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "agentq-testenv" / "bin"
REPO = Path(__file__).resolve().parent.parent


class EnvMissing(RuntimeError):
    """The binaries are not there; the message says how to get them."""


BINARIES = ("kube-apiserver", "kube-controller-manager", "etcd", "kubectl")
# The Job controller runs pods to completion, the TTL controller removes finished Jobs, the garbage collector
# removes what a deleted owner owned, the resource-quota controller keeps ResourceQuotas' usage (the API server's
# quota admission refuses creates from it). No service-account token controller: the API server runs without
# the ServiceAccount admission plugin, so pods need no tokens.
CONTROLLERS = "job,ttl-after-finished,garbagecollector,resourcequota"
# ttlSecondsAfterFinished is alpha in 1.20: without the gate the API server drops the field silently.
FEATURE_GATES = "TTLAfterFinished=true"


def bin_dir() -> Path:
    for candidate in (os.environ.get("AGENTQ_TESTENV_BIN"), os.environ.get("KUBEBUILDER_ASSETS"), DEFAULT_CACHE):
        if candidate and all((Path(candidate) / b).exists() for b in BINARIES):
            return Path(candidate)
    raise EnvMissing(f"{'/'.join(BINARIES)} not found in $AGENTQ_TESTENV_BIN, $KUBEBUILDER_ASSETS or "
                     f"{DEFAULT_CACHE}; run scripts/testenv.sh (it prints the directory to export)")


def require() -> Path:
    """bin_dir(), for a test that needs the API server: where the binaries are missing the test is skipped, but
    in CI and under `make test` (which set CI or AGENTQ_TESTENV_BIN) a missing test environment is a failure."""
    try:
        return bin_dir()
    except EnvMissing as err:
        if os.environ.get("CI") or os.environ.get("AGENTQ_TESTENV_BIN"):
            raise
        import pytest

        pytest.skip(str(err))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kubeconfig(path: Path, server: str, token: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "test", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }))
    return path


def _wait(check: Any, timeout: float, what: str, proc: subprocess.Popen | None = None,
          log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what}: process exited with {proc.returncode}\n{tail}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet; any error means "try again"
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def stop_process(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM, then SIGKILL after a grace period: servers under test get a chance to shut down cleanly."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class LocalCluster:
    """etcd + kube-apiserver in `workdir`; `rbac=True` turns on RBAC authorization, `controllers=True` adds
    the controller-manager."""

    workdir: Path
    rbac: bool = False
    controllers: bool = False
    procs: list[subprocess.Popen] = field(default_factory=list)
    server: str = ""

    def start(self) -> LocalCluster:
        """Both processes up and the `default` namespace present; on any failure nothing is left running."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> LocalCluster:
        bins = bin_dir()
        self.bins = bins
        self.workdir.mkdir(parents=True, exist_ok=True)
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd_log = self.workdir / "etcd.log"
        self._spawn([str(bins / "etcd"), "--data-dir", str(self.workdir / "etcd"),
                     "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                     "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                     "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                     "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                     "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
                     "--unsafe-no-fsync"], etcd_log)
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n'
                          f'{OPERATOR_TOKEN},system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA},op,'
                          f'"system:serviceaccounts,system:serviceaccounts:{OPERATOR_NAMESPACE}"\n')
        sa_key = self.workdir / "sa.key"
        subprocess.run(["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True, capture_output=True)
        api_log = self.workdir / "apiserver.log"
        self.server = f"https://127.0.0.1:{api_port}"
        _wait(lambda: urllib.request.urlopen(f"http://127.0.0.1:{etcd_port}/health", timeout=1).status == 200,
              20, "etcd", self.procs[0], etcd_log)
        self._apiserver = [str(bins / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                     "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
                     f"--cert-dir={self.workdir / 'certs'}", f"--token-auth-file={tokens}",
                     f"--authorization-mode={'RBAC' if self.rbac else 'AlwaysAllow'}",
                     "--disable-admission-plugins=ServiceAccount",
                     f"--service-account-key-file={sa_key}", f"--service-account-signing-key-file={sa_key}",
                     "--service-account-issuer=https://agentq.test", "--api-audiences=agentq.test",
                     "--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=false",
                     f"--feature-gates={FEATURE_GATES}",
                     "--enable-priority-and-fairness=false", "--v=0"]
        self._spawn(self._apiserver, api_log)
        self.kubeconfig = _kubeconfig(self.workdir / "admin.kubeconfig", self.server, ADMIN_TOKEN)
        self.operator_kubeconfig = _kubeconfig(self.workdir / "operator.kubeconfig", self.server, OPERATOR_TOKEN)
        _wait(lambda: self._get("/readyz") == 200 and self._get("/api/v1/namespaces/default") == 200,
              60, "kube-apiserver", self.procs[1], api_log)
        if self.controllers:
            self._start_controller_manager(bins)
        return self

    def _start_controller_manager(self, bins: Path) -> None:
        """The controllers over the admin kubeconfig, their health on a plain-HTTP port of their own (1.20's
        insecure port; the secure one would need certificates and delegated authentication)."""
        port = free_port()
        log = self.workdir / "controller-manager.log"
        self._spawn([str(bins / "kube-controller-manager"), f"--kubeconfig={self.kubeconfig}",
                     f"--controllers={CONTROLLERS}", f"--feature-gates={FEATURE_GATES}",
                     "--leader-elect=false", "--use-service-account-credentials=false",
                     "--address=127.0.0.1", f"--port={port}", "--secure-port=0",
                     # A test waits seconds, not the defaults' minutes, for a TTL or a collected orphan.
                     "--concurrent-ttl-after-finished-syncs=5", "--concurrent-gc-syncs=5", "--v=1"], log)
        proc = self.procs[-1]
        _wait(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).status == 200,
              60, "kube-controller-manager", proc, log)

    def restart_apiserver(self, down_s: float) -> None:
        """Stop the API server (SIGTERM, as a control-plane upgrade does), keep it away for `down_s` seconds,
        start it again on the same port and wait until it serves; etcd and the controllers stay up."""
        index = next(i for i, p in enumerate(self.procs) if p.args == self._apiserver)
        stop_process(self.procs[index])
        time.sleep(down_s)
        log = self.workdir / "apiserver.log"
        with open(log, "ab") as out:
            self.procs[index] = subprocess.Popen(self._apiserver, stdout=out, stderr=subprocess.STDOUT,
                                                 start_new_session=True)
        _wait(lambda: self._get("/readyz") == 200, 60, "kube-apiserver (restarted)", self.procs[index], log)

    def _spawn(self, cmd: list[str], log: Path) -> None:
        with open(log, "ab") as out:
            self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))

    def _get(self, path: str) -> int:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        req = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
            return resp.status

    def kubectl(self, *args: str, check: bool = True, kubeconfig: Path | None = None,
                stdin: str | None = None) -> subprocess.CompletedProcess:
        cmd = [str(self.bins / "kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=60)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
        return out

    def api(self) -> Any:
        import urllib3
        from kubernetes import config

        # The test server's certificate is self-signed on every start; the warning would drown the output.
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        return config.new_client_from_config(str(self.kubeconfig))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)
        self.procs.clear()


class Operator:
    """The operator as a separate process (`kopf run`), so a test can kill it like a crashed pod."""

    def __init__(self, kubeconfig: Path, workdir: Path, *, config: dict | None = None,
                 args: tuple[str, ...] = ("--standalone",), name: str = "operator") -> None:
        self.kubeconfig, self.workdir, self.args, self.name = kubeconfig, workdir, args, name
        self.config_path = workdir / f"{name}-config.yaml"
        self.config_path.write_text(yaml.safe_dump(config or {}))
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Operator:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "AGENTQ_OPERATOR_CONFIG": str(self.config_path),
               "PYTHONPATH": str(REPO),
               # the test server's self-signed certificate: one warning per request would flood the log
               "PYTHONWARNINGS": "ignore:Unverified HTTPS request"}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kopf", "run", "-m", "controller.handlers", "--all-namespaces",
                 *self.args],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        return self

    def peak_rss_mb(self) -> float:
        """VmHWM: the most resident memory the process ever had (read while it still runs)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc status")

    def cpu_seconds(self) -> float:
        """User + system CPU the process has used: a figure that, unlike latency, a busy machine barely moves."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye to peers, exactly like a node dying under the pod."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _ts() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _controller_pod(core: Any, namespace: str, uid: str, timeout: float = 20.0) -> str:
    """The live pod the Job controller made for the Job `uid` (waiting for it to appear)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = json.loads(core.list_namespaced_pod(namespace, label_selector=f"controller-uid={uid}",
                                                   _preload_content=False).data)["items"]
        live = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                and not p["metadata"].get("deletionTimestamp")]
        if live:
            return live[0]["metadata"]["name"]
        time.sleep(0.05)
    raise TimeoutError(f"the Job controller made no pod for Job uid {uid} in {timeout}s")


def job_pod(api: Any, namespace: str, job_name: str, status: dict[str, Any], *,
            controller_pod: bool = False) -> str:
    """Play the kubelet (and, unless `controller_pod`, the Job controller): a pod of the Job with `status` as
    the kubelet (or the scheduler) would report it; its containerStatuses get the template container's name
    and image. With `controller_pod` (a controller-manager runs) the pod is the one the Job controller made,
    as a kubelet reports on the pods it was given: a pod of our own beside it would be an extra active pod,
    which the Job controller deletes. Returns the pod's name."""
    from kubernetes import client

    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    job = json.loads(batch.read_namespaced_job(job_name, namespace, _preload_content=False).data)
    template = job["spec"]["template"]
    if controller_pod:
        pod_name = _controller_pod(core, namespace, job["metadata"]["uid"])
    else:
        labels = {**(template["metadata"].get("labels") or {}), "job-name": job_name,
                  "controller-uid": job["metadata"]["uid"]}
        pod_name = f"{job_name}-{os.urandom(3).hex()}"
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name, "namespace": namespace, "labels": labels,
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                                                 "uid": job["metadata"]["uid"], "controller": True}]},
               "spec": template["spec"]}
        core.create_namespaced_pod(namespace, pod, _preload_content=False)
    container = template["spec"]["containers"][0]
    statuses = [{"name": container["name"], "image": container["image"], "imageID": "", "ready": False,
                 "restartCount": 0, **cs} for cs in status.get("containerStatuses") or []]
    core.patch_namespaced_pod_status(pod_name, namespace, {"status": {**status, "containerStatuses": statuses}})
    return pod_name


def pod_ran(api: Any, namespace: str, job_name: str, *, succeeded: bool, message: str = "",
            exit_code: int | None = None, reason: str | None = None, controller_pod: bool = False) -> None:
    """Play the kubelet for one Job: a pod from its template that terminated with `message` as its
    termination message. With the controller-manager running, the Job controller takes it from there."""
    now = _ts()
    code = exit_code if exit_code is not None else (0 if succeeded else 1)
    term = {"exitCode": code, "reason": reason or ("Completed" if succeeded else "Error"),
            "message": message, "startedAt": now, "finishedAt": now}
    job_pod(api, namespace, job_name, {
        "phase": "Succeeded" if succeeded else "Failed", "startTime": now,
        "containerStatuses": [{"state": {"terminated": term}}]}, controller_pod=controller_pod)


def finish_job(api: Any, namespace: str, job_name: str, *, succeeded: bool, message: str = "",
               exit_code: int | None = None, reason: str | None = None, controller_pod: bool = False) -> None:
    """Play kubelet + Job controller for one Job: `pod_ran`, then the Job's status as the Job controller
    would write it (at once, rather than when a controller-manager gets to it, or where none runs)."""
    from kubernetes import client

    pod_ran(api, namespace, job_name, succeeded=succeeded, message=message, exit_code=exit_code, reason=reason,
            controller_pod=controller_pod)
    now = _ts()
    if succeeded:
        jstatus = {"startTime": now, "completionTime": now, "succeeded": 1,
                   "conditions": [{"type": "Complete", "status": "True", "lastProbeTime": now,
                                   "lastTransitionTime": now}]}
    else:
        jstatus = {"startTime": now, "failed": 1,
                   "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                   "message": "Job has reached the specified backoff limit",
                                   "lastProbeTime": now, "lastTransitionTime": now}]}
    client.BatchV1Api(api).patch_namespaced_job_status(job_name, namespace, {"status": jstatus})


def start_job(api: Any, namespace: str, job_name: str) -> None:
    """The Job controller's first status write: one active pod."""
    from kubernetes import client

    client.BatchV1Api(api).patch_namespaced_job_status(job_name, namespace,
                                                       {"status": {"startTime": _ts(), "active": 1}})
