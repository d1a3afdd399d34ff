"""SWE-bench on a cluster: one instance per pod, in its instance image, graded by the `swebench` package.

Pure builders (dict in, dict out) for a ConfigMap holding the candidate patch, the instance's evaluation script
and the instance row, and a Job whose pod runs two containers in order:

* `run` (an init container, the instance image, e.g. `swebench/sweb.eval.x86_64.django_1776_django-15202`):
  applies the patch in /testbed (`git apply`, then `patch --fuzz`; SWE-bench's own markers in the log say which,
  or that it failed), runs the evaluation script, and writes the log to a shared emptyDir;
* `grade` (the grader image: agentq + `swebench`, images/swebench-grader): `python -m controller.swebench grade`
  reads the log and the row and prints SWE-bench's report (resolved, F2P/P2P results), computed by
  `swebench.harness.grading`, as one JSON line, also written to the termination log so it is read from the pod
  status.

A row needs `image`, `eval_script`, `log_parser` and `eval_type` (swebench v5 datasets carry them). The image
may instead come from `--image-template` (SWE-bench's official instance images by default,
`swebench/sweb.eval.x86_64.<id>:latest` with `__` written `_1776_`; any registry the cluster can pull, or a
local name); the other three from `swebench`'s own `make_test_spec` where the grader environment can import it.
A row that still lacks one is refused with the missing fields named.

`serve` is what evaluation talks to (`sandbox.swebenchUrl`; `agentq tasks validate --swebench-url`): an HTTP
service with the sandbox server's contract (`POST /run_repo {task, patches}` -> RepoVerdicts, `GET /healthz`,
bearer token from AGENTQ_SANDBOX_TOKEN) that runs each patch as one Job, waits for it, and turns the grader's
report into a verdict. A Job's name is a digest of the instance and the patch, so a patch already graded is
read back, not run again; an instance image the cluster cannot pull fails the run at once with its reason.

`swebench.harness`'s package `__init__` imports the harness's Docker, Modal and `datasets` parts; grading needs
none of them, so the grading module is imported without it (`_swebench`) and the grader image installs
`swebench` without those dependencies. `swebench.harness.utils` (where `make_test_spec` lives) imports
`datasets`, `dotenv` and `tqdm` at the top for its dataset loaders and progress bars, which the TestSpec code
never calls: where they are not installed (the grader image) they are stand-ins that refuse to be used, and
`load_dotenv` (which would read a `.env` from the working directory into the environment) does nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import re
import sys
import time
import types
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agentq.config import ConfigError
from agentq.tasks.swebench import instance_row, runnable

PATCH_DIR = "/agentq"
RESULTS_DIR = "/results"
LOG_FILE = f"{RESULTS_DIR}/test_output.txt"
INSTANCE_LABEL = "agentq.dev/swebench-instance"
IMAGE_TEMPLATE = "swebench/sweb.eval.x86_64.{id}:latest"
PULL_FAILURES = {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"}
# swebench.harness.constants: the markers its grader looks for in the log.
APPLY_PATCH_FAIL = ">>>>> Patch Apply Failed"
APPLY_PATCH_PASS = ">>>>> Applied Patch"
# An empty patch (validation's "the instance as it is": its F2P tests must fail) has nothing to apply and runs.
RUN_SCRIPT = f"""set -u
cd /testbed
if ! grep -q '[^[:space:]]' {PATCH_DIR}/patch.diff; then
  echo "{APPLY_PATCH_PASS}" > {LOG_FILE}
elif git apply --verbose --reject {PATCH_DIR}/patch.diff > {RESULTS_DIR}/apply.txt 2>&1 \\
   || patch --batch --fuzz=5 -p1 -i {PATCH_DIR}/patch.diff >> {RESULTS_DIR}/apply.txt 2>&1; then
  echo "{APPLY_PATCH_PASS}" > {LOG_FILE}
else
  echo "{APPLY_PATCH_FAIL}" > {LOG_FILE}
  exit 0
