"""The Helm chart with the real helm binary: lint, render a values matrix, validate every object against the
Kubernetes 1.30 schemas, check the security settings a sandbox must have, and apply each rendering with
`kubectl apply --dry-run=server` to the real test API server (tests/testenv.py)."""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import testenv
import yaml

from controller.jobs import SANDBOX_CLIENTS, SANDBOX_STEPS, STEP_LABEL
from controller.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "agentq"
K8S_VERSION = "1.30.0"
VALUES = {"defaults": None, **{p.stem: p for p in sorted((CHART / "ci").glob("*-values.yaml"))}}


def _helm() -> str:
    dirs = [os.environ.get("AGENTQ_TESTENV_BIN"), os.environ.get("KUBEBUILDER_ASSETS"), str(testenv.DEFAULT_CACHE)]
    for d in filter(None, dirs):
        if (Path(d) / "helm").exists():
            return str(Path(d) / "helm")
    found = shutil.which("helm")
    if found:
        return found
    message = f"helm not found in $AGENTQ_TESTENV_BIN, $KUBEBUILDER_ASSETS, {testenv.DEFAULT_CACHE} or PATH; " \
              "run scripts/testenv.sh"
    if os.environ.get("CI") or os.environ.get("AGENTQ_TESTENV_BIN"):
        raise AssertionError(message)  # in CI (and via `make test`) a missing helm is a failure, not a skip
    pytest.skip(message)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([_helm(), *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done


def values_args(name: str) -> list[str]:
    return [] if VALUES[name] is None else ["-f", str(VALUES[name])]


class Rendering:
    def __init__(self, name: str, text: str) -> None:
        self.name, self.text = name, text
        self.docs = [d for d in yaml.safe_load_all(text) if d]

    def one(self, kind: str, suffix: str = "") -> dict[str, Any]:
        found = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
        assert len(found) == 1, f"{self.name}: expected one {kind} *{suffix}, found {len(found)}"
        return found[0]

    def kinds(self) -> list[str]:
        return [d["kind"] for d in self.docs]


@pytest.fixture(scope="module", params=sorted(VALUES))
def rendering(request) -> Rendering:
    out = helm("template", "agentq", str(CHART), "--include-crds", "-n", "agentq-system",
               *values_args(request.param)).stdout
    return Rendering(request.param, out)


@pytest.mark.parametrize("name", sorted(VALUES))
def test_lint_strict(name):
    helm("lint", "--strict", str(CHART), *values_args(name))


def _crd_schemas() -> dict[tuple[str, str], dict]:
    schemas = {}
    for crd in (d for path in (CHART / "crds").glob("*.yaml") for d in yaml.safe_load_all(path.read_text())):
        for version in crd["spec"]["versions"]:
            api_version = f"{crd['spec']['group']}/{version['name']}"
            schemas[(api_version, crd["spec"]["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
    return schemas


def test_every_object_validates_strictly_against_kubernetes_1_30(rendering):
    crd_schemas = _crd_schemas()
    for doc in rendering.docs:
        where = f"{rendering.name}: {doc['kind']}/{doc['metadata']['name']}"
        custom = crd_schemas.get((doc["apiVersion"], doc["kind"]))
        if custom is not None:  # the chart's own custom resources: their CRD's schema
            jsonschema.validate(doc, custom)
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            raise AssertionError(f"{where}: {err.message} at {'/'.join(map(str, err.path))}") from None


def test_crds_are_the_operators(rendering):
    for chart_file, manifest in (("agentqrounds.yaml", "crd.yaml"), ("agentqcampaigns.yaml", "campaign-crd.yaml")):
        assert (CHART / "crds" / chart_file).read_text() == (ROOT / "manifests" / manifest).read_text(), \
            f"charts/agentq/crds/{chart_file} is stale: cp manifests/{manifest} charts/agentq/crds/{chart_file}"
    peering = [d for d in yaml.safe_load_all((ROOT / "manifests" / "peering.yaml").read_text())
               if d["kind"] == "CustomResourceDefinition"]
    assert list(yaml.safe_load_all((CHART / "crds" / "kopfpeerings.yaml").read_text())) == peering
    assert rendering.kinds().count("CustomResourceDefinition") == 4


def test_rbac_is_the_operators_least_privilege_role(rendering):
    manifest = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "manifests" / "rbac.yaml").read_text())}
    role = rendering.one("ClusterRole", "-operator")
    assert role["rules"] == manifest["ClusterRole"]["rules"], "chart ClusterRole drifted from manifests/rbac.yaml"
    binding = rendering.one("ClusterRoleBinding", "-operator")
    account = rendering.one("ServiceAccount", "-operator")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": "agentq-system"}]
    deployment = rendering.one("Deployment", "-operator")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


def _merged(base: dict, override: dict) -> dict:
    """Helm's merge of a values file over the defaults: maps merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def test_operator_config_loads_with_the_operators_loader(rendering, tmp_path):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if VALUES[rendering.name]:
        values = _merged(values, yaml.safe_load(VALUES[rendering.name].read_text()))
    config = tmp_path / "config.yaml"
    config.write_text(rendering.one("ConfigMap", "-operator")["data"]["config.yaml"])
    settings = load_settings(config)
    assert settings.pools.inference.gpus_per_shard == values["pools"]["inference"]["gpusPerShard"]
    assert settings.pools.training.gpus == values["pools"]["training"]["gpus"]
    assert settings.pools.inference.node_selector == values["pools"]["inference"]["nodeSelector"]
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in settings.pools.training.tolerations]
    assert tolerations == values["pools"]["training"]["tolerations"]
    infer = values["images"]["infer"]
    assert settings.images.infer == f"{infer['repository']}:{infer['tag']}"
    service = rendering.one("Service", "-sandbox")
    port = service["spec"]["ports"][0]["port"]
    assert settings.sandbox_url == f"http://{service['metadata']['name']}.agentq-system.svc:{port}"
    assert settings.job_service_account == (values["operator"]["jobServiceAccount"] or None)
    assert settings.images.pull_secrets == [secret["name"] for secret in values["images"]["pullSecrets"]]
    cache = values["modelCache"]
    assert (settings.model_cache.pvc if settings.model_cache else "") == cache["pvc"]
    for name in ("inference", "training", "cpu"):
        pool, wanted = getattr(settings.pools, name), values["pools"][name]
        assert pool.node_selector == wanted["nodeSelector"]
        resources = {kind: {k: str(v) for k, v in (wanted["resources"].get(kind) or {}).items()}
                     for kind in ("requests", "limits")}
        assert pool.resources.model_dump() == resources
        assert (pool.shm_size, pool.scratch_size, pool.priority_class_name) == \
            (wanted.get("shmSize"), wanted.get("scratchSize"), wanted.get("priorityClassName"))


def test_job_service_account_is_created_only_when_asked(rendering):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if VALUES[rendering.name]:
        values = _merged(values, yaml.safe_load(VALUES[rendering.name].read_text()))
    accounts = [d for d in rendering.docs if d["kind"] == "ServiceAccount"
                and d["metadata"]["name"] == values["operator"]["jobServiceAccount"]]
    if values["operator"]["createJobServiceAccount"] and values["operator"]["jobServiceAccount"]:
        assert len(accounts) == 1 and accounts[0]["automountServiceAccountToken"] is False
    else:
        assert accounts == []


def test_operator_runs_with_peering_and_its_flags_exist(rendering):
    deployment = rendering.one("Deployment", "-operator")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    peering = rendering.one("ClusterKopfPeering")
    assert f"--peering={peering['metadata']['name']}" in args and "--all-namespaces" in args
    assert peering["metadata"]["name"] == "agentq"  # the release's full name: two releases never share one
    assert "--standalone" not in args
    env = {e["name"]: e["value"] for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert env["AGENTQ_OPERATOR_CONFIG"] == f"{mount['mountPath']}/config.yaml"
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    # The image's entrypoint plus these args is a command line kopf accepts.
    entrypoint = ["kopf", "run", "-m", "controller.handlers"]
    assert f'ENTRYPOINT {entrypoint}'.replace("'", '"') in (ROOT / "images/controller/Dockerfile").read_text()
    done = subprocess.run([str(Path(sys.executable).parent / "kopf"), *entrypoint[1:], *args, "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    if rendering.name == "gpu-pools-values":
        assert deployment["spec"]["replicas"] == 2


def test_watched_namespaces_get_their_own_peering_objects():
    out = helm("template", "team-a", str(CHART), "-n", "agentq-system", "--set", "operator.watchNamespaces={ml,ml-dev}",
               "--set", "operator.metricsPort=9191").stdout
    rendering = Rendering("watch", out)
    args = rendering.one("Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["--namespace=ml", "--namespace=ml-dev"] and "--all-namespaces" not in args
    peerings = [d for d in rendering.docs if d["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["ml", "ml-dev"]
    assert {p["metadata"]["name"] for p in peerings} == {"team-a-agentq"}
    assert "ClusterKopfPeering" not in rendering.kinds()
    assert f"--peering={peerings[0]['metadata']['name']}" in args
    config = yaml.safe_load(rendering.one("ConfigMap", "-operator")["data"]["config.yaml"])
    assert config["metricsPort"] == 9191
    # The namespaces are created when missing (kept on uninstall), and the operator's rights end at them: a Role
    # per namespace with the manifest's namespaced rules, and cluster-wide only the CRD read kopf needs.
    namespaces = [d for d in rendering.docs if d["kind"] == "Namespace"]
    assert [n["metadata"]["name"] for n in namespaces] == ["ml", "ml-dev"]
    assert all(n["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for n in namespaces)
    manifest = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "manifests" / "rbac.yaml").read_text())}
    cluster_wide = [r for r in manifest["ClusterRole"]["rules"]
                    if {"customresourcedefinitions", "clusterkopfpeerings"} & set(r["resources"])]
    namespaced = [r for r in manifest["ClusterRole"]["rules"] if r not in cluster_wide]
    role = rendering.one("ClusterRole", "-operator")
    assert role["rules"] == [r for r in cluster_wide if r["apiGroups"] == ["apiextensions.k8s.io"]]
    roles = [d for d in rendering.docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "ml-dev"]
    for r in roles:
        assert r["rules"] == [*namespaced, {"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"],
                                            "verbs": ["get", "list", "watch", "patch"]}]
    bindings = [d for d in rendering.docs if d["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml", "ml-dev"]
    assert all(b["subjects"][0]["namespace"] == "agentq-system" and b["roleRef"]["kind"] == "Role" for b in bindings)


def _hardened(pod: dict[str, Any], where: str, seccomp: dict | None = None) -> None:
    sec = pod["securityContext"]
    assert sec["runAsNonRoot"] is True and sec["runAsUser"] != 0, where
    assert sec["seccompProfile"] == (seccomp or {"type": "RuntimeDefault"}), where
    for c in pod["containers"] + pod.get("initContainers", []):
        csec = c["securityContext"]
        assert csec["readOnlyRootFilesystem"] is True, where
        assert csec["allowPrivilegeEscalation"] is False, where
        assert csec["capabilities"] == {"drop": ["ALL"]}, where
        assert c["resources"]["limits"]["cpu"] and c["resources"]["limits"]["memory"], where


SANDBOX_PROFILE = CHART / "files" / "sandbox-seccomp.json"


def _values(rendering: Rendering) -> dict:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    return _merged(values, yaml.safe_load(VALUES[rendering.name].read_text())) if VALUES[rendering.name] else values


def test_sandbox_pods_are_locked_down(rendering):
    deployment = rendering.one("Deployment", "-sandbox")
    pod = deployment["spec"]["template"]["spec"]
    mode = _values(rendering)["sandbox"]["isolation"]["mode"]
    container = pod["containers"][0]
    if mode == "bubblewrap":
        # Non-root, no capabilities, read-only root, with the two things bubblewrap needs from the cluster: the
        # chart's seccomp profile (user namespaces) and an unmasked /proc; an init container checks both.
        _hardened(pod, f"{rendering.name}: sandbox",
                  {"type": "Localhost", "localhostProfile": "agentq/sandbox-seccomp.json"})
        (check,) = pod["initContainers"]
        assert check["image"] == container["image"] and check["command"] == ["python", "-c"]
        assert check["args"][0] == (CHART / "files" / "isolation-check.py").read_text()
        for c in (container, check):
            assert c["securityContext"]["procMount"] == "Unmasked", rendering.name
        # the executor's userns profile is full isolation there: the server is never told to accept less
        assert "--allow-weak-isolation" not in container["args"]
    else:
        _hardened(pod, f"{rendering.name}: sandbox")
        # weak isolation in a locked-down pod is chosen explicitly, so the server says so in its log and verdicts
        assert "--allow-weak-isolation" in container["args"]
    assert pod["automountServiceAccountToken"] is False
    scratch = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert scratch == {"scratch": "/tmp"}
    volume = next(v for v in pod["volumes"] if v["name"] == "scratch")
    assert "emptyDir" in volume and volume["emptyDir"]["sizeLimit"]
    assert container["args"][:2] == ["sandbox", "serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    token = rendering.one("Secret", "-sandbox-token")
    assert len(base64.b64decode(token["data"]["token"])) == 40
    env = {e["name"]: e for e in container["env"]}
    ref = env["AGENTQ_SANDBOX_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": token["metadata"]["name"], "key": "token"}
    config = yaml.safe_load(rendering.one("ConfigMap", "-operator")["data"]["config.yaml"])
    assert config["sandboxTokenSecret"] == token["metadata"]["name"]
    _hardened(rendering.one("Deployment", "-operator")["spec"]["template"]["spec"], f"{rendering.name}: operator")


def test_weak_mode_keeps_the_runtime_default_profile_and_says_so():
    out = helm("template", "agentq", str(CHART), "-n", "agentq-system", "--set", "sandbox.isolation.mode=weak").stdout
    pod = Rendering("weak", out).one("Deployment", "-sandbox")["spec"]["template"]["spec"]
    _hardened(pod, "weak: sandbox")
    assert "initContainers" not in pod and "procMount" not in pod["containers"][0]["securityContext"]
    assert "--allow-weak-isolation" in pod["containers"][0]["args"]


def test_sandbox_seccomp_profile_permits_bubblewrap_and_denies_the_rest():
    """What the profile is for: user namespaces and mounts (which RuntimeDefault refuses) for bubblewrap; what it
    still denies: at least every syscall the jail denies its candidates, and the kernel's module, time and
    new-mount interfaces."""
    from agentq.sandbox.jail import DENIED_SYSCALLS

    profile = json.loads(SANDBOX_PROFILE.read_text())
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    denied = {name for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ERRNO" for name in rule["names"]}
    assert set(DENIED_SYSCALLS) <= denied, sorted(set(DENIED_SYSCALLS) - denied)
    assert {"init_module", "settimeofday", "fsopen", "open_tree", "mount_setattr"} <= denied
    assert not {"unshare", "clone", "clone3", "mount", "umount2", "pivot_root", "setns"} & denied


def test_install_profile_puts_the_charts_profile_on_every_sandbox_node():
    out = helm("template", "agentq", str(CHART), "-n", "agentq-system", "--set",
               "sandbox.isolation.installProfile=true", "--set", "sandbox.nodeSelector.pool=sandbox").stdout
    rendering = Rendering("install", out)
    config_map = rendering.one("ConfigMap", "-sandbox-seccomp")
    assert json.loads(config_map["data"]["profile.json"]) == json.loads(SANDBOX_PROFILE.read_text())
    daemonset = rendering.one("DaemonSet", "-sandbox-seccomp")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "sandbox"} and pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["env"] == [{"name": "PROFILE", "value": "agentq/sandbox-seccomp.json"}]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    host = next(v for v in pod["volumes"] if v["name"] == "seccomp")["hostPath"]
    assert host == {"path": "/var/lib/kubelet/seccomp", "type": "DirectoryOrCreate"}
    kubernetes_validate.validate(daemonset, K8S_VERSION, strict=True)
    done = helm("template", "agentq", str(CHART), "--set", "sandbox.isolation.installProfile=true",
                "--set", "sandbox.isolation.seccompProfile.type=RuntimeDefault", check=False)
    assert done.returncode != 0
    assert "installProfile needs sandbox.isolation.seccompProfile.type Localhost" in done.stderr


@pytest.mark.parametrize(("stderr", "names"), [
    ("bwrap: No permissions to creating new namespace, likely because the kernel does not allow non-privileged "
     "user namespaces.", "seccomp profile"),
    ("bwrap: Can't mount proc on /newroot/proc: Operation not permitted", "procMount: Unmasked"),
])
def test_isolation_check_names_what_the_pod_lacks(tmp_path, stderr, names):
    """The init container's script against a bubblewrap that fails as it does in a pod without the profile or
    with a masked /proc: exit 1 and one line naming the missing piece; with a working bubblewrap, exit 0."""
    script = (CHART / "files" / "isolation-check.py").read_text()
    fake = tmp_path / "bwrap"
    fake.write_text(f"#!/bin/sh\necho {shlex.quote(stderr)} >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert names in done.stderr and "agentq sandbox cannot isolate candidates here" in done.stderr
    fake.write_text("#!/bin/sh\nexit 0\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr


def test_every_port_names_its_protocol(rendering):
    """Server-side apply (Helm 4's default) keys Service and container ports by (port, protocol): a port without
    `protocol` is refused there, although client-side apply defaults it."""
    for doc in rendering.docs:
        spec = doc.get("spec") or {}
        ports = list(spec.get("ports") or []) if doc["kind"] == "Service" else []
        pod = (spec.get("template") or {}).get("spec") or (spec if doc["kind"] == "Pod" else {})
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            ports += c.get("ports") or []
        for port in ports:
            assert port.get("protocol") == "TCP", f"{rendering.name}: {doc['kind']}/{doc['metadata']['name']} {port}"


def test_user_namespace_isolation_gives_bubblewrap_what_it_needs():
    """isolation.mode userNamespace: root only inside the pod's own user namespace, full isolation, no opt-out."""
    out = helm("template", "agentq", str(CHART), "-n", "agentq-system", "--set", "sandbox.isolation.mode=userNamespace",
               "--set", "sandbox.isolation.runtimeClassName=gvisor").stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    pod = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-sandbox"))
    spec = pod["spec"]["template"]["spec"]
    assert spec["hostUsers"] is False and spec["runtimeClassName"] == "gvisor"
    assert spec["securityContext"]["runAsUser"] == 0 and spec["automountServiceAccountToken"] is False
    container = spec["containers"][0]
    assert "--allow-weak-isolation" not in container["args"]
    csec = container["securityContext"]
    assert csec["procMount"] == "Unmasked" and "SYS_ADMIN" in csec["capabilities"]["add"]
    assert csec["readOnlyRootFilesystem"] is True and csec["allowPrivilegeEscalation"] is False
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    out = helm("template", "agentq", str(CHART), "-n", "agentq-system", "--set", "sandbox.isolation.mode=userNamespace",
               "--set", "sandbox.isolation.allowWeak=true").stdout
    pod = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"
               and d["metadata"]["name"].endswith("-sandbox"))
    assert "--allow-weak-isolation" in pod["spec"]["template"]["spec"]["containers"][0]["args"]


def test_sandbox_serves_repo_runs_from_a_read_only_repo_data_claim():
    """sandbox.repoData.pvc: the server gets --repo-data-dir on the claim (read-only) and unpacks into scratch;
    without it, no repo flags and no extra volume."""
    def sandbox_pod(*sets: str) -> dict:
        out = helm("template", "agentq", str(CHART), "-n", "agentq-system", *sets).stdout
        return next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"
                    and d["metadata"]["name"].endswith("-sandbox"))

    pod = sandbox_pod("--set", "sandbox.repoData.pvc=sdists", "--set", "sandbox.repoData.subPath=data")
    spec = pod["spec"]["template"]["spec"]
    container = spec["containers"][0]
    args = container["args"]
    assert args[args.index("--repo-data-dir") + 1] == "/repo-data/repos"
    assert args[args.index("--repo-cache") + 1].startswith("/tmp/")  # the scratch emptyDir: the root is read-only
    assert {"name": "repo-data", "mountPath": "/repo-data", "readOnly": True, "subPath": "data"} in \
        container["volumeMounts"]
    assert {"name": "repo-data", "persistentVolumeClaim": {"claimName": "sdists", "readOnly": True}} in spec["volumes"]
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    plain = sandbox_pod()["spec"]["template"]["spec"]
    assert "--repo-data-dir" not in plain["containers"][0]["args"]
    assert [v["name"] for v in plain["volumes"]] == ["scratch"]


def test_sandbox_network_policy_denies_all_egress_and_admits_only_step_pods(rendering):
    policy = rendering.one("NetworkPolicy", "-sandbox")["spec"]
    deployment = rendering.one("Deployment", "-sandbox")
    assert policy["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    assert policy["egress"] == [], "the sandbox must have no egress rule at all"
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"] == {"matchExpressions": [
        {"key": STEP_LABEL, "operator": "In", "values": sorted(SANDBOX_CLIENTS)}]}
    port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert rule["ports"] == [{"protocol": "TCP", "port": port}]


