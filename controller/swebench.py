"""SWE-bench on a cluster: one instance per pod, in its instance image, graded by the `swebench` package.

Pure builders (dict in, dict out) for a ConfigMap holding the candidate patch, the instance's evaluation script
and the instance row, and a Job whose pod runs two containers in order:

* `run` (an init container, the instance image, e.g. `swebench/sweb.eval.x86_64.django_1776_django-15202`):
  applies the patch in /testbed (`git apply`, then `patch --fuzz`; SWE-bench's own markers in the log say which,
  or that it failed), runs the evaluation script, and writes the log to a shared emptyDir;
* `grade` (an image with agentq and `swebench`): `python -m controller.swebench grade` reads the log and the row
  and prints SWE-bench's report (resolved, F2P/P2P results), computed by `swebench.harness.grading`, as one
  JSON line, also written to the termination log so the operator reads it from the pod status.

Only rows that carry `image`, `eval_script`, `log_parser` and `eval_type` (swebench v5 datasets) can run: the
Lite file's 12-field rows lack them, and a row without them is refused with the missing fields named.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from typing import Any

from agentq.config import ConfigError
from agentq.tasks.swebench import runnable

PATCH_DIR = "/agentq"
RESULTS_DIR = "/results"
LOG_FILE = f"{RESULTS_DIR}/test_output.txt"
INSTANCE_LABEL = "agentq.dev/swebench-instance"
# swebench.harness.constants: the markers its grader looks for in the log.
APPLY_PATCH_FAIL = ">>>>> Patch Apply Failed"
APPLY_PATCH_PASS = ">>>>> Applied Patch"
RUN_SCRIPT = f"""set -u
cd /testbed
if git apply --verbose --reject {PATCH_DIR}/patch.diff > {RESULTS_DIR}/apply.txt 2>&1 \\
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


def grade(instance: dict[str, Any], log_path: str, patch: str) -> dict[str, Any]:
    """SWE-bench's own report for one run (needs the `swebench` package, imported only here)."""
    from swebench.harness.grading import get_eval_report
    from swebench.harness.utils import make_test_spec

    spec = make_test_spec(instance)
    prediction = {"instance_id": instance["instance_id"], "model_name_or_path": "agentq", "model_patch": patch}
    return get_eval_report(spec, prediction, log_path, include_tests_status=True)[instance["instance_id"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.swebench")
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grade", help="grade one instance's log with swebench; print the report as JSON")
    g.add_argument("instance")
    g.add_argument("log")
    g.add_argument("--patch", required=True)
    args = parser.parse_args(argv)
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
