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
      "eval_type": "pass_and_fail", "eval_script": "#!/bin/bash\ncd /testbed\necho '>>>>> Start Test Output'\n"
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
    ("", swebench.APPLY_PATCH_PASS, "1"),  # nothing to apply: the instance as it is (validation's buggy run)
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


SWEBENCH_DIR = Path(sys.prefix) / "swebench"  # `make setup`: images/swebench-grader/requirements.txt, --no-deps


@pytest.fixture
def swebench_grading() -> None:
    """swebench's grading code as the grader image has it: `make setup` installs the image's pins (no
    dependencies) into .venv/swebench, outside the main lock. Missing under `make test` or in CI is a failure."""
    import importlib.util
    import os

    if SWEBENCH_DIR.is_dir() and str(SWEBENCH_DIR) not in sys.path:
        sys.path.append(str(SWEBENCH_DIR))
    if importlib.util.find_spec("swebench") is None:
        if os.environ.get("CI") or os.environ.get("AGENTQ_TESTENV_BIN"):
            pytest.fail(f"swebench is not installed in {SWEBENCH_DIR} (make setup installs it)")
        pytest.skip(f"swebench is not installed in {SWEBENCH_DIR}: run make setup")


def test_grading_uses_swebench(tmp_path, swebench_grading):
    """swebench's own grading code (the grader image installs it without the harness's Docker/Modal parts; here
    from the same pins in .venv/swebench)."""
    log = tmp_path / "test_output.txt"
    log.write_text(f"{swebench.APPLY_PATCH_PASS}\n>>>>> Start Test Output\nPASSED tests/test_calc.py::test_x\n"
                   ">>>>> End Test Output\n")
    report = swebench.grade({**load_row(), **V5}, str(log), PATCH)
    assert report["resolved"] is True and report["patch_successfully_applied"] is True
    verdict = swebench.verdict({**load_row(), **V5}, report)
    assert (verdict["status"], verdict["f2p_passed"], verdict["f2p_total"]) == ("passed", 1, 1)
    log.write_text(f"{swebench.APPLY_PATCH_PASS}\n>>>>> Start Test Output\nFAILED tests/test_calc.py::test_x\n"
                   ">>>>> End Test Output\n")
    assert swebench.grade({**load_row(), **V5}, str(log), PATCH)["resolved"] is False
    log.write_text(f"{swebench.APPLY_PATCH_FAIL}\n")
    failed = swebench.verdict({**load_row(), **V5}, swebench.grade({**load_row(), **V5}, str(log), PATCH))
    assert (failed["status"], failed["patch_status"]) == ("error", "failed")
    assert not [m for m in sys.modules if m.split(".")[0] in ("docker", "modal")]  # the harness's other parts
    # The script a Job runs is the one swebench's harness runs: it records the test command's exit status, and
    # grading refuses a log whose tests "passed" under a failing exit status (e.g. a conftest printing PASSED).
    script = swebench.complete({**load_row(), **V5})["eval_script"]
    assert script.startswith("#!/bin/bash\nset -uxo pipefail\n") and ">>>>> Test Exit Code" in script
    log.write_text(f"{swebench.APPLY_PATCH_PASS}\n>>>>> Start Test Output\nPASSED tests/test_calc.py::test_x\n"
                   ">>>>> End Test Output\n>>>>> Test Exit Code: 1\n")
    assert swebench.grade({**load_row(), **V5}, str(log), PATCH)["resolved"] is False


def test_instance_images_follow_swebench_naming_or_a_template():
    assert swebench.image_name("django__django-15202") == "swebench/sweb.eval.x86_64.django_1776_django-15202:latest"
    assert swebench.image_name("acme__calc-1", "localhost/sweb.{id}:v1") == "localhost/sweb.acme_1776_calc-1:v1"
    completed = swebench.complete({**load_row(), **V5, "image": ""}, "local/{instance_id}:1")
    assert completed["image"] == "local/acme__calc-1:1"


def test_a_task_gives_back_the_row_it_was_made_from():
    from agentq.tasks.swebench import instance_row

    instance = {**load_row(), **V5}
    task = to_repo_task(instance).model_dump(exclude_none=True)
    again = instance_row(task)
    for key in ("repo", "instance_id", "base_commit", "patch", "test_patch", "version", "FAIL_TO_PASS",
                "PASS_TO_PASS", "environment_setup_commit", *V5):
        assert again[key] == instance[key], key


def api_server(tmp_path: Path):
    """A real API server (tests/testenv.py), started; skipped only outside CI and `make test` when missing."""
    import testenv

    testenv.require()
    return testenv.LocalCluster(tmp_path / "cluster").start()