fi
timeout "$AGENTQ_EVAL_TIMEOUT" /bin/bash {PATCH_DIR}/eval.sh >> {LOG_FILE} 2>&1
echo "agentq: eval script exit $?" >> {LOG_FILE}
"""


def resource_name(instance_id: str, patch: str, prefix: str = "swe") -> str:
    """A DNS-1123 name from the instance id and the patch (one Job per candidate), at most 63 characters."""
    digest = hashlib.sha256(f"{instance_id}\0{patch}".encode()).hexdigest()[:10]
    slug = re.sub(r"[^a-z0-9-]+", "-", instance_id.lower()).strip("-")
    return f"{prefix}-{slug[: 63 - len(prefix) - 12].rstrip('-')}-{digest}"


def _check(instance: dict[str, Any]) -> None:
    missing = runnable(instance)
    if missing:
        raise ConfigError(f"swebench instance {instance.get('instance_id', '?')}: missing {', '.join(missing)}; "
                          "only rows that carry them (swebench v5 datasets) can run on a cluster")


def configmap(instance: dict[str, Any], patch: str, name: str, namespace: str) -> dict[str, Any]:
    _check(instance)
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {INSTANCE_LABEL: _label(instance)}},
        "data": {"patch.diff": patch if patch.endswith("\n") else patch + "\n",
                 "eval.sh": instance["eval_script"], "instance.json": json.dumps(instance, sort_keys=True)},
    }


def _label(instance: dict[str, Any]) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", instance["instance_id"])[:63].strip("-_.")


def job(instance: dict[str, Any], patch: str, namespace: str, grader_image: str, eval_timeout_s: int = 1800,
        memory: str = "8Gi", cpu: str = "2") -> dict[str, Any]:
    """The Job running `patch` against one instance; its ConfigMap is `configmap(...)` with the same name."""
    _check(instance)
    name = resource_name(instance["instance_id"], patch)
    volumes = [{"name": "agentq", "configMap": {"name": name}}, {"name": "results", "emptyDir": {}}]
    mounts = [{"name": "agentq", "mountPath": PATCH_DIR, "readOnly": True},
              {"name": "results", "mountPath": RESULTS_DIR}]
    resources = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}
    run = {"name": "run", "image": instance["image"], "command": ["/bin/bash", "-c", RUN_SCRIPT],
           "env": [{"name": "AGENTQ_EVAL_TIMEOUT", "value": str(eval_timeout_s)}],
           "volumeMounts": mounts, "resources": resources}
    grade = {"name": "grade", "image": grader_image,
             "command": ["python", "-m", "controller.swebench", "grade", f"{PATCH_DIR}/instance.json", LOG_FILE,
                         "--patch", f"{PATCH_DIR}/patch.diff"],
             "volumeMounts": mounts, "terminationMessagePolicy": "FallbackToLogsOnError",
             "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}}
    labels = {INSTANCE_LABEL: _label(instance), "app.kubernetes.io/managed-by": "agentq"}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0, "activeDeadlineSeconds": eval_timeout_s + 600, "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {"restartPolicy": "Never", "initContainers": [run], "containers": [grade],
                         "volumes": volumes, "automountServiceAccountToken": False,
                         "enableServiceLinks": False},
            },
        },
    }


def image_name(instance_id: str, template: str = IMAGE_TEMPLATE) -> str:
    """SWE-bench's instance image name (`django__django-15202` -> `...django_1776_django-15202...`)."""
    return template.format(id=instance_id.replace("__", "_1776_").lower(), instance_id=instance_id)


def _swebench(module: str) -> types.ModuleType:
    """A module of the swebench package, imported without `swebench.harness/__init__.py` (see the docstring)."""
    if "swebench.harness" not in sys.modules:
        spec = importlib.util.find_spec("swebench")
        if spec is None or spec.origin is None:
            raise ConfigError("the swebench package is not installed here; the grader image has it "
                              "(images/swebench-grader)")
        harness = types.ModuleType("swebench.harness")
        harness.__path__ = [str(Path(spec.origin).parent / "harness")]
        sys.modules["swebench.harness"] = harness
        for name, attrs in UNUSED_IMPORTS.items():
            try:  # utils imports these anyway where they are installed
                importlib.import_module(name)
            except ImportError:
                sys.modules[name] = _stand_in(name, attrs)
    return importlib.import_module(module)


