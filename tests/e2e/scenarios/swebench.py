"""A SWE-bench-shaped task end to end on the real cluster: an instance image built here (a small library at a
known commit in /testbed, its F2P/P2P tests, an evaluation script in swebench's format), the grader image
(images/swebench-grader: the controller image plus swebench without its heavy dependencies), and the runner
service (`python -m controller.swebench serve`) in a pod. One request with three candidate patches fans out into
three Jobs that run side by side; each applies its patch in the instance image, runs the evaluation script and is
graded by swebench's own grading code in the grader container; `agentq tasks validate --swebench-url` reports.
The gold patch resolves; a patch that fixes the F2P test but breaks a P2P test does not; nor does the empty patch.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from e2e import images
from e2e.context import Context, ScenarioFailed, parse_time
from e2e.scenarios import scenario

INSTANCE_ID = "acme__calc-1"
REPO_NAME = "acme/calc"
SERVICE = "agentq-swebench"
LABEL = "agentq.dev/e2e"
# SWE-bench's docker-safe instance name (`__` -> `_1776_`), under the local registry the images are imported as.
IMAGE_TEMPLATE = f"{images.REGISTRY}/sweb.eval.x86_64.{{id}}"
LIBRARY = '''"""A small statistics library: the SWE-bench-shaped instance of the e2e scenario."""


def mean(xs):
    return sum(xs) / len(xs)


def clamp(x, lo, hi):
    return max(lo, min(x, hi))
'''
TESTS = '''from calc import clamp, mean


def test_mean():
    assert mean([1, 2, 3]) == 2


def test_clamp():
    assert clamp(9, 0, 5) == 5
'''
NEW_TEST = '''

def test_mean_of_nothing_is_zero():
    assert mean([]) == 0.0
'''
FIXED = LIBRARY.replace("    return sum(xs) / len(xs)", "    return sum(xs) / len(xs) if xs else 0.0")
# Makes the F2P test pass and breaks a P2P test: graded as not resolved only if P2P results are read.
BREAKS_P2P = LIBRARY.replace("    return sum(xs) / len(xs)", "    return 0.0")
F2P = ["tests/test_calc.py::test_mean_of_nothing_is_zero"]
P2P = ["tests/test_calc.py::test_clamp", "tests/test_calc.py::test_mean"]
# The instance image: what SWE-bench's images hold for a Python repository (the repository at its base commit in
# /testbed, git, the test runner), from the local Debian base and Debian's packages.
DOCKERFILE = """ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update -q && apt-get install -y -q --no-install-recommends git patch python3-pytest \\
    && rm -rf /var/lib/apt/lists/*
COPY testbed /testbed
WORKDIR /testbed
"""
GIT_ENV = {"GIT_AUTHOR_NAME": "acme", "GIT_AUTHOR_EMAIL": "dev@acme.invalid", "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
           "GIT_COMMITTER_NAME": "acme", "GIT_COMMITTER_EMAIL": "dev@acme.invalid",
           "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1",
           "PATH": "/usr/bin:/bin", "HOME": "/tmp"}


def _git(tree: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=tree, env=GIT_ENV, check=True, capture_output=True, text=True).stdout


def _diff(tree: Path, rel: str, text: str) -> str:
    """The unified diff that turns `rel` into `text` (the tree is left as it was)."""
    (tree / rel).write_text(text)
    diff = _git(tree, "diff", "--no-color", "--", rel)
    _git(tree, "checkout", "-q", "--", rel)
    return diff


def testbed(root: Path) -> tuple[str, dict[str, str]]:
    """The library's repository at its base commit (fixed dates and authors: the same commit hash every time),
    and the patches: the test patch adding the F2P test, the gold fix, and two wrong candidates."""
    tree = root / "testbed"
    (tree / "calc").mkdir(parents=True)
    (tree / "tests").mkdir()
    (tree / "calc" / "__init__.py").write_text(LIBRARY)
    (tree / "tests" / "test_calc.py").write_text(TESTS)
    _git(tree, "init", "-q", "-b", "main")
    _git(tree, "add", "-A")
    _git(tree, "commit", "-q", "-m", "calc: mean and clamp")
    commit = _git(tree, "rev-parse", "HEAD").strip()
    patches = {"test_patch": _diff(tree, "tests/test_calc.py", TESTS + NEW_TEST),
               "gold": _diff(tree, "calc/__init__.py", FIXED),
               "breaks_p2p": _diff(tree, "calc/__init__.py", BREAKS_P2P)}
    return commit, patches


def eval_script(commit: str, test_patch: str) -> str:
    """The instance's evaluation script as SWE-bench writes one for a pytest repository (swebench's
    `make_eval_script_list`): reset the test files, apply the test patch, run the tests between the markers."""
    files = "tests/test_calc.py"
    return "\n".join([
        "#!/bin/bash", "set -uxo pipefail", "cd /testbed", "git config --global --add safe.directory /testbed",
        "git status", "git show", f"git -c core.fileMode=false diff {commit}", f"git checkout {commit} {files}",
        "git apply -v - <<'EOF_114329324912'", test_patch.rstrip("\n"), "EOF_114329324912",
        ": '>>>>> Start Test Output'", f"python3 -m pytest -rA {files}", ": '>>>>> End Test Output'",
        f"git checkout {commit} {files}", ""])


def instance_image(base: images.Built, context: Path) -> images.Built:
    """The instance image, built once per recipe (its tag hashes the recipe, the library and the base)."""
    recipe = hashlib.sha256(json.dumps([DOCKERFILE, LIBRARY, TESTS, base.ref]).encode()).hexdigest()[:12]
    ref = f"{IMAGE_TEMPLATE.format(id=INSTANCE_ID.replace('__', '_1776_'))}:{recipe}"
    if images.exists(ref):
        return images.Built("swebench-instance", ref, images.size_mb(ref), 0.0, True)
    (context / "Dockerfile").write_text(DOCKERFILE)
    start = time.monotonic()
    images.buildah("bud", "--layers", "--network", "host", "--runtime", "runc", "--build-arg",
                   f"BASE_IMAGE={base.ref}", "-f", str(context / "Dockerfile"), "-t", ref, str(context))
    return images.Built("swebench-instance", ref, images.size_mb(ref), round(time.monotonic() - start, 1), False)


def grader_image(controller: str, base: images.Built) -> images.Built:
    """images/swebench-grader on top of the controller image this run built."""
    spec = images.ImageSpec("swebench-grader", "images/swebench-grader/Dockerfile",
                            ("images/swebench-grader/requirements.txt", "images/requirements/controller.txt",
                             *images.PROJECT, "controller"), (("CONTROLLER_IMAGE", controller),))
    return images.build(spec, base)


def runner_manifests(namespace: str, grader: str, tag: str, token: str) -> list[dict[str, Any]]:
    """The runner service: a ServiceAccount allowed to run Jobs (and their ConfigMaps) and read their pods in
    this namespace, the `serve` Deployment on the grader image, its Service, and the token its clients use."""
    labels = {LABEL: "swebench", "app.kubernetes.io/name": SERVICE}
    meta = {"name": SERVICE, "namespace": namespace, "labels": labels}
    rules = [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch"]},
             {"apiGroups": ["batch"], "resources": ["jobs/status"], "verbs": ["get"]},
             {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get"]},
             {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]
    serve = ["python", "-m", "controller.swebench", "serve", "--namespace", namespace, "--grader-image", grader,
             "--image-template", f"{IMAGE_TEMPLATE}:{tag}", "--eval-timeout", "300", "--cpu", "100m",
             "--memory", "512Mi", "--host", "0.0.0.0", "--port", "8081"]
    container = {
        "name": "serve", "image": grader, "command": serve, "ports": [{"containerPort": 8081}],
        "env": [{"name": "AGENTQ_SANDBOX_TOKEN", "valueFrom": {"secretKeyRef": {"name": SERVICE, "key": "token"}}}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8081}, "periodSeconds": 2},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}}}
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "stringData": {"token": token}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SERVICE},
         "subjects": [{"kind": "ServiceAccount", "name": SERVICE, "namespace": namespace}]},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"serviceAccountName": SERVICE, "containers": [container]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta,
         "spec": {"selector": labels, "ports": [{"port": 8081, "targetPort": 8081}]}},
    ]


# Run in the runner's pod: the candidates through the Service, as evaluation sends them (one request, every patch),
# then `agentq tasks validate` (gold patch resolves, the instance as it is fails its F2P tests) for the report.
DRIVER = '''
import contextlib, io, json, sys, tempfile
from agentq.cli import main
from agentq.sandbox.client import RemoteExecutor

task, patches, url = json.loads(sys.stdin.read())
verdicts = RemoteExecutor(url).run_task(task, list(patches.values()))
out = {name: v.model_dump(mode="json") for name, v in zip(patches, verdicts)}
work = tempfile.mkdtemp()
with open(f"{work}/swe.jsonl", "w") as fh:
    fh.write(json.dumps(task) + "\\n")
report = io.StringIO()
with contextlib.redirect_stdout(report):
    code = main(["tasks", "validate", f"{work}/swe.jsonl", "--swebench-url", url, "--data-dir", work, "--cache",
                 f"{work}/cache", "--json"])
print(json.dumps({"verdicts": out, "validate_exit": code, "validate": report.getvalue().strip().splitlines()}))
'''


@scenario("swebench", order=80)
def swebench_end_to_end(ctx: Context) -> dict:
    """A SWE-bench-shaped instance graded by swebench in Jobs: the gold patch resolves, wrong patches do not."""
    from agentq.tasks.swebench import to_repo_task

    t = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="agentq-swebench-") as tmp:
        commit, patches = testbed(Path(tmp))
        base = images.base_image()
        instance = instance_image(base, Path(tmp))
    grader = grader_image(ctx.images["controller"], base)
    import_s = images.load(ctx.cluster, [instance, grader])
    built = {b.name: {"ref": b.ref, "size_mb": b.size_mb, "build_s": b.build_s, "cached": b.cached}
             for b in (instance, grader)}
    images_s = round(time.monotonic() - t, 1)
    row = {"repo": REPO_NAME, "instance_id": INSTANCE_ID, "base_commit": commit, "patch": patches["gold"],
           "test_patch": patches["test_patch"], "problem_statement": "calc.mean([]) raises ZeroDivisionError; "
           "the mean of no numbers should be 0.0", "hints_text": "", "created_at": "2024-01-01T00:00:00Z",
           "version": "1.0", "FAIL_TO_PASS": F2P, "PASS_TO_PASS": P2P, "environment_setup_commit": commit,
           "eval_script": eval_script(commit, patches["test_patch"]), "log_parser": "parse_log_pytest",
           "eval_type": "pass_and_fail"}  # no `image`: the runner's --image-template names it, as for official ones
    task = to_repo_task(row).model_dump(exclude_none=True)
    candidates = {"gold": patches["gold"], "breaks_p2p": patches["breaks_p2p"], "empty": ""}
    selector = f"{LABEL}=swebench"
    try:
        for manifest in runner_manifests(ctx.namespace, grader.ref, instance.ref.rsplit(":", 1)[1],
                                         secrets.token_hex(16)):
            ctx.apply(manifest)
        ctx.wait_rollout(SERVICE, timeout=600)
        pod = ctx.pods(selector)[0]["metadata"]["name"]
        url = f"http://{SERVICE}.{ctx.namespace}.svc.cluster.local:8081"
        t = time.monotonic()
        out = ctx.kubectl("exec", "-i", "-n", ctx.namespace, pod, "-c", "serve", "--", "python", "-c", DRIVER,
                          stdin=json.dumps([task, candidates, url]), timeout=900)
        run_s = round(time.monotonic() - t, 1)
        seen = json.loads(out.strip().splitlines()[-1])
        jobs = ctx.jobs(f"agentq.dev/swebench-instance={INSTANCE_ID}")
        graded = {name: ctx.kubectl("logs", "-n", ctx.namespace, f"job/{job['metadata']['name']}", "-c", "grade")
                  for name, job in _by_candidate(jobs, candidates).items()}
    finally:
        ctx.kubectl("delete", "deployment,service,secret,serviceaccount,role,rolebinding", "-n", ctx.namespace,
                    "-l", selector, "--wait=false", check=False)
        ctx.kubectl("delete", "jobs,configmaps", "-n", ctx.namespace, "-l",
                    f"agentq.dev/swebench-instance={INSTANCE_ID}", "--wait=false", check=False)
    verdicts = seen["verdicts"]
    gold, wrong, empty = verdicts["gold"], verdicts["breaks_p2p"], verdicts["empty"]
    if not (gold["status"] == "passed" and gold["f2p_passed"] == 1 and gold["p2p_passed"] == len(P2P)):
        raise ScenarioFailed(f"the gold patch was not graded resolved: {gold}")
    if wrong["status"] == "passed" or (wrong["f2p_passed"], wrong["p2p_passed"]) != (1, len(P2P) - 1):
        raise ScenarioFailed(f"the patch breaking a P2P test was not graded F2P 1/1, P2P {len(P2P) - 1}/{len(P2P)}: "
                             f"{wrong}")
    if empty["status"] == "passed" or empty["f2p_passed"] != 0 or empty["patch_status"] != "applied":
        raise ScenarioFailed(f"the instance as it is was not graded F2P 0/1: {empty}")
    reports = {name: json.loads(log.strip().splitlines()[-1]) for name, log in graded.items()}
    if {n: r["resolved"] for n, r in reports.items()} != {"gold": True, "breaks_p2p": False, "empty": False}:
        raise ScenarioFailed(f"the grader containers' swebench reports disagree: {reports}")
    if seen["validate_exit"] != 0 or seen["validate"][0] != "1/1 tasks valid":
        raise ScenarioFailed(f"agentq tasks validate (exit {seen['validate_exit']}) did not find the task valid: "
                             f"{seen['validate']}")
    side_by_side = _overlap(jobs)
    if not side_by_side:
        raise ScenarioFailed("the three candidates' Jobs did not run side by side (no fan-out)")
    return {"instance": INSTANCE_ID, "base_commit": commit, "images": built, "images_s": images_s,
            "import_s": import_s, "candidates_and_validate_s": run_s, "jobs_overlapped": side_by_side,
            "verdicts": {n: {k: v[k] for k in ("status", "patch_status", "f2p_passed", "f2p_total", "p2p_passed",
                                                 "p2p_total")} for n, v in verdicts.items()},
            "swebench_reports": {n: {"resolved": r["resolved"], "tests_status": r["tests_status"]}
                                 for n, r in reports.items()},
            "validate": json.loads(seen["validate"][-1]), "load_avg": [round(x, 2) for x in os.getloadavg()]}


def _by_candidate(jobs: list[dict], candidates: dict[str, str]) -> dict[str, dict]:
    """The Job each candidate patch ran in (its name hashes the instance and the patch)."""
    from controller.swebench import resource_name

    names = {resource_name(INSTANCE_ID, patch): c for c, patch in candidates.items()}
    return {names[j["metadata"]["name"]]: j for j in jobs if j["metadata"]["name"] in names}


def _overlap(jobs: list[dict]) -> bool:
    """Whether every Job started before any finished: they ran at once, not one after another."""
    spans = [(parse_time(j["status"]["startTime"]), parse_time(j["status"]["completionTime"]))
             for j in jobs if (j.get("status") or {}).get("completionTime")]
    return len(spans) >= 3 and max(s for s, _ in spans) < min(e for _, e in spans)
