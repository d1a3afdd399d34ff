"""Step logs through the real CLI in a subprocess: JSON lines with round, step and shard when stderr is not a
terminal (a pod's log), the familiar human lines when it is one (a pseudo-terminal here)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from agentq.tasks.humanevalfix import load_humanevalfix
from agentq.tasks.schema import write_tasks

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def round_yaml(tmp_path: Path) -> Path:
    write_tasks(tmp_path / "train.jsonl", load_humanevalfix(DATA)[:2])
    path = tmp_path / "round.yaml"
    path.write_text(
        "apiVersion: agentq.dev/v1alpha1\nkind: AgentQRound\nmetadata: {name: logged}\nspec:\n"
        "  model: {base: tiny, backend: scripted}\n"
        "  dataset: {train: train.jsonl, test: train.jsonl}\n"
        "  collect: {shards: 2, k: 2, rollouts: 2, depth: 1}\n"
        "  store: {path: store}\n")
    return path


def collect(round_yaml: Path, *, terminal: bool) -> str:
    """`agentq collect` shard 1 of 2; stderr a pseudo-terminal or a pipe. Returns stdout."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "agentq.cli", "collect", "--round", str(round_yaml), "--shard", "1",
           "--num-shards", "2"]
    if not terminal:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=round_yaml.parent)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=follower, text=True, timeout=300, env=env,
                              cwd=round_yaml.parent)
    finally:
        os.close(follower)
        os.close(leader)
    assert done.returncode == 0
    return done.stdout


def test_off_a_terminal_every_line_is_json_with_round_step_and_shard(round_yaml: Path):
    lines = collect(round_yaml, terminal=False).splitlines()
    events = [json.loads(line) for line in lines]  # every line: a JSON object, nothing else
    assert events and all({"round": "logged", "step": "collect", "shard": 1}.items() <= e.items() for e in events)
    task, finished = events[0], events[-1]
    assert task["event"] == "task done" and isinstance(task["solved"], bool) and task["samples"] > 0
    assert task["task"] == load_humanevalfix(DATA)[1].id and task["level"] == "info" and task["time"]
    assert finished["event"] == "finished" and finished["result"]["tasks"] == 1
    again = [json.loads(line) for line in collect(round_yaml, terminal=False).splitlines()]
    assert [e["event"] for e in again] == ["already complete"]


def test_on_a_terminal_the_lines_stay_human(round_yaml: Path):
    out = collect(round_yaml, terminal=True)
    assert out.strip() and "{" not in out, out
    assert out.splitlines()[-1].startswith("collect: shard 1/2"), out