# What `swebench.harness.utils` imports and grading never uses (see the docstring).
UNUSED_IMPORTS = {"datasets": ("Dataset", "load_dataset", "load_from_disk"), "dotenv": ("load_dotenv",),
                  "tqdm": ("tqdm",)}


def _stand_in(name: str, attrs: tuple[str, ...]) -> types.ModuleType:
    """A module whose names refuse to be called (but `load_dotenv`, which does nothing)."""
    module = types.ModuleType(name)

    def refuse(*_: Any, **__: Any) -> Any:
        raise ConfigError(f"{name} is not installed here: swebench's grading does not use it")

    for attr in attrs:
        setattr(module, attr, (lambda *_, **__: False) if attr == "load_dotenv" else refuse)
    return module


def complete(instance: dict[str, Any], template: str = IMAGE_TEMPLATE) -> dict[str, Any]:
    """The row with what a run needs: the image by the template when absent, and where swebench is importable
    (the grader image) the evaluation script as swebench's harness runs it (`make_test_spec(...).eval_script`:
    the row's script plus the line recording the test command's exit status, which grading cross-checks), and
    the log parser and evaluation type when absent."""
    row = {**instance, "image": instance.get("image") or image_name(instance["instance_id"], template)}
    try:
        spec = test_spec(row)
    except (ConfigError, ImportError, KeyError, ValueError) as err:
        if not runnable(row):
            return row
        raise ConfigError(f"swebench instance {row['instance_id']}: missing {', '.join(runnable(row))}, and "
                          f"swebench cannot make them here ({type(err).__name__}: {err})") from None
    made = {"log_parser": spec.log_parser, "eval_type": spec.eval_type}
    return {**row, **{k: v for k, v in made.items() if not row.get(k)}, "eval_script": spec.eval_script}


def test_spec(row: dict[str, Any]) -> Any:
    """swebench's TestSpec for a row (`swebench.harness.utils.make_test_spec`, what its own harness builds)."""
    return _swebench("swebench.harness.utils").make_test_spec(
        {**row, "FAIL_TO_PASS": json.dumps(row["FAIL_TO_PASS"]), "PASS_TO_PASS": json.dumps(row["PASS_TO_PASS"])})


def grade(instance: dict[str, Any], log_path: str, patch: str) -> dict[str, Any]:
    """SWE-bench's own report for one run: `swebench.harness.grading.get_eval_report` on the instance's TestSpec."""
    grading = _swebench("swebench.harness.grading")
    prediction = {"instance_id": instance["instance_id"], "model_name_or_path": "agentq", "model_patch": patch}
    return grading.get_eval_report(test_spec(instance), prediction, log_path,
                                   include_tests_status=True)[instance["instance_id"]]