def test_helm_test_hook_checks_the_sandbox_through_the_policy(rendering):
    pod = rendering.one("Pod", "-test-sandbox")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["metadata"]["labels"][STEP_LABEL] in SANDBOX_STEPS
    config = yaml.safe_load(rendering.one("ConfigMap", "-operator")["data"]["config.yaml"])
    assert f'"{config["sandboxUrl"]}/healthz"' in pod["spec"]["containers"][0]["args"][0]


def test_values_matrix_changes_what_it_should(rendering):
    kinds = rendering.kinds()
    secrets = [d["metadata"]["name"] for d in rendering.docs if d["kind"] == "Secret"]
    if rendering.name == "s3-values":
        assert "PersistentVolumeClaim" not in kinds
        secret = rendering.one("Secret", "agentq-s3")
        assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    else:
        assert all(name.endswith(("-sandbox-token", "-dashboard-token")) for name in secrets)
        rendering.one("PersistentVolumeClaim", "agentq-artifacts")


@pytest.mark.parametrize(("values", "expected"), [
    ("sandbox: {replicas: two}", "at '/sandbox/replicas': got string, want integer"),
    ("sandbox: {egress: true}", "additional properties 'egress' not allowed"),
    ("pools: {inference: {gpusPerShard: -1}}", "at '/pools/inference/gpusPerShard': minimum: got -1, want 0"),
    ("images: {pullPolicy: Sometimes}", "at '/images/pullPolicy'"),
    ("images: {infer: {repository: x, tag: latest}}", 'tag "latest" is not allowed; pin a version'),
    ("artifacts: {s3: {enabled: true, existing: false}}", "artifacts.s3.accessKeyId is required"),
])
def test_bad_values_are_rejected_with_a_readable_message(tmp_path, values, expected):
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(values + "\n")
    done = helm("template", "agentq", str(CHART), "-f", str(bad), check=False)
    assert done.returncode != 0
    assert expected in done.stderr, done.stderr