REPORT = {"patch_is_None": False, "patch_exists": True, "patch_successfully_applied": True, "resolved": True,
          "tests_status": {"FAIL_TO_PASS": {"success": ["tests/test_calc.py::test_x"], "failure": []},
                           "PASS_TO_PASS": {"success": [], "failure": []}}}


@pytest.mark.cluster
def test_evaluation_runs_a_patch_as_a_job_through_the_swebench_service(tmp_path, monkeypatch):
    """agentq's RemoteExecutor -> `controller.swebench serve` -> a Job (and its ConfigMap, owned by it) in a real
    API server -> the grader's report from the pod's termination message -> a RepoVerdict; the kubelet is played
    here (tests/testenv.py). A second request for the same patch reads the finished Job back; an instance image
    the cluster cannot pull fails the run at once."""
    import threading

    import testenv
    from kubernetes import client

    from agentq.sandbox import RemoteExecutor

    cluster = api_server(tmp_path)
    server = None
    try:
        api = cluster.api()
        core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
        core.create_namespace({"metadata": {"name": "swe"}})
        runner = swebench.JobRunner(api, "swe", "grader:1", poll_s=0.05)
        server = swebench.SwebenchServer(("127.0.0.1", 0), runner, token="t0k3n")
        threading.Thread(target=server.serve_forever, daemon=True).start()
        task = to_repo_task({**load_row(), **V5}).model_dump(exclude_none=True)

        def kubelet(patch: str, **finish) -> None:
            name = swebench.resource_name("acme__calc-1", patch)
            for _ in range(400):
                if batch.list_namespaced_job("swe").items:
                    break
                threading.Event().wait(0.05)
            testenv.finish_job(api, "swe", name, **finish)

        played = threading.Thread(target=kubelet, args=(PATCH,),
                                  kwargs={"succeeded": True, "message": json.dumps(REPORT)})
        played.start()
        monkeypatch.setenv("AGENTQ_SANDBOX_TOKEN", "t0k3n")
        url = f"http://127.0.0.1:{server.server_address[1]}"
        [verdict] = RemoteExecutor(url).run_task(task, [PATCH])
        played.join()
        assert verdict.resolved and verdict.reward == 1.0 and verdict.f2p_passed == 1, verdict
        name = swebench.resource_name("acme__calc-1", PATCH)
        job = batch.read_namespaced_job(name, "swe")
        assert job.spec.template.spec.init_containers[0].image == V5["image"]
        cm = core.read_namespaced_config_map(name, "swe")
        assert cm.data["patch.diff"] == PATCH and cm.metadata.owner_references[0].uid == job.metadata.uid
        assert RemoteExecutor(url).run_task(task, [PATCH])[0].resolved  # read back, not run again
        # fan-out: one request's patches are all Jobs before the runner waits for the first one
        two = [PATCH.replace("X = 2", "X = 3"), PATCH.replace("X = 2", "X = 4")]
        seen_at_once = []

        def kubelet_for_two() -> None:
            """Runs nothing until both Jobs exist; after 10 s it runs whatever exists (a runner that waits for
            each Job before making the next then finishes too, and the assertion below fails)."""
            names, done = [swebench.resource_name("acme__calc-1", p) for p in two], set()
            for step in range(600):
                live = {j.metadata.name for j in batch.list_namespaced_job("swe").items} & set(names)
                if live == set(names) and not done:
                    seen_at_once.append(True)
                for name in live - done if live == set(names) or step >= 200 else ():
                    testenv.finish_job(api, "swe", name, succeeded=True, message=json.dumps(REPORT))
                    done.add(name)
                if len(done) == len(names):
                    return
                threading.Event().wait(0.05)

        played = threading.Thread(target=kubelet_for_two)
        played.start()
        assert all(v.resolved for v in RemoteExecutor(url).run_task(task, two))
        played.join()
        assert seen_at_once == [True]
        # an instance image the cluster cannot pull
        other = PATCH.replace("X = 2", "X = 5")
        pending = threading.Thread(target=lambda: (
            [threading.Event().wait(0.05) for _ in range(40) if len(batch.list_namespaced_job("swe").items) < 2],
            testenv.job_pod(api, "swe", swebench.resource_name("acme__calc-1", other), {
                "phase": "Pending", "initContainerStatuses": [{
                    "name": "run", "image": V5["image"], "imageID": "", "ready": False, "restartCount": 0,
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}]})))
        pending.start()
        [failed] = RemoteExecutor(url).run_task(task, [other])
        pending.join()
        assert failed.status == "error" and "cannot be pulled (ImagePullBackOff)" in failed.message
        with pytest.raises(Exception, match="token"):
            RemoteExecutor(url, token="wrong").run_task(task, [PATCH])
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        cluster.stop()