def verdict(instance: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """The grader's report as a RepoVerdict (what evaluation and validation read), tests in F2P + P2P order."""
    from agentq.sandbox.repo import RepoVerdict
    from agentq.sandbox.verdict import TestResult

    status = report.get("tests_status", {})
    tests = []
    for key in ("FAIL_TO_PASS", "PASS_TO_PASS"):
        passed = set(status.get(key, {}).get("success", []))
        tests += [TestResult(name=t, passed=t in passed, message="" if t in passed else "failed or did not run")
                  for t in instance[key]]
    f2p = sum(t.passed for t in tests[: len(instance["FAIL_TO_PASS"])])
    applied = bool(report.get("patch_successfully_applied"))
    resolved = bool(report.get("resolved"))
    failing = [t.name for t in tests if not t.passed]
    message = "" if resolved else ("the patch did not apply in the instance image" if not applied else
                                   f"{len(failing)} test(s) fail: {', '.join(failing[:5])}")
    return RepoVerdict(status="passed" if resolved else "failed" if applied else "error", tests=tests,
                       message=message, patch_status="applied" if applied else "failed",
                       f2p_passed=f2p, f2p_total=len(instance["FAIL_TO_PASS"]),
                       p2p_passed=sum(t.passed for t in tests) - f2p, p2p_total=len(instance["PASS_TO_PASS"]),
                       expected_tests=len(tests)).model_dump(mode="json")


def failed_run(instance: dict[str, Any], message: str) -> dict[str, Any]:
    from agentq.sandbox.repo import RepoVerdict

    f2p, p2p = len(instance["FAIL_TO_PASS"]), len(instance["PASS_TO_PASS"])
    return RepoVerdict(status="error", message=message[:500], f2p_total=f2p, p2p_total=p2p,
                       expected_tests=f2p + p2p).model_dump(mode="json")


class JobRunner:
    """Runs patches against instances as Jobs in one namespace and reads back the grader's report."""

    def __init__(self, api: Any, namespace: str, grader_image: str, image_template: str = IMAGE_TEMPLATE,
                 eval_timeout_s: int = 1800, poll_s: float = 2.0, memory: str = "8Gi", cpu: str = "2") -> None:
        from kubernetes import client

        self.batch, self.core = client.BatchV1Api(api), client.CoreV1Api(api)
        self.namespace, self.grader_image, self.template = namespace, grader_image, image_template
        self.eval_timeout_s, self.poll_s, self.memory, self.cpu = eval_timeout_s, poll_s, memory, cpu

    def run(self, instance: dict[str, Any], patches: list[str]) -> list[dict[str, Any]]:
        """A verdict per patch. Every patch's Job is created first, so the cluster runs them side by side (the
        fan-out), then each is waited for."""
        try:
            row = complete(instance, self.template)
        except ConfigError as err:
            return [failed_run(instance, str(err)) for _ in patches]
        started = [self._submit(row, patch) for patch in patches]
        return [name if isinstance(name, dict) else self._wait(row, name) for name in started]

    def _submit(self, row: dict[str, Any], patch: str) -> str | dict[str, Any]:
        """The Job's name once it exists (created now, or by an earlier request for the same patch), else the
        failed verdict."""
        from kubernetes.client.exceptions import ApiException

        manifest = job(row, patch, self.namespace, self.grader_image, self.eval_timeout_s, self.memory, self.cpu)
        name = manifest["metadata"]["name"]
        try:
            created = self.batch.create_namespaced_job(self.namespace, manifest)
            owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": created.metadata.uid}
            cm = configmap(row, patch, name, self.namespace)
            cm["metadata"]["ownerReferences"] = [owner]  # deleting the Job (or its TTL) removes the ConfigMap
            self.core.create_namespaced_config_map(self.namespace, cm)
        except ApiException as err:
            if err.status != 409:  # 409: this patch already ran (or runs) for this instance: read it back
                return failed_run(row, f"the cluster refused the Job {name}: {err.reason}")
        return name

    def _wait(self, row: dict[str, Any], name: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.eval_timeout_s + 600
        while time.monotonic() < deadline:
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"job-name={name}").items
            for pod in pods:
                for status in [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]:
                    waiting = status.state.waiting if status.state else None
                    if waiting is not None and waiting.reason in PULL_FAILURES:
                        image = status.image
                        return failed_run(row, f"image {image} cannot be pulled ({waiting.reason}): build it or "
                                               "set --image-template to images the cluster has")
                    done = status.state.terminated if status.state else None
                    if status.name == "grade" and done is not None:
                        try:
                            return verdict(row, json.loads(done.message or ""))
                        except ValueError:
                            return failed_run(row, f"the grader of {name} exited {done.exit_code} without a report: "
                                                   f"{(done.message or '').strip()[-300:]}")
            state = self.batch.read_namespaced_job_status(name, self.namespace).status
            if state.failed:
                return failed_run(row, f"Job {name} failed: {self._reason(pods)}")
            time.sleep(self.poll_s)
        return failed_run(row, f"Job {name} did not finish within {self.eval_timeout_s + 600} s")

    @staticmethod
    def _reason(pods: list[Any]) -> str:
        for pod in pods:
            for status in [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]:
                done = status.state.terminated if status.state else None
                if done is not None and done.exit_code:
                    return f"container {status.name} exited {done.exit_code} ({done.reason})"
        return "no container reported a reason"

    def run_task(self, task: dict[str, Any], patches: list[str]) -> list[dict[str, Any]]:
        return self.run(instance_row(task), patches)


class _Handler(BaseHTTPRequestHandler):
    server: SwebenchServer

    def log_message(self, *args: Any) -> None:  # requests are not logged one by one
        pass

    def _answer(self, code: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/healthz":
            self._answer(HTTPStatus.OK, {"ok": True, "workers": self.server.workers, "repos": True, "isolation": []})
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path}"})

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        token = self.server.token
        if token and self.headers.get("Authorization", "") != f"Bearer {token}":
            self._answer(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
            return
        if self.path != "/run_repo":
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= 8 << 20:
                raise ValueError(f"body of {length} bytes: expected 1 byte to 8 MiB of JSON")
            body = json.loads(self.rfile.read(length))
            task, patches = body.get("task"), body.get("patches")
            if not isinstance(task, dict) or not isinstance(patches, list) or not all(isinstance(p, str)
                                                                                      for p in patches):
                raise ValueError("expected {task: <repo task>, patches: [<diff>, ...]}")
            verdicts = self.server.runner.run_task(task, patches)
        except (ValueError, KeyError) as err:
            self._answer(HTTPStatus.BAD_REQUEST, {"error": f"{type(err).__name__}: {err}"})
            return
        self._answer(HTTPStatus.OK, {"verdicts": verdicts})


class SwebenchServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], runner: Any, token: str | None, workers: int = 4) -> None:
        super().__init__(address, _Handler)
        self.runner, self.token, self.workers = runner, token, workers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.swebench")
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grade", help="grade one instance's log with swebench; print the report as JSON")
    g.add_argument("instance")
    g.add_argument("log")
    g.add_argument("--patch", required=True)
    v = sub.add_parser("serve", help="run patches as Jobs for evaluation (the sandbox server's /run_repo contract)")
    v.add_argument("--namespace", required=True)
    v.add_argument("--grader-image", required=True, help="an image with agentq and swebench (images/swebench-grader)")
    v.add_argument("--image-template", default=IMAGE_TEMPLATE,
                   help="instance images for rows without `image`; {id} is SWE-bench's docker-safe instance id")
    v.add_argument("--eval-timeout", type=int, default=1800, help="seconds for one instance's evaluation script")
    v.add_argument("--cpu", default="2", help="CPU an instance's run container requests")
    v.add_argument("--memory", default="8Gi", help="memory an instance's run container requests and is limited to")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8081)
    v.add_argument("--workers", type=int, default=4, help="Jobs a client may keep in flight (what /healthz says)")
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        from agentq.sandbox.client import TOKEN_ENV
        from controller.kube import load_config

        token = os.environ.get(TOKEN_ENV)
        if not token and args.host not in ("127.0.0.1", "localhost"):
            parser.error(f"serving on {args.host} needs a token ({TOKEN_ENV}): whoever reaches the port runs Jobs")
        runner = JobRunner(load_config(), args.namespace, args.grader_image, args.image_template, args.eval_timeout,
                           memory=args.memory, cpu=args.cpu)
        server = SwebenchServer((args.host, args.port), runner, token, args.workers)
        print(f"swebench runner on http://{args.host}:{server.server_address[1]} (namespace {args.namespace})",
              flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
        return 0
    with open(args.instance) as fh:
        instance = json.load(fh)
    with open(args.patch) as fh:
        patch = fh.read()
    report = grade(instance, args.log, patch)
    line = json.dumps({"instance_id": instance["instance_id"], **report}, sort_keys=True)
    print(line)
    try:
        with open("/dev/termination-log", "w") as fh:
            fh.write(line[-4000:])
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