# ---- against the real API server ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[testenv.LocalCluster]:
    try:
        testenv.bin_dir()
    except RuntimeError as err:  # tests/testenv.py's "binaries missing" error
        if os.environ.get("CI") or os.environ.get("AGENTQ_TESTENV_BIN"):
            raise
        pytest.skip(str(err))
    c = testenv.LocalCluster(tmp_path_factory.mktemp("chart-cluster")).start()
    try:
        for crd in sorted((CHART / "crds").glob("*.yaml")):
            c.kubectl("apply", "-f", str(crd))
        c.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=30s")
        c.kubectl("create", "namespace", "agentq-system")
        yield c
    finally:
        c.stop()


@pytest.mark.cluster
def test_each_rendering_is_accepted_by_the_api_server(cluster, rendering, tmp_path):
    manifest = tmp_path / f"{rendering.name}.yaml"
    objects = [d for d in rendering.docs if d["kind"] != "CustomResourceDefinition"]
    manifest.write_text(yaml.safe_dump_all(objects))
    done = cluster.kubectl("apply", "--dry-run=server", "-n", "agentq-system", "-f", str(manifest), check=False)
    assert done.returncode == 0, f"{rendering.name}:\n{done.stdout}{done.stderr}"
    assert done.stdout.count("(server dry run)") == len(objects)
    # Helm 4 installs with server-side apply, which keys ports by (port, protocol): a port without its protocol
    # is refused there ("associative list with keys has an element that omits key field protocol").
    done = cluster.kubectl("apply", "--server-side", "--field-manager=helm", "--dry-run=server", "-n", "agentq-system",
                           "-f", str(manifest), check=False)
    assert done.returncode == 0, f"{rendering.name} (server-side apply):\n{done.stdout}{done.stderr}"
    assert done.stdout.count("(server dry run)") == len(objects)


