"""SWE-bench for clusters: the Lite loader, repo tasks from its rows, and the pure Job/ConfigMap builders
(checked against Kubernetes' schema with a fake instance image; the pod's run script is executed for real
on a local git repository standing in for /testbed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest

from agentq.config import ConfigError
from agentq.tasks.swebench import SwebenchError, load_instances, to_repo_task
from controller import swebench

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "swe-bench-lite" / "swe-bench-lite.json"
PATCH = "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1 +1 @@\n-X = 1\n+X = 2\n"


def row(**fields) -> dict:
    base = {"repo": "acme/calc", "instance_id": "acme__calc-1", "base_commit": "a" * 40, "patch": PATCH,
            "test_patch": PATCH.replace("calc.py", "tests/test_calc.py"), "problem_statement": "X is wrong",
            "hints_text": "", "created_at": "2024-01-01T00:00:00Z", "version": "1.0",
            "FAIL_TO_PASS": json.dumps(["tests/test_calc.py::test_x"]), "PASS_TO_PASS": "[]",
            "environment_setup_commit": "b" * 40}
    return {**base, **fields}


V5 = {"image": "registry.invalid/sweb.eval.x86_64.acme_1776_calc-1:latest", "log_parser": "parse_log_pytest",
      "eval_type": "pytest", "eval_script": "#!/bin/bash\ncd /testbed\necho '>>>>> Start Test Output'\n"
                                           "python -c 'import calc; print(calc.X)'\necho '>>>>> End Test Output'\n"}


@pytest.mark.skipif(not DATA.exists(), reason="needs ../shared/data/swe-bench-lite")
def test_the_lite_file_loads_and_becomes_repo_tasks():
    rows = load_instances(DATA)
    assert len(rows) == 300 and len({r["instance_id"] for r in rows}) == 300
    tasks = [to_repo_task(r) for r in rows]
    django = next(t for t in tasks if t.task_id == "django__django-15202")
    assert django.repo.git_url == "https://github.com/django/django.git" and django.bug_patch == ""
    assert django.metadata["gold_files"] == ["django/core/validators.py"] and django.fail_to_pass
    assert sum(t.group == "django/django" for t in tasks) == 114


@pytest.mark.parametrize(("rows", "message"), [
    ([{k: v for k, v in row().items() if k != "patch"}], "row 0 (acme__calc-1): missing field(s) patch"),
    ([row(FAIL_TO_PASS="[not json")], "acme__calc-1: field FAIL_TO_PASS: expected a JSON-encoded list"),
    ([row(), row()], "acme__calc-1: duplicate instance_id"),
])
def test_bad_rows_are_named(tmp_path, rows, message):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(SwebenchError, match=re.escape(message)):
        load_instances(path)


def test_job_and_configmap_for_a_v5_row_are_valid_kubernetes():
    instance = {**load_row(), **V5}
    job = swebench.job(instance, PATCH, "agentq", "agentq-controller:0.1.0")
    cm = swebench.configmap(instance, PATCH, job["metadata"]["name"], "agentq")
    for doc in (job, cm):
        kubernetes_validate.validate(doc, "1.33", strict=True)
    pod = job["spec"]["template"]["spec"]
    assert [c["image"] for c in pod["initContainers"]] == [V5["image"]]
    assert pod["containers"][0]["command"][:4] == ["python", "-m", "controller.swebench", "grade"]
    assert pod["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"] and len(job["metadata"]["name"]) <= 63
    assert cm["data"]["patch.diff"] == PATCH and json.loads(cm["data"]["instance.json"])["image"] == V5["image"]
    other = swebench.job(instance, PATCH.replace("X = 2", "X = 3"), "agentq", "g")
    assert other["metadata"]["name"] != job["metadata"]["name"]  # one Job per candidate patch


def test_a_lite_row_without_image_or_eval_script_is_refused():
    with pytest.raises(ConfigError, match="acme__calc-1: missing image, eval_script, log_parser, eval_type"):
        swebench.job(load_row(), PATCH, "agentq", "g")


def load_row() -> dict:
    return {**row(), "FAIL_TO_PASS": ["tests/test_calc.py::test_x"], "PASS_TO_PASS": []}


@pytest.mark.parametrize(("patch", "marker", "value"), [
    (PATCH, swebench.APPLY_PATCH_PASS, "2"),
    (PATCH.replace("-X = 1", "-X = 9"), swebench.APPLY_PATCH_FAIL, None),
])
def test_the_run_script_applies_the_patch_and_logs_with_swebench_markers(tmp_path, patch, marker, value):
    testbed, agentq, results = tmp_path / "testbed", tmp_path / "agentq", tmp_path / "results"
    for d in (testbed, agentq, results):
        d.mkdir()
    (testbed / "calc.py").write_text("X = 1\n")
    subprocess.run(["git", "init", "-q"], cwd=testbed, check=True)
    (agentq / "patch.diff").write_text(patch)
    (agentq / "eval.sh").write_text(V5["eval_script"].replace("/testbed", str(testbed))
                                    .replace("python ", f"{sys.executable} "))
    script = (swebench.RUN_SCRIPT.replace("/testbed", str(testbed)).replace(swebench.PATCH_DIR, str(agentq))
              .replace(swebench.RESULTS_DIR, str(results)))
    subprocess.run(["bash", "-c", script], check=True, env={"PATH": "/usr/bin:/bin", "AGENTQ_EVAL_TIMEOUT": "30"})
    log = (results / "test_output.txt").read_text().splitlines()
    assert log[0] == marker
    if value:
        assert log[1:4] == [">>>>> Start Test Output", value, ">>>>> End Test Output"]
        assert log[-1] == "agentq: eval script exit 0"


def test_grading_uses_swebench(tmp_path):
    """Runs only where `swebench` is installed (cluster grader images); it is not pinned here (see README)."""
    pytest.importorskip("swebench.harness.grading")
    log = tmp_path / "test_output.txt"
    log.write_text(f"{swebench.APPLY_PATCH_PASS}\n>>>>> Start Test Output\nPASSED tests/test_calc.py::test_x\n"
                   ">>>>> End Test Output\n")
    report = swebench.grade({**load_row(), **V5}, str(log), PATCH)
    assert report["resolved"] is True and report["patch_successfully_applied"] is True
    log.write_text(f"{swebench.APPLY_PATCH_PASS}\n>>>>> Start Test Output\nFAILED tests/test_calc.py::test_x\n"
                   ">>>>> End Test Output\n")
    assert swebench.grade({**load_row(), **V5}, str(log), PATCH)["resolved"] is False
