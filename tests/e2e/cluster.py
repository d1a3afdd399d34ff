"""A real single-node Kubernetes cluster on this machine: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kubelet, kube-proxy, containerd + runc, a CNI bridge and a cluster DNS (dnsmasq fed with the
Services by a small watcher, since no CoreDNS build is at hand).

Why not kind: it needs a Docker engine, which this machine (and CI's) lacks. Everything here comes from Debian
packages (containerd, runc, CNI plugins, iptables, dnsmasq) or from the Kubernetes 1.20 source that
scripts/testenv.sh builds once per machine (`--node`: kubelet, kube-scheduler, kube-proxy, the pause binary).

    PYTHONPATH=tests .venv/bin/python -m e2e.cluster up      # prints `export KUBECONFIG=...`
    PYTHONPATH=tests .venv/bin/python -m e2e.cluster down    # everything it made, removed
    scripts/cluster.sh up|down|status                        # the same

Only one kubelet can run on a machine (it hard-codes /var/lib/kubelet, /var/log/pods, /var/log/containers),
so `up` takes a machine-wide lock that the cluster's own daemons hold (they inherit its file descriptor): a
second `up` refuses with one line while they live. The control plane binds only to 127.0.0.1 and to the
bridge's address, on ports the OS picks, so it never meets the fast tests' API servers (tests/testenv.py).
Pods reach each other, the node and the Services; the node does not forward their traffic anywhere else.

`down` removes what `up` made: daemons, pod containers, mounts under the kubelet's and containerd's
directories, /var/lib/kubelet, /var/log/pods, /var/log/containers, /var/lib/cni, the pods' network namespaces,
the /kubepods cgroups, kube-proxy's iptables chains and ours, the bridge, and the sysctls as they were.
Images stay in containerd's store under ~/.cache/agentq-e2e, so the next `up` does not import them again.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "agentq-e2e"
LOCK_FILE = Path("/run/agentq-cluster.lock")
RUN_DIR = Path("/run/agentq-cluster")  # sockets, pids, the state file: gone with a reboot
WORK = Path("/var/lib/agentq-cluster")  # etcd, certificates, configs, logs, the artifacts volume
CONTAINERD_ROOT = CACHE / "containerd"  # images survive `down`: a warm run imports nothing
# Fixed by kubelet 1.20 itself, hence one cluster per machine.
KUBELET_DIRS = (Path("/var/lib/kubelet"), Path("/var/log/pods"), Path("/var/log/containers"))
CNI_STATE = Path("/var/lib/cni")
NETNS_DIR = Path("/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
BRIDGE = "agentq0"
POD_CIDR = ipaddress.ip_network("10.213.0.0/24")
SERVICE_CIDR = ipaddress.ip_network("10.213.128.0/24")
NODE_IP = str(next(POD_CIDR.hosts()))  # the bridge's address: API server, kubelet and DNS listen here
NODE_NAME = "agentq-node"
DOMAIN = "cluster.local"
NAMESPACE = "k8s.io"  # containerd's namespace for CRI
FEATURE_GATES = "TTLAfterFinished=true,ProcMountType=true"
SYSCTLS = ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables", "net/ipv4/conf/all/route_localnet")
# Pods may talk to each other, the node and Services; nothing they send is forwarded off the bridge.
FORWARD_RULE = ["FORWARD", "-s", str(POD_CIDR), "!", "-o", BRIDGE, "-m", "comment", "--comment",
                "agentq-cluster: pods reach nothing beyond the node", "-j", "REJECT"]
ADMIN_TOKEN_USER = "admin"

# (binary, where it comes from): checked before anything starts, so a machine that cannot run the cluster
# says so in one line instead of failing half-way.
HOST_TOOLS = {
    "containerd": "apt-get install containerd", "containerd-shim-runc-v2": "apt-get install containerd",
    "ctr": "apt-get install containerd", "runc": "apt-get install runc", "iptables": "apt-get install iptables",
    "dnsmasq": "apt-get install dnsmasq-base", "openssl": "apt-get install openssl", "ip": "apt-get install iproute2",
}
CNI_BIN = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback")
KUBE_TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy",
              "kubectl", "helm", "pause")


class ClusterUnavailable(RuntimeError):
    """This machine cannot run the cluster; the message names the missing piece."""


class ClusterBusy(RuntimeError):
    """Another cluster runs on this machine."""


def log(message: str) -> None:
    print(f"cluster: {message}", file=sys.stderr, flush=True)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def kube_bin_dir() -> Path:
    """kubelet & co. from scripts/testenv.sh --node (built once, cached in ~/.cache/agentq-testenv)."""
    given = os.environ.get("AGENTQ_TESTENV_BIN")
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "agentq-testenv" / "bin"
    for candidate in filter(None, (given, str(default))):
        if all((Path(candidate) / tool).exists() for tool in KUBE_TOOLS):
            return Path(candidate)
    raise ClusterUnavailable(f"cannot run a real cluster here: {', '.join(KUBE_TOOLS)} not all in "
                             f"{given or default} (run scripts/testenv.sh --node)")


def preflight() -> Path:
    """Everything the cluster needs, checked up front; returns the Kubernetes binaries' directory."""
    if os.geteuid() != 0:
        raise ClusterUnavailable("cannot run a real cluster here: needs root (kubelet, containerd, iptables)")
    for tool, source in HOST_TOOLS.items():
        if shutil.which(tool) is None:
            raise ClusterUnavailable(f"cannot run a real cluster here: {tool} is missing ({source})")
    for plugin in CNI_PLUGINS:
        if not (CNI_BIN / plugin).exists():
            raise ClusterUnavailable(f"cannot run a real cluster here: CNI plugin {CNI_BIN / plugin} is missing "
                                     "(apt-get install containernetworking-plugins)")
    if "overlay" not in Path("/proc/filesystems").read_text():
        raise ClusterUnavailable("cannot run a real cluster here: the kernel has no overlayfs (containerd's snapshots)")
    if not Path("/proc/sys/net/bridge").exists():
        raise ClusterUnavailable("cannot run a real cluster here: no bridge netfilter (modprobe br_netfilter)")
    for controller in ("cpu", "memory", "pids"):
        if not ((CGROUP_ROOT / controller).is_dir() or (CGROUP_ROOT / "cgroup.controllers").exists()):
            raise ClusterUnavailable(f"cannot run a real cluster here: no {controller} cgroup controller mounted")
    routed = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True).stdout
    for line in routed.splitlines():
        net = line.split()[0]
        if (net != "default" and "/" in net and f"dev {BRIDGE}" not in line
                and ipaddress.ip_network(net, strict=False).overlaps(POD_CIDR)):
            raise ClusterUnavailable(f"cannot run a real cluster here: the pod network {POD_CIDR} overlaps "
                                     f"the route {line.strip()!r}")
    return kube_bin_dir()