def _mirror(tmp_path: Path) -> tuple[Path, str]:
    """A data folder whose git/ holds a bare mirror of acme/calc; returns it and the base commit."""
    work = tmp_path / "calc"
    work.mkdir()
    (work / "calc.py").write_text("X = 1\n\n\ndef double(y):\n    return y * X\n")
    env = {"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@b",
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "base"]):
        subprocess.run(["git", *cmd], cwd=work, check=True, env=env)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True).stdout.strip()
    data = tmp_path / "data"
    (data / "repos").mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", "--mirror", str(work), str(data / "git" / "acme__calc.git")], check=True)
    return data, commit


def test_a_swebench_task_reads_its_code_from_a_local_mirror_and_never_runs_here(tmp_path):
    """The Lite-task crash ('git sources need network'): the prompt is built from the mirror at the base commit;
    running the task's tests needs its instance image, and says so."""
    from agentq.repair.problem import RepoProblem
    from agentq.sandbox.repo import RepoExecutor, SdistStore
    from agentq.sandbox.runner import Runner
    from agentq.tasks.swebench import GitTrees

    data, commit = _mirror(tmp_path)
    task = to_repo_task({**load_row(), **V5, "base_commit": commit, "problem_statement": "double(2) is wrong"})
    store = SdistStore(data / "repos", RepoExecutor(tmp_path / "trees"), git=GitTrees(data / "git", tmp_path / "git"))
    problem = RepoProblem.build(task, Runner(repos=store), honest=True)
    assert "def double(y):" in problem.prompt([]).messages[-1]["content"]
    with pytest.raises(ValueError, match="runs only in its instance image"):
        problem.final(PATCH, Runner(repos=store))
    missing = to_repo_task({**load_row(), **V5, "repo": "acme/other"})
    with pytest.raises(ValueError, match="no local mirror at .*acme__other.git"):
        RepoProblem.build(missing, Runner(repos=store))


def test_validate_says_a_swebench_task_was_not_checked_rather_than_invalid(tmp_path, capsys):
    from agentq.cli import main as cli_main
    from agentq.tasks.schema import write_tasks

    data, commit = _mirror(tmp_path)
    path = tmp_path / "swe.jsonl"
    write_tasks(path, [to_repo_task({**load_row(), **V5, "base_commit": commit})])
    assert cli_main(["tasks", "validate", str(path), "--data-dir", str(data), "--cache", str(tmp_path / "c"),
                     "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == "0/0 tasks valid" and out[1].startswith("1 SWE-bench task(s) not checked: a SWE-bench")
    assert json.loads(out[-1])["not_checked"] == ["acme__calc-1"]


def test_validating_swebench_tasks_needs_no_local_repository_sandbox(tmp_path, capsys, monkeypatch):
    """The SWE-bench runner's pod validates through the service and has no bubblewrap: SWE-bench tasks alone
    must not build a local repository executor (the e2e scenario's validate printed nothing, having crashed)."""
    from agentq.cli import main as cli_main
    from agentq.sandbox import repo
    from agentq.tasks.schema import write_tasks

    def no_sandbox(*_, **__):
        raise AssertionError("a local repository sandbox was built for SWE-bench tasks")

    monkeypatch.setattr(repo, "RepoExecutor", no_sandbox)
    data, commit = _mirror(tmp_path)
    path = tmp_path / "swe.jsonl"
    write_tasks(path, [to_repo_task({**load_row(), **V5, "base_commit": commit})])
    assert cli_main(["tasks", "validate", str(path), "--data-dir", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["not_checked"] == ["acme__calc-1"]


BLOCKED = '''
import importlib.abc, json, sys
class Absent(importlib.abc.MetaPathFinder):
    """The grader image: swebench installed without dependencies, so these are not there."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("datasets", "dotenv", "tqdm", "docker", "modal"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, Absent())
sys.path.append(sys.argv[1])
from controller import swebench
row, log, patch = json.loads(sys.stdin.read())
print(json.dumps(swebench.grade(row, log, patch)["resolved"]))
'''


def test_grading_runs_without_the_harness_dependencies(tmp_path, swebench_grading):
    """As in the grader image, where datasets, python-dotenv and tqdm are not installed: make_test_spec's module
    imports them at the top, and grading must not need them (the e2e SWE-bench scenario failed on this)."""
    log = tmp_path / "test_output.txt"
    log.write_text(f"{swebench.APPLY_PATCH_PASS}\n>>>>> Start Test Output\nPASSED tests/test_calc.py::test_x\n"
                   ">>>>> End Test Output\n")
    done = subprocess.run([sys.executable, "-c", BLOCKED, str(SWEBENCH_DIR)], capture_output=True, text=True,
                          input=json.dumps([{**load_row(), **V5}, str(log), PATCH]), timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) is True