@pytest.mark.cluster
def test_watch_namespaces_install_creates_them_and_keeps_them(cluster):
    """`helm install` (Helm's default flags) with watchNamespaces that do not exist yet, on the real API server:
    the release creates them, an upgrade keeps them in the release, an uninstall leaves them (with their rounds)."""
    kube = ["--kubeconfig", str(cluster.kubeconfig)]
    sets = ["--set", "operator.watchNamespaces={team-a,team-b}", "--set", "dashboard.enabled=false"]
    helm("install", "watch", str(CHART), "-n", "agentq-system", *sets, *kube)
    for ns in ("team-a", "team-b"):
        namespace = yaml.safe_load(cluster.kubectl("get", "namespace", ns, "-o", "yaml").stdout)
        assert namespace["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        role = yaml.safe_load(cluster.kubectl("get", "role", "watch-agentq-operator", "-n", ns, "-o", "yaml").stdout)
        assert {"kopfpeerings"} in [set(r["resources"]) for r in role["rules"]]
    helm("upgrade", "watch", str(CHART), "-n", "agentq-system", *sets, *kube)
    assert cluster.kubectl("get", "namespace", "team-a").returncode == 0
    helm("uninstall", "watch", "-n", "agentq-system", *kube)
    assert cluster.kubectl("get", "namespace", "team-b").returncode == 0  # kept: it holds rounds and artifacts
    assert cluster.kubectl("get", "role", "watch-agentq-operator", "-n", "team-b", check=False).returncode != 0


@pytest.mark.cluster
def test_kind_round_is_accepted_by_the_api_server(cluster):
    """The round scripts/e2e-kind.sh applies, applied the same way (kubectl apply -f) against the chart's CRD."""
    done = cluster.kubectl("apply", "--dry-run=server", "-n", "agentq-system", "-f",
                           str(ROOT / "images" / "mock-model" / "round.yaml"), check=False)
    assert done.returncode == 0 and "agentqround.agentq.dev/kind-smoke created (server dry run)" in done.stdout, \
        done.stdout + done.stderr


# ---- the dashboard ----------------------------------------------------------------------------------------


def test_dashboard_runs_with_flags_its_entry_point_accepts(rendering):
    from controller.dashboard import main as dashboard_main

    pod = rendering.one("Deployment", "-dashboard")["spec"]["template"]["spec"]
    _hardened(pod, f"{rendering.name}: dashboard")
    container = pod["containers"][0]
    assert container["command"] == ["python", "-m", "controller.dashboard"]
    assert container["image"] == rendering.one("Deployment", "-operator")["spec"]["template"]["spec"][
        "containers"][0]["image"]
    with pytest.raises(SystemExit) as done:  # the rendered args parse; --help stops before serving
        dashboard_main([*container["args"], "--help"])
    assert done.value.code == 0
    args = container["args"]
    store = args[args.index("--store") + 1]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    if rendering.name == "s3-values":
        assert store.startswith("s3://") and "artifacts" not in mounts
        assert container["envFrom"] == [{"secretRef": {"name": "agentq-s3"}}]
    else:
        assert mounts["artifacts"] == store
        claim = next(v for v in pod["volumes"] if v["name"] == "artifacts")["persistentVolumeClaim"]["claimName"]
        assert claim == "agentq-artifacts"
    token_file = args[args.index("--token-file") + 1]
    assert token_file.startswith(mounts["token"] + "/")
    secret = next(v for v in pod["volumes"] if v["name"] == "token")["secret"]["secretName"]
    if rendering.name == "dashboard-values":
        assert secret == "my-dashboard-token" and args[args.index("--namespace") + 1] == "rounds"
        secrets = [d["metadata"]["name"] for d in rendering.docs if d["kind"] == "Secret"]
        assert not [name for name in secrets if name.endswith("-dashboard-token")]  # the user's own is used
    else:
        assert "--namespace" not in args
        assert len(rendering.one("Secret", "-dashboard-token")["data"]["token"]) >= 40  # a random token, base64


def test_dashboard_rbac_is_read_only(rendering):
    role = rendering.one("ClusterRole", "-dashboard")
    for rule in role["rules"]:
        assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
    assert {r for rule in role["rules"] for r in rule["resources"]} == {"agentqrounds", "agentqcampaigns", "jobs"}
    binding = rendering.one("ClusterRoleBinding", "-dashboard")
    account = rendering.one("ServiceAccount", "-dashboard")
    assert binding["subjects"][0]["name"] == account["metadata"]["name"]
    pod = rendering.one("Deployment", "-dashboard")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_dashboard_service_ingress_and_helm_test(rendering):
    service = rendering.one("Service", "-dashboard")
    deployment = rendering.one("Deployment", "-dashboard")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    port = service["spec"]["ports"][0]["port"]
    ingresses = [d for d in rendering.docs if d["kind"] == "Ingress"]
    if rendering.name == "dashboard-values":
        (ingress,) = ingresses
        rule = ingress["spec"]["rules"][0]
        assert rule["host"] == "agentq.example.com" and ingress["spec"]["ingressClassName"] == "nginx"
        backend = rule["http"]["paths"][0]["backend"]["service"]
        assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    else:
        assert ingresses == []
    test = rendering.one("Pod", "-test-dashboard")
    assert test["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = test["spec"]["containers"][0]["args"][0]
    assert f'"http://{service["metadata"]["name"]}.agentq-system.svc:{port}"' in script
    env = test["spec"]["containers"][0]["env"][0]
    secret = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "token")["secret"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": secret["secretName"], "key": "token"}


def test_dashboard_helm_test_script_passes_against_a_live_service_and_fails_without_the_token(tmp_path):
    """The hook's own Python, run against `agentq serve` on 127.0.0.1: it exits 0 with the token, 1 without."""
    import socket
    import time
    import urllib.request

    rendering = Rendering("defaults", helm("template", "agentq", str(CHART), "-n", "agentq-system").stdout)
    script = rendering.one("Pod", "-test-dashboard")["spec"]["containers"][0]["args"][0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    script = script.replace(script.split("base = ", 1)[1].split("\n", 1)[0], repr(url))
    (tmp_path / "store").mkdir()
    server = subprocess.Popen([sys.executable, "-m", "agentq.cli", "serve", "--store", str(tmp_path / "store"),
                               "--port", str(port)], env={**os.environ, "AGENTQ_SERVE_TOKEN": "t0ken"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        for token, code in (("t0ken", 0), ("wrong", 1)):
            done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                                  env={**os.environ, "AGENTQ_SERVE_TOKEN": token})
            assert done.returncode == code, done.stdout + done.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_an_open_dashboard_answers_to_its_service_names_only(tmp_path):
    """Without a token the dashboard checks Host (DNS rebinding): the chart names the Service's DNS names and the
    ingress host, so the helm test, kubectl port-forward and the ingress reach it and a rebound name does not."""
    from fastapi.testclient import TestClient

    from agentq.serve.app import create_app
    from agentq.serve.reader import StoreReader
    from agentq.store import FileStore

    out = helm("template", "agentq", str(CHART), "-n", "agentq-system", "--set", "dashboard.auth.enabled=false",
               "--set", "dashboard.ingress.enabled=true", "--set", "dashboard.ingress.host=agentq.example.com").stdout
    rendering = Rendering("open", out)
    args = rendering.one("Deployment", "-dashboard")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--token-file" not in args
    allowed = [args[i + 1] for i, a in enumerate(args) if a == "--allowed-host"]
    assert "agentq-dashboard.agentq-system.svc" in allowed and "agentq.example.com" in allowed
    script = rendering.one("Pod", "-test-dashboard")["spec"]["containers"][0]["args"][0]
    app = create_app(StoreReader(FileStore(tmp_path)), allowed_hosts=allowed)  # an empty store will do
    for base, status in (("http://agentq-dashboard.agentq-system.svc:8265", 200), ("http://localhost:8265", 200),
                         ("http://agentq.example.com", 200), ("http://rebound.example.net", 403)):
        assert TestClient(app, base_url=base).get("/api/rounds").status_code == status, base
    assert "http://agentq-dashboard.agentq-system.svc:8265" in script