def take_lock() -> int:
    """The machine-wide lock, as an open descriptor the daemons inherit: held as long as any of them runs."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = ""
        with contextlib.suppress(OSError, json.JSONDecodeError):
            holder = f" (started from {json.loads((RUN_DIR / 'state.json').read_text())['repo']})"
        raise ClusterBusy(f"a real cluster already runs on this machine{holder}; only one kubelet can run per "
                          "machine: `scripts/cluster.sh down` there first") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


@dataclass
class State:
    """What `up` started and changed, so `down` undoes exactly that (kept in RUN_DIR/state.json)."""

    repo: str = str(REPO)
    bins: str = ""
    pids: dict[str, int] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    forward_rule: bool = False
    server: str = ""
    kubeconfig: str = ""
    artifacts: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def save(self) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        tmp = RUN_DIR / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(RUN_DIR / "state.json")

    @classmethod
    def load(cls) -> State | None:
        try:
            return cls(**json.loads((RUN_DIR / "state.json").read_text()))
        except (OSError, json.JSONDecodeError, TypeError):
            return None


def _run(*cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name


def _certificates(pki: Path) -> None:
    """A CA, the API server's serving certificate (the node's address, the `kubernetes` Service's IP and names)
    and the client certificate the API server shows the kubelet (logs, exec)."""
    pki.mkdir(parents=True, exist_ok=True)
    service_ip = str(next(SERVICE_CIDR.hosts()))

    def openssl(*args: str) -> None:
        _run("openssl", *args)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "7", "-subj", "/CN=agentq-cluster-ca",
            "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"))
    sans = ",".join([f"IP:{NODE_IP}", "IP:127.0.0.1", f"IP:{service_ip}", "DNS:localhost", "DNS:kubernetes",
                     "DNS:kubernetes.default", "DNS:kubernetes.default.svc", f"DNS:kubernetes.default.svc.{DOMAIN}"])
    (pki / "san.cnf").write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth,clientAuth\n")
    for name, subject, ext in (("apiserver", "/CN=kube-apiserver", True),
                               ("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client",
                                False)):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", str(pki / f"{name}.key"),
                "-out", str(pki / f"{name}.csr"))
        extra = ["-extfile", str(pki / "san.cnf")] if ext else []
        openssl("x509", "-req", "-in", str(pki / f"{name}.csr"), "-CA", str(pki / "ca.crt"), "-CAkey",
                str(pki / "ca.key"), "-CAcreateserial", "-days", "7", "-out", str(pki / f"{name}.crt"), *extra)
    openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))


def _kubeconfig(path: Path, server: str, token: str, ca: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "agentq-e2e",
        "clusters": [{"name": "agentq-e2e", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "agentq-e2e", "user": {"token": token}}],
        "contexts": [{"name": "agentq-e2e", "context": {"cluster": "agentq-e2e", "user": "agentq-e2e"}}],
    }))
    path.chmod(0o600)
    return path


class Cluster:
    """`up()` and `down()`; `kubectl()` and `diagnostics()` for the scenarios."""

    def __init__(self, state: State | None = None) -> None:
        self.state = state or State()
        self.logs = WORK / "logs"
        self._lock_fd: int | None = None

    # ---- bring-up ---------------------------------------------------------------------------------------

    def up(self) -> Cluster:
        """The whole cluster, node Ready; on any failure everything made so far is removed again."""
        bins = preflight()
        self._lock_fd = take_lock()
        try:
            crashed = State.load()
            if crashed is not None:  # the lock was free, so its daemons are gone: undo what they changed
                log("removing what an earlier cluster left behind")
                Cluster(crashed).down()
            self._up(bins)
        except BaseException:
            log("bring-up failed; the logs are in " + str(self.logs))
            self.print_log_tails()
            self.down()
            raise
        finally:
            os.close(self._lock_fd)  # the daemons hold it now
            self._lock_fd = None
        return self

    def _up(self, bins: Path) -> None:
        start = time.monotonic()
        self._remove_leftovers()
        shutil.rmtree(self.logs, ignore_errors=True)  # the last run's logs stay until the next `up`
        for path in (RUN_DIR, WORK, self.logs, CONTAINERD_ROOT, WORK / "artifacts"):
            path.mkdir(parents=True, exist_ok=True)
        self.state.bins = str(bins)
        self.state.artifacts = str(WORK / "artifacts")
        self.state.save()
        self._network()
        pki = WORK / "pki"
        _certificates(pki)
        self._control_plane(bins, pki)
        self._containerd(bins)
        self._node(bins, pki)
        self._dns(bins)
        self._wait_ready()
        self.state.timings["up_s"] = round(time.monotonic() - start, 1)
        self.state.save()

    def _network(self) -> None:
        """The bridge the CNI plugin attaches pods to, made first: the API server listens on its address."""
        for name in SYSCTLS:
            with contextlib.suppress(OSError):
                self.state.sysctls[name] = _sysctl_path(name).read_text().strip()
        self.state.save()
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{NODE_IP}/{POD_CIDR.prefixlen}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        # Pod to pod through a Service needs the bridged packets to pass iptables (kube-proxy's DNAT), and the
        # node must route between the bridge and its own addresses.
        _sysctl_path("net/ipv4/ip_forward").write_text("1")
        _sysctl_path("net/bridge/bridge-nf-call-iptables").write_text("1")
        _run("iptables", "-I", *FORWARD_RULE)
        self.state.forward_rule = True
        self.state.save()

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        assert self._lock_fd is not None
        with open(self.logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, pass_fds=(self._lock_fd,),
                                    env={**os.environ, **(env or {})})
        self.state.pids[name] = proc.pid
        self.state.save()
        return proc

    def _wait(self, what: str, check: Any, timeout: float, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}: {self._tail(what)}")
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.2)
        raise TimeoutError(f"{what} not ready after {timeout:.0f}s: {self._tail(what)}")

    def _tail(self, name: str, lines: int = 15) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _control_plane(self, bins: Path, pki: Path) -> None:
        ports = self.state.ports
        ports.update(etcd=free_port(), etcd_peer=free_port(), apiserver=free_port(NODE_IP),
                     controller_manager=free_port(), scheduler=free_port())
        etcd = self._spawn("etcd", [
            str(bins / "etcd"), "--data-dir", str(WORK / "etcd"), "--unsafe-no-fsync",
            "--listen-client-urls", f"http://127.0.0.1:{ports['etcd']}",
            "--advertise-client-urls", f"http://127.0.0.1:{ports['etcd']}",
            "--listen-peer-urls", f"http://127.0.0.1:{ports['etcd_peer']}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{ports['etcd_peer']}",
            "--initial-cluster", f"default=http://127.0.0.1:{ports['etcd_peer']}"])
        self._wait("etcd", lambda: urllib.request.urlopen(f"http://127.0.0.1:{ports['etcd']}/health", timeout=2),
                   60, etcd)
        admin_token = os.urandom(16).hex()
        self.tokens = {"admin": admin_token, "node": os.urandom(16).hex(), "proxy": os.urandom(16).hex()}
        (WORK / "tokens.csv").write_text(
            f'{self.tokens["admin"]},{ADMIN_TOKEN_USER},admin,"system:masters"\n'
            f'{self.tokens["node"]},system:node:{NODE_NAME},node,"system:nodes"\n'
            f'{self.tokens["proxy"]},system:kube-proxy,kube-proxy\n')
        (WORK / "tokens.csv").chmod(0o600)
        self.state.server = f"https://{NODE_IP}:{ports['apiserver']}"
        api = self._spawn("kube-apiserver", [
            str(bins / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            f"--bind-address={NODE_IP}", f"--advertise-address={NODE_IP}", f"--secure-port={ports['apiserver']}",
            "--insecure-port=0", f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}", f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={WORK / 'tokens.csv'}", "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction", f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=false", "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--feature-gates={FEATURE_GATES}", "--profiling=false", "--v=1"])
        self.state.kubeconfig = str(_kubeconfig(WORK / "admin.kubeconfig", self.state.server, admin_token,
                                                pki / "ca.crt"))
        node_kubeconfig = _kubeconfig(WORK / "kubelet.kubeconfig", self.state.server, self.tokens["node"],
                                      pki / "ca.crt")
        proxy_kubeconfig = _kubeconfig(WORK / "kube-proxy.kubeconfig", self.state.server, self.tokens["proxy"],
                                       pki / "ca.crt")
        self.state.save()
        self._wait("kube-apiserver", lambda: self.kubectl("get", "--raw", "/readyz").returncode == 0, 120, api)
        self._wait("kube-apiserver", lambda: self.kubectl("get", "namespace", "default").returncode == 0, 60, api)
        cm = self._spawn("kube-controller-manager", [
            str(bins / "kube-controller-manager"), f"--kubeconfig={self.state.kubeconfig}", "--controllers=*",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=false", "--leader-elect=false", f"--feature-gates={FEATURE_GATES}",
            "--address=127.0.0.1", f"--port={ports['controller_manager']}", "--secure-port=0",
            "--concurrent-ttl-after-finished-syncs=5", "--concurrent-gc-syncs=5", "--v=1"])
        sched = self._spawn("kube-scheduler", [
            str(bins / "kube-scheduler"), f"--kubeconfig={self.state.kubeconfig}", "--leader-elect=false",
            "--address=127.0.0.1", f"--port={ports['scheduler']}", "--secure-port=0", "--v=1"])
        for name, proc, port in (("kube-controller-manager", cm, ports["controller_manager"]),
                                 ("kube-scheduler", sched, ports["scheduler"])):
            self._wait(name, lambda p=port: urllib.request.urlopen(f"http://127.0.0.1:{p}/healthz", timeout=2),
                       60, proc)
        self._node_kubeconfig, self._proxy_kubeconfig = node_kubeconfig, proxy_kubeconfig

    def _containerd(self, bins: Path) -> None:
        """containerd with its CRI plugin: runc (crun fails on this host's hybrid cgroups), cgroupfs, the local
        pause image, and restrict_oom_score_adj (without CAP_SYS_RESOURCE every sandbox would fail)."""
        state_dir = RUN_DIR / "containerd"
        cni_conf = WORK / "cni"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-agentq.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "agentq",
            "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
                         "hairpinMode": True,
                         "ipam": {"type": "host-local", "ranges": [[{"subnet": str(POD_CIDR), "gateway": NODE_IP}]],
                                  "routes": [{"dst": "0.0.0.0/0"}]}}],
        }, indent=1))
        from e2e import images  # the pause image is built like every other image

        pause = images.pause_image(bins / "pause")
        config = WORK / "containerd.toml"
        socket_path = RUN_DIR / "containerd.sock"
        config.write_text(f'''version = 2
root = "{CONTAINERD_ROOT}"
state = "{state_dir}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{socket_path}"
[ttrpc]
  address = "{socket_path}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause.ref}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{shutil.which('runc')}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni_conf}"
''')
        proc = self._spawn("containerd", ["containerd", "--config", str(config)])
        self.socket = socket_path
        self._wait("containerd", lambda: self.ctr("version").returncode == 0, 60, proc)
        self._remove_pod_containers()  # a crashed earlier run's containers must not come back to life
        images.load(self, [pause])

    def _node(self, bins: Path, pki: Path) -> None:
        ports = self.state.ports
        ports.update(kubelet=free_port(NODE_IP), kubelet_healthz=free_port(), proxy_healthz=free_port(),
                     proxy_metrics=free_port())
        resolv = WORK / "resolv.conf"
        resolv.write_text(f"nameserver {NODE_IP}\n")  # the cluster DNS; pods have no route beyond the node
        config = WORK / "kubelet.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": NODE_IP, "port": ports["kubelet"], "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": ports["kubelet_healthz"],
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(pki / "ca.crt")}},
            "authorization": {"mode": "AlwaysAllow"},  # only the API server holds a certificate of our CA
            "cgroupDriver": "cgroupfs", "failSwapOn": False, "clusterDomain": DOMAIN, "clusterDNS": [NODE_IP],
            "resolvConf": str(resolv), "makeIPTablesUtilChains": False, "podPidsLimit": 4096,
            "serializeImagePulls": False, "imageGCHighThresholdPercent": 99, "imageGCLowThresholdPercent": 98,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "featureGates": {gate: value == "true" for gate, value in (g.split("=") for g in FEATURE_GATES.split(","))},
        }))
        kubelet = self._spawn("kubelet", [
            str(bins / "kubelet"), f"--config={config}", f"--kubeconfig={self._node_kubeconfig}",
            "--container-runtime=remote", f"--container-runtime-endpoint=unix://{self.socket}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", f"--cert-dir={WORK / 'kubelet-pki'}",
            "--v=1"])
        proxy = self._spawn("kube-proxy", [
            str(bins / "kube-proxy"), f"--kubeconfig={self._proxy_kubeconfig}", f"--hostname-override={NODE_NAME}",
            f"--cluster-cidr={POD_CIDR}", "--proxy-mode=iptables",
            f"--healthz-bind-address=127.0.0.1:{ports['proxy_healthz']}",
            f"--metrics-bind-address=127.0.0.1:{ports['proxy_metrics']}",
            # leave the host's conntrack settings alone
            "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0", "--v=1"])
        self._wait("kubelet", lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{ports['kubelet_healthz']}/healthz", timeout=2), 120, kubelet)
        self._wait("kube-proxy", lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{ports['proxy_healthz']}/healthz", timeout=2), 120, proxy)

    def _dns(self, bins: Path) -> None:
        """dnsmasq answers <service>.<namespace>.svc.cluster.local from a hosts directory it watches, which
        a small watcher (e2e.dns) keeps equal to the Services' cluster IPs."""
        hosts = RUN_DIR / "dns-hosts"
        hosts.mkdir(parents=True, exist_ok=True)
        dns = self._spawn("dnsmasq", [
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            f"--listen-address={NODE_IP}", "--bind-interfaces", "--port=53", f"--hostsdir={hosts}",
            f"--local=/{DOMAIN}/", "--domain-needed", "--bogus-priv", "--log-facility=-", "--user=root",
            f"--pid-file={RUN_DIR / 'dnsmasq.pid'}"])
        feeder = self._spawn("dns-feeder", [
            sys.executable, "-m", "e2e.dns", "--kubeconfig", self.state.kubeconfig, "--hosts-dir", str(hosts),
            "--domain", DOMAIN], env={"PYTHONPATH": str(REPO / "tests")})
        self._wait("dnsmasq", lambda: dns.poll() is None and (RUN_DIR / "dnsmasq.pid").exists(), 30, dns)
        self._wait("dns-feeder", lambda: (hosts / "services").exists(), 60, feeder)

    def _wait_ready(self) -> None:
        def node_ready() -> bool:
            out = self.kubectl("get", "node", NODE_NAME, "-o",
                               "jsonpath={.status.conditions[?(@.type=='Ready')].status}")
            return out.stdout.strip() == "True"

        self._wait("kubelet", node_ready, 180)
        # Pods are refused until their namespace's default ServiceAccount exists.
        self._wait("kube-controller-manager", lambda: self.kubectl(
            "get", "serviceaccount", "default", "-n", "default").returncode == 0, 120)

    # ---- using it --------------------------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = False, stdin: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(Path(self.state.bins) / "kubectl"), f"--kubeconfig={self.state.kubeconfig}", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done

    def restart_apiserver(self, down_s: float) -> None:
        """Stop the API server (SIGTERM, as a control-plane upgrade does), keep it away `down_s` seconds and
        start it again with the same command line; returns once it serves. Everything else keeps running: the
        kubelet its pods, the controllers and the operator their (broken) watches."""
        pid = self.state.pids["kube-apiserver"]
        cmd = [part.decode() for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if part]
        self._stop("kube-apiserver")
        time.sleep(down_s)
        with open(self.logs / "kube-apiserver.log", "ab") as out:  # the lock stays held by the other daemons
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.state.pids["kube-apiserver"] = proc.pid
        self.state.save()
        self._wait("kube-apiserver", lambda: self.kubectl("get", "--raw", "/readyz").returncode == 0, 120, proc)

    def helm(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = [str(Path(self.state.bins) / "helm"), f"--kubeconfig={self.state.kubeconfig}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def ctr(self, *args: str, timeout: float = 600, stdin: Any = None) -> subprocess.CompletedProcess:
        return subprocess.run(["ctr", "--address", str(RUN_DIR / "containerd.sock"), "--namespace", NAMESPACE,
                               *args], capture_output=True, text=True, timeout=timeout, stdin=stdin)

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": self.state.kubeconfig, "PATH": f"{self.state.bins}:{os.environ.get('PATH', '')}"}

    def diagnostics(self) -> str:
        """What a person needs to see when a scenario fails: nodes, pods, Jobs, rounds, events, daemon logs."""
        parts = []
        for args in (("get", "nodes", "-o", "wide"), ("get", "pods,jobs,deploy,svc,pvc,agentqrounds,agentqcampaigns",
                                                      "-A", "-o", "wide"),
                     ("get", "events", "-A", "--sort-by=.lastTimestamp")):
            done = self.kubectl(*args)
            parts.append(f"$ kubectl {' '.join(args)}\n{done.stdout}{done.stderr}")
        return "\n".join(parts)

    def print_log_tails(self) -> None:
        for name in self.state.pids:
            tail = self._tail(name, 10)
            if tail:
                print(f"--- {name} log (last lines)\n{tail}", file=sys.stderr)

    # ---- tear-down --------------------------------------------------------------------------------------

    def down(self) -> None:
        """Remove everything `up` made; safe to call on a half-made or already removed cluster."""
        state = self.state
        self._stop("kubelet")
        if self._alive("containerd"):
            self._remove_pod_containers()
        for name in ("kube-proxy", "dns-feeder", "dnsmasq", "kube-scheduler", "kube-controller-manager",
                     "kube-apiserver", "etcd", "containerd"):
            self._stop(name)
        if state.bins and (Path(state.bins) / "kube-proxy").exists():
            _run(str(Path(state.bins) / "kube-proxy"), "--cleanup", check=False)
        self._remove_leftovers()

    def _alive(self, name: str) -> bool:
        pid = self.state.pids.get(name)
        return bool(pid) and _is_ours(pid, name)

    def _stop(self, name: str, grace: float = 15) -> None:
        pid = self.state.pids.get(name)
        if not pid or not _is_ours(pid, name):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _is_ours(pid, name):
            _reap(pid)
            time.sleep(0.1)
        if _is_ours(pid, name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)

    def _remove_pod_containers(self) -> None:
        """Every CRI task and container (pods' and sandboxes'), so none outlives the cluster or comes back."""
        tasks = self.ctr("tasks", "ls", "-q").stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "-s", "SIGKILL", task)
        for task in tasks:
            for _ in range(50):
                if self.ctr("tasks", "delete", task).returncode == 0 or task not in self.ctr(
                        "tasks", "ls", "-q").stdout.split():
                    break
                time.sleep(0.1)
        containers = self.ctr("containers", "ls", "-q").stdout.split()
        if containers:
            self.ctr("containers", "rm", *containers)

    def _remove_leftovers(self) -> None:
        """Host state of a cluster, whether this one or one that crashed: mounts, directories, cgroups, network."""
        _unmount_under([*KUBELET_DIRS, RUN_DIR, WORK, NETNS_DIR, CONTAINERD_ROOT])
        for path in (*KUBELET_DIRS, CNI_STATE, RUN_DIR / "containerd", RUN_DIR / "dns-hosts"):
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            for path in WORK.iterdir():  # the logs stay for a person to read, until the next `up`
                if path.name != "logs":
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        with contextlib.suppress(OSError):
            for ns in NETNS_DIR.iterdir():
                if ns.name.startswith("cni-"):
                    ns.unlink()
            NETNS_DIR.rmdir()  # only when empty: another tool's namespaces stay
        _remove_cgroups("kubepods")
        _remove_kube_chains()
        while self.state.forward_rule or _run("iptables", "-C", *FORWARD_RULE, check=False).returncode == 0:
            if _run("iptables", "-D", *FORWARD_RULE, check=False).returncode != 0:
                break
            self.state.forward_rule = False
        if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
            _run("ip", "link", "del", BRIDGE, check=False)
        for name, value in self.state.sysctls.items():
            with contextlib.suppress(OSError):
                _sysctl_path(name).write_text(value)
        self.state.sysctls = {}
        self.state.pids = {name: pid for name, pid in self.state.pids.items() if _is_ours(pid, name)}
        if self.state.pids:
            self.state.save()  # something would not stop: `down` again finds it
        else:
            shutil.rmtree(RUN_DIR, ignore_errors=True)


def _is_ours(pid: int, name: str) -> bool:
    """The pid still runs the daemon we started (not a reused pid): its command line names the program."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    program = {"dns-feeder": b"e2e.dns"}.get(name, name.encode())
    return any(program in part for part in cmdline[:4])


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _unmount_under(roots: list[Path]) -> None:
    """Lazily unmount every mount at or below `roots`, deepest first (pod volumes, rootfs, netns, shm)."""
    prefixes = [str(r.resolve()) if r.exists() else str(r) for r in roots]
    for _ in range(3):
        points = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if any(point == p or point.startswith(p + "/") for p in prefixes):
                points.append(point)
        if not points:
            return
        for point in sorted(set(points), key=lambda p: p.count("/"), reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)


def _remove_kube_chains() -> None:
    """kube-proxy's and the kubelet's iptables chains (KUBE-*), which `kube-proxy --cleanup` leaves in part (its
    canaries, KUBE-MARK-*): the rules that jump to them first, then the chains."""
    for table in ("filter", "nat", "mangle"):
        rules = _run("iptables", "-t", table, "-S", check=False).stdout.splitlines()
        for rule in rules:
            words = rule.split()
            if words[:1] == ["-A"] and not words[1].startswith("KUBE-") and "KUBE-" in rule:
                _run("iptables", "-t", table, "-D", *shlex.split(rule)[1:], check=False)
        chains = [r.split()[1] for r in rules if r.startswith("-N KUBE-")]
        for chain in chains:
            _run("iptables", "-t", table, "-F", chain, check=False)
        for chain in chains:
            _run("iptables", "-t", table, "-X", chain, check=False)


def _remove_cgroups(name: str) -> None:
    """Remove <controller>/<name> and everything below it in every hierarchy, killing what still runs there."""
    roots = [CGROUP_ROOT / name] if (CGROUP_ROOT / "cgroup.controllers").exists() else \
        [d / name for d in CGROUP_ROOT.iterdir() if d.is_dir() and not d.is_symlink()]
    for root in roots:
        if not root.is_dir():
            continue
        groups = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for group in [*groups, root]:
            with contextlib.suppress(OSError):
                for pid in (group / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/cluster.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            cluster = Cluster().up()
            log(f"up in {cluster.state.timings['up_s']}s; node {NODE_NAME} Ready")
            print(f"export KUBECONFIG={cluster.state.kubeconfig} PATH={cluster.state.bins}:$PATH")
        elif args.action == "down":
            Cluster(State.load() or State()).down()
            log("down: nothing of the cluster is left")
        else:
            state = State.load()
            alive = {n: _is_ours(p, n) for n, p in (state.pids if state else {}).items()}
            print(json.dumps({"running": bool(alive) and all(alive.values()), "daemons": alive,
                              "kubeconfig": state.kubeconfig if state else None}))
    except (ClusterUnavailable, ClusterBusy) as err:
        print(f"cluster: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
