"""Issue 11's data failures, reproduced: (6) an interrupted settings change, once reverted, must not replace
the finished collection; (7) two runs of one round on one machine must not interleave; (8) every setting that
changes a step's output must be in that step's digest."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from agentq import collect
from agentq.cli import main
from agentq.config import RoundSpec, load_round
from agentq.evaluate import eval_digest, summarize
from agentq.io import read_jsonl
from agentq.tasks.humanevalfix import load_humanevalfix
from agentq.tasks.schema import write_tasks
from agentq.workspace import DIGESTED_AS_INPUTS, OUTPUT_NEUTRAL, STEP_SETTINGS, RoundWorkspace

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_round(folder: Path, collect_settings: str = "k: 2, rollouts: 2, depth: 2, stopOnPass: false",
                extra: str = "") -> str:
    path = folder / "round.yaml"
    path.write_text(
        "apiVersion: agentq.dev/v1alpha1\nkind: AgentQRound\nmetadata: {name: data}\nspec:\n"
        "  model: {base: tiny, backend: scripted}\n"
        "  dataset: {train: train.jsonl, test: train.jsonl}\n"
        f"  collect: {{shards: 1, {collect_settings}}}\n"
        "  store: {path: store}\n" + extra
    )
    return str(path)


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTQ_WORK_DIR", str(tmp_path / "work"))
    write_tasks(tmp_path / "train.jsonl", load_humanevalfix(DATA)[:6])
    return tmp_path


def test_6_a_reverted_interrupted_settings_change_keeps_the_finished_collection(folder, monkeypatch, capsys):
    round_a = write_round(folder)
    assert main(["collect", "--round", round_a]) == 0
    assert main(["preferences", "--round", round_a]) == 0
    shard = folder / "store" / "rounds" / "data" / "trajectories" / "shard-0-of-1.jsonl"
    before = list(read_jsonl(shard))
    pairs_before = (folder / "store" / "rounds" / "data" / "preferences.jsonl").read_text()
    assert len(before) == 6

    # New settings; the collector is killed as the second tree of the new run is opened.
    write_round(folder, "k: 2, rollouts: 3, depth: 2, stopOnPass: false")
    calls: list[str] = []
    real_steps = collect.Search.steps

    def dying_steps(self):
        calls.append(self.task.id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return (yield from real_steps(self))

    monkeypatch.setattr(collect.Search, "steps", dying_steps)
    assert main(["collect", "--round", round_a]) == 130
    monkeypatch.setattr(collect.Search, "steps", real_steps)
    assert list(read_jsonl(shard)) == before  # the finished shard of the old settings is untouched

    # Revert: the old settings' collection is complete and whole, and preferences come out as before.
    write_round(folder)
    capsys.readouterr()
    assert main(["collect", "--round", round_a]) == 0
    assert "already complete" in capsys.readouterr().out
    assert list(read_jsonl(shard)) == before
    assert main(["preferences", "--round", round_a]) == 0
    assert (folder / "store" / "rounds" / "data" / "preferences.jsonl").read_text() == pairs_before


def test_6_an_output_changed_behind_the_markers_back_reruns_the_step(folder, capsys):
    round_a = write_round(folder)
    assert main(["collect", "--round", round_a]) == 0
    shard = folder / "store" / "rounds" / "data" / "trajectories" / "shard-0-of-1.jsonl"
    ws = RoundWorkspace(load_round(round_a), round_a)
    ws.store.put_text(ws.key("trajectories/shard-0-of-1.jsonl"), shard.read_text().splitlines()[0] + "\n")
    capsys.readouterr()
    assert main(["collect", "--round", round_a]) == 0
    out = capsys.readouterr().out
    assert "changed since the step finished" in out and "already complete" not in out
    assert len(list(read_jsonl(shard))) == 6


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process (another run of the round) holding collect shard 0's lock in `folder`."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from agentq.workspace import lock_step\n"
         "lock_step(Path(sys.argv[1]), 'collect-shard-0-of-1', 'round data'); print('held', flush=True)\n"
         "time.sleep(60)", str(folder)],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_7_a_second_run_of_a_running_step_refuses_clearly(folder, capsys):
    round_a = write_round(folder)
    holder = hold_lock(folder / "work" / "locks")
    try:
        assert main(["collect", "--round", round_a]) == 2
        err = capsys.readouterr().err
        assert "step 'collect-shard-0-of-1' is already running on this machine" in err
        assert f"pid {holder.pid}" in err and "Traceback" not in err
        assert main(["round", "run", round_a, "--preset", "tiny"]) == 2
    finally:
        holder.kill()
        holder.wait()
    assert not (folder / "store" / "rounds" / "data" / "trajectories" / "shard-0-of-1.jsonl").exists()
    # once the other run is gone (killed: the kernel drops its lock), this one runs
    assert main(["collect", "--round", round_a]) == 0
    assert len(list(read_jsonl(folder / "store" / "rounds" / "data" / "trajectories" / "shard-0-of-1.jsonl"))) == 6


def _leaf_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every setting of a spec model, as dotted snake_case paths (nested spec models are opened)."""
    paths = []
    hints = typing.get_type_hints(model)
    for name in model.model_fields:
        nested = [a for a in (hints[name], *typing.get_args(hints[name]))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        paths += _leaf_fields(nested[0], f"{prefix}{name}.") if nested else [f"{prefix}{name}"]
    return paths


def test_8_every_setting_is_in_a_digest_or_declared_output_neutral():
    covered = {p for paths in STEP_SETTINGS.values() for p in paths} | set(DIGESTED_AS_INPUTS) | set(OUTPUT_NEUTRAL)
    missing = [f for f in _leaf_fields(RoundSpec) if not any(f == c or f.startswith(c + ".") for c in covered)]
    assert missing == [], f"in no step digest and not declared output-neutral: {missing}"
    neutral_but_digested = [n for n in OUTPUT_NEUTRAL
                            if any(n == p or p.startswith(n + ".") or n.startswith(p + ".")
                                   for paths in STEP_SETTINGS.values() for p in paths)]
    assert neutral_but_digested == []


@pytest.mark.parametrize(("setting", "changes"), [
    ("sandbox: {timeoutSeconds: 9}", True),
    ("sandbox: {memoryMb: 2048}", True),
    ("sandbox: {allowWeakIsolation: true}", True),
    ("model: {base: tiny, backend: scripted, dtype: bfloat16}", True),
    ("model: {base: tiny, backend: scripted, quantization: nf4}", True),
    ("sandbox: {workers: 7}", False),
    ("placement: {inference: {gpus: 2}}", False),
])
def test_8_changed_settings_rerun_collect_and_evaluate(folder, setting, changes):
    def digests(extra: str) -> tuple[str, str]:
        path = write_round(folder, extra=f"  {setting}\n" if extra else "")
        if extra and setting.startswith("model:"):
            text = Path(path).read_text().replace("  model: {base: tiny, backend: scripted}\n", "")
            Path(path).write_text(text)
        ws = RoundWorkspace(load_round(path), path)
        ws.store.put_json(ws.key("steps/merge.json"), {"digest": "m", "result": {}})
        tasks_digest = ws.tasks("train")[1]
        return collect.collect_digest(ws, tasks_digest, "model"), eval_digest(ws, tasks_digest)

    base, changed = digests(""), digests(setting)
    assert (base[0] != changed[0] and base[1] != changed[1]) is changes, (setting, base, changed)
    if not changes:
        assert base == changed


def test_user_errors_are_one_line_and_bad_shards_or_untestable_tasks_stop_the_run(folder, capsys):
    round_a = write_round(folder)
    assert main(["evaluate", "--round", round_a, "--shard", "5", "--num-shards", "2"]) == 2
    assert "--shard 5 --num-shards 2: need 0 <= shard < num_shards" in capsys.readouterr().err

    tasks = load_humanevalfix(DATA)[:3]
    broken = tasks[1].model_copy(update={"tests": "from solution import *\ndef test_x(:\n    pass\n"})
    write_tasks(folder / "train.jsonl", [tasks[0], broken, tasks[2]])
    assert main(["round", "run", round_a, "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert f"spec.dataset.train: 1 task(s) in train.jsonl have tests that cannot run: {broken.id}" in err
    assert not (folder / "store" / "rounds" / "data" / "trajectories").exists()

    (folder / "train.jsonl").write_text('{"id": "x"}\n')
    assert main(["collect", "--round", round_a]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "train.jsonl" in err and len(err.strip().splitlines()) == 1, err


def test_weak_isolation_is_recorded_and_reaches_the_round_report(folder, monkeypatch):
    from agentq.report import write_report
    from agentq.sandbox import jail

    round_a = write_round(folder, extra="  sandbox: {allowWeakIsolation: true}\n")
    monkeypatch.setattr(jail, "bwrap_path", lambda: None)  # a machine without bubblewrap
    assert main(["collect", "--round", round_a]) == 0
    ws = RoundWorkspace(load_round(round_a), round_a)
    assert "bubblewrap (bwrap) is not installed" in ws.marker("collect-shard-0-of-1")["result"]["weakIsolation"]
    notes = ws.weak_isolation()
    assert any("bubblewrap" in n for n in notes)
    record = {"task_id": "t1", "solved": True, "visible_solved": True, "parse_failure": False}
    write_report(ws, {"round": ws.name, "model": "tiny", "from_round": None, "flagged_candidates": 0,
                      "modes": {"zero_shot": summarize([record])}, "weak_isolation": notes})
    report = (folder / "store" / "rounds" / "data" / "eval" / "report.md").read_text()
    assert "Weak sandbox isolation" in report and "bubblewrap (bwrap) is not installed" in report
    # without the setting the same machine refuses, in one line
    write_round(folder)
    assert main(["collect", "--round", round_a]) == 2


def test_7_the_lock_is_also_taken_in_a_shared_directory_store(folder, capsys):
    """Two machines with their own work directories but one PVC: the store's lock stops the second."""
    round_a = write_round(folder)
    store_locks = folder / "store" / ".agentq" / "locks" / "data"
    holder = hold_lock(store_locks)
    try:
        assert main(["collect", "--round", round_a]) == 2
        assert str(store_locks) in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_a_corrupted_artifact_is_one_line_not_a_traceback(folder, capsys):
    round_a = write_round(folder)
    assert main(["collect", "--round", round_a]) == 0
    marker = folder / "store" / "rounds" / "data" / "steps" / "collect-shard-0-of-1.json"
    marker.write_text(marker.read_text().replace('"tasks"', '"tasks!"'))  # a flipped byte on the volume
    capsys.readouterr()
    assert main(["collect", "--round", round_a]) == 2
    err = capsys.readouterr().err
    assert err.startswith("agentq: ") and "collect-shard-0-of-1.json" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
