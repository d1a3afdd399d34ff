"""Issue 23, failure 6: a lone surrogate in a candidate's output crashed collect (the next prompt could not be
encoded), and every re-run crashed on the same candidate. Candidate text is made safe where it enters a verdict
(local or remote) and where a model's answer enters the search."""

from __future__ import annotations

import json
from pathlib import Path

from agentq.cli import main
from agentq.io import read_jsonl
from agentq.sandbox.verdict import TestResult, Verdict, safe_text
from agentq.tasks.schema import Task, write_tasks

RAISES = 'def f(x):\n    raise ValueError("bad \\ud800 value")\n'


def test_verdict_text_encodes_whatever_the_candidate_wrote():
    verdict = Verdict(status="failed", message="a \ud800 b", stdout_tail="\udfff", stderr_tail="ok",
                      tests=[TestResult(name="t", passed=False, message="x\ud83dy")])
    for text in (verdict.message, verdict.stdout_tail, verdict.tests[0].message):
        text.encode("utf-8")  # would raise UnicodeEncodeError before
    assert verdict.message == "a \ufffd b" and safe_text("plain é 😀") == "plain é 😀"
    # A verdict that went through JSON (the sandbox server) comes back safe too.
    remote = Verdict.model_validate(json.loads(json.dumps({"status": "error", "message": "\ud800"})))
    assert remote.message == "\ufffd"


def test_collect_survives_a_candidate_raising_a_lone_surrogate_and_so_does_its_rerun(tmp_path: Path):
    task = Task(id="s1", source="test", group="g", description="add one", buggy_code=RAISES,
                reference_code="def f(x):\n    return x + 1\n", entry_point="f",
                tests="from solution import *\n\n\ndef test_f():\n    assert f(1) == 2\n")
    write_tasks(tmp_path / "train.jsonl", [task])
    (tmp_path / "round.yaml").write_text(
        "apiVersion: agentq.dev/v1alpha1\nkind: AgentQRound\nmetadata: {name: s}\nspec:\n"
        "  model: {base: tiny, backend: scripted, scripted: {pReference: 0.2, pBuggy: 0.8, pMutant: 0, pGarbage: 0}}\n"
        "  dataset: {train: train.jsonl, test: train.jsonl}\n"
        "  collect: {shards: 1, k: 2, rollouts: 3, depth: 2}\n"
        "  store: {path: store}\n")
    args = ["collect", "--round", str(tmp_path / "round.yaml"), "--shard", "0", "--num-shards", "1"]
    assert main(args) == 0
    assert main(args) == 0  # the re-run finds the finished shard
    (tree,) = read_jsonl(tmp_path / "store" / "rounds" / "s" / "trajectories" / "shard-0-of-1.jsonl")
    messages = [n["verdict"]["message"] for n in tree["nodes"] if n["verdict"]]
    assert any("bad \ufffd value" in m for m in messages), messages
    assert main(["preferences", "--round", str(tmp_path / "round.yaml")]) == 0
