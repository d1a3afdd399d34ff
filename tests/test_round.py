"""The embedded round runner end to end on the tiny preset: every step for real (sandbox, DPO, merge, report).

Slow-ish (a real DPO run on the tiny model); it is the test that proves a user's `agentq round run` works.
"""

import json
from pathlib import Path

import pytest

from agentq import collect
from agentq.cli import main
from agentq.io import read_jsonl
from agentq.tasks.humanevalfix import load_humanevalfix
from agentq.tasks.schema import write_tasks

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.slow


def round_yaml(tmp_path: Path, name: str, from_round: str | None = None) -> Path:
    model = "{base: tiny, backend: scripted" + (f", fromRound: {from_round}" if from_round else "") + "}"
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        "apiVersion: agentq.dev/v1alpha1\nkind: AgentQRound\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        f"  model: {model}\n"
        "  dataset: {train: train.jsonl, test: test.jsonl}\n"
        "  store: {path: store}\n"
    )
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("round")
    tasks = load_humanevalfix(DATA)
    write_tasks(tmp / "train.jsonl", tasks[:6])
    write_tasks(tmp / "test.jsonl", tasks[100:104])
    return tmp


def test_tiny_round_then_chained_round(workdir, capsys):
    assert main(["round", "run", str(round_yaml(workdir, "r1")), "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    store = workdir / "store" / "rounds" / "r1"
    for name in ("eval/report.md", "eval/summary.json", "eval/pass_rate.png", "preferences.jsonl",
                 "adapter/adapter_model.safetensors", "adapter/adapter_config.json", "merged/config.json"):
        assert (store / name).exists(), name
    assert "report:" in out and "eval/report.md" in out
    train_log = [r for r in read_jsonl(store / "adapter" / "train_log.jsonl") if "loss" in r]
    assert train_log, "DPO logged no training step"

    # a second run changes nothing and re-does nothing
    assert main(["round", "run", str(round_yaml(workdir, "r1")), "--preset", "tiny"]) == 0
    assert "already complete" in capsys.readouterr().out

    # round 2 starts from round 1's merged model and its report covers both rounds
    assert main(["round", "run", str(round_yaml(workdir, "r2", from_round="r1")), "--preset", "tiny"]) == 0
    report = (workdir / "store" / "rounds" / "r2" / "eval" / "report.md").read_text()
    assert "| r1 |" in report and "| r2 |" in report and "(from r1)" in report
    summary = json.loads((workdir / "store" / "rounds" / "r2" / "eval" / "summary.json").read_text())
    assert summary["baseline"]["model"] == "r1"  # round 2 is compared with the model it started from
    assert "## Paired comparison with the base" in report and "McNemar" in report
    # ... and with the chain's original base, through round 1's baseline records
    assert summary["chain_base"]["round"] == "r1" and summary["chain_base"]["model"] == "tiny"
    assert set(summary["chain_base"]["comparison"]) == set(summary["modes"])
    assert "vs tiny (base of the chain, from r1)" in report

    capsys.readouterr()
    assert main(["round", "status", str(round_yaml(workdir, "r2", from_round="r1"))]) == 0
    status = capsys.readouterr().out
    assert [line.split()[:2] for line in status.splitlines()[1:]] == [
        [step, "done"] for step in ("collect", "preferences", "train", "merge", "evaluate")]


def test_chained_round_needs_its_predecessor(workdir, capsys):
    assert main(["round", "run", str(round_yaml(workdir, "r9", from_round="nope")), "--preset", "tiny"]) == 2
    assert "round 'nope' has no merged model yet" in capsys.readouterr().err


def test_collect_resumes_after_a_kill_without_redoing_finished_tasks(workdir, monkeypatch):
    path = round_yaml(workdir, "resume")
    path.write_text(path.read_text() + "  collect: {treesInFlight: 2}\n")
    calls: list[str] = []
    real_steps = collect.Search.steps

    def dying_steps(self):
        calls.append(self.task.id)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the collector is killed as the third tree enters the flight
        return (yield from real_steps(self))

    monkeypatch.setattr(collect.Search, "steps", dying_steps)
    assert main(["round", "run", str(path), "--preset", "tiny"]) == 130
    shard = workdir / "store" / "rounds" / "resume" / "trajectories" / "shard-0-of-1.jsonl"
    finished = calls[:2]  # the two trees in flight finished (and were saved) before the third was opened
    # until the shard is complete it is built beside the final name, under its settings' digest
    assert not shard.exists()
    (partial,) = shard.parent.glob("shard-0-of-1.jsonl.partial-*")
    assert sorted(r["task_id"] for r in read_jsonl(partial)) == sorted(finished)

    seen: list[str] = []

    def seen_steps(self):
        seen.append(self.task.id)
        return (yield from real_steps(self))

    monkeypatch.setattr(collect.Search, "steps", seen_steps)
    assert main(["round", "run", str(path), "--preset", "tiny"]) == 0
    collected = [t for t in seen if t in {r["task_id"] for r in read_jsonl(shard)}]  # evaluation searches too
    assert len(collected) == 4 and not set(collected) & set(finished)
    assert len(list(read_jsonl(shard))) == 6
    assert not list(shard.parent.glob("*.partial-*"))  # published, and the partial gone


def test_bad_round_yaml_exits_2_naming_the_field(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: agentq.dev/v1alpha1\nkind: AgentQRound\nmetadata: {name: x}\n"
                    "spec: {dataset: {train: a, test: b}, store: {path: s}, collect: {k: -1}}\n")
    assert main(["round", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "spec.collect.k" in err
