"""Repository runs through a remote sandbox: a real `agentq sandbox serve --repo-data-dir` process gives the same
verdicts as the local repository executor; a step whose sandbox is remote sends its repo runs there (none runs
locally); an unreachable sandbox, or one that serves no repository runs, is one clear line."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agentq.cli import main
from agentq.io import read_jsonl
from agentq.sandbox import LocalExecutor, RemoteExecutor, SandboxUnavailable
from agentq.sandbox.repo import RepoExecutor, SdistStore
from agentq.sandbox.runner import RepoJob, Runner
from agentq.sandbox.server import SandboxServer
from agentq.tasks.schema import RepoTask, write_tasks
from tests.test_repo_tasks import EDIT_TESTS, FIX, minilib_data, repo_record

# resolves; changes nothing; edits the tests (which the executor restores); does not apply
PATCHES = [FIX, "", EDIT_TESTS, FIX.replace("if x > lo:", "if x >= lo:")]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again: free until someone binds it


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return minilib_data(tmp_path_factory)


@pytest.fixture(scope="module")
def served(data, tmp_path_factory):
    """`agentq sandbox serve --repo-data-dir` as its own process, with its own tree cache."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentq.cli", "sandbox", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "2", "--repo-data-dir", str(data / "repos"),
         "--repo-cache", str(tmp_path_factory.mktemp("server-trees"))],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert "serving on http://127.0.0.1" in proc.stdout.readline()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0


@pytest.fixture(scope="module")
def task() -> RepoTask:
    return RepoTask.model_validate(repo_record())


def _outcome(verdict) -> tuple:
    return (verdict.status, verdict.patch_status, verdict.reward, verdict.message,
            [(t.name, t.passed) for t in verdict.tests])


def test_repo_verdicts_through_the_server_equal_local_ones(served, data, task, tmp_path):
    store = SdistStore(data / "repos", RepoExecutor(tmp_path / "trees"))
    jobs = [RepoJob(task, patch) for patch in PATCHES]
    local = Runner(None, store).run_many(jobs)
    remote = Runner(None, store, workers=2, remote_repos=RemoteExecutor(served)).run_many(jobs)
    assert [_outcome(v) for v in remote] == [_outcome(v) for v in local]
    assert local[0].resolved and local[0].reward == 1.0 and len(local[0].tests) == 4
    assert not any(v.passed for v in local[1:]) and local[3].patch_status == "failed"
    assert RemoteExecutor(served).health()["repos"] is True


def _round(tmp: Path, data: Path, task: RepoTask, url: str, name: str) -> Path:
    write_tasks(tmp / "tasks.jsonl", [task])
    path = tmp / f"{name}.yaml"
    path.write_text(
        "apiVersion: agentq.dev/v1alpha1\nkind: AgentQRound\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        "  model: {base: tiny, backend: scripted, scripted: {pReference: 0.5, pBuggy: 0.0, pMutant: 0.5, "
        "pGarbage: 0.0}}\n"
        f"  dataset: {{train: tasks.jsonl, test: tasks.jsonl, repoData: {data}}}\n"
        "  collect: {shards: 1, k: 2, rollouts: 2, depth: 2, critic: self, treesInFlight: 1}\n"
        f"  sandbox: {{url: '{url}'}}\n"
        "  store: {path: store}\n"
    )
    return path


def _collect(path: Path) -> int:
    return main(["collect", "--round", str(path), "--shard", "0", "--num-shards", "1"])


def test_a_round_with_a_remote_sandbox_runs_its_repo_patches_there(served, data, task, tmp_path, monkeypatch):
    def ran_here(*args, **kwargs):
        raise AssertionError("a repo run ran in the step's process, not in the remote sandbox")

    monkeypatch.setattr(RepoExecutor, "run", ran_here)
    assert _collect(_round(tmp_path, data, task, served, "remote")) == 0
    [tree] = read_jsonl(tmp_path / "store" / "rounds" / "remote" / "trajectories" / "shard-0-of-1.jsonl")
    attempts = tree["nodes"][1:]
    assert tree["nodes"][0]["verdict"]["f2p_total"] == 3  # the root: the buggy tree's run, on the server
    assert attempts and all(n["verdict"] for n in attempts)
    assert {n["category"] for n in attempts} <= {"resolved", "failing tests still fail", "wrong file"}
    assert tree["stats"]["executions"] == 1 + len(attempts)


def test_an_unreachable_sandbox_is_one_clear_line(data, task, tmp_path, capsys):
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens here
    assert _collect(_round(tmp_path, data, task, url, "gone")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"agentq: sandbox at {url} unreachable after 5 tries:") and "\n" not in err, err


def test_a_sandbox_without_repo_data_is_one_clear_line(data, task, tmp_path, capsys):
    with LocalExecutor(workers=1) as executor:
        httpd = SandboxServer(("127.0.0.1", 0), executor)  # started without --repo-data-dir
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        try:
            with pytest.raises(SandboxUnavailable, match="does not serve repository runs"):
                RemoteExecutor(url).run_task(task.model_dump(exclude_none=True), [FIX])
            assert _collect(_round(tmp_path, data, task, url, "norepos")) == 2
        finally:
            httpd.shutdown()
            httpd.server_close()
    err = capsys.readouterr().err.strip()
    assert err == f"agentq: sandbox at {url} does not serve repository runs: start it with --repo-data-dir " \
                  "(Helm: sandbox.repoData)", err
