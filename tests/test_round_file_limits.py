"""Issue 23, failure 9: round files. Numbers without an upper bound (a timeout of 1e300 s, 10^12 rollouts or new
tokens) passed validation and failed later with a traceback; a file that is not UTF-8 was a traceback; and a
run with other settings, once complete, deleted the interrupted partial of the first settings, so going back
to them redid everything."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentq import collect
from agentq.cli import main
from agentq.config import ConfigError, load_round
from agentq.io import read_jsonl
from agentq.tasks.humanevalfix import load_humanevalfix
from agentq.tasks.schema import write_tasks

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HEAD = "apiVersion: agentq.dev/v1alpha1\nkind: AgentQRound\nmetadata: {name: lim}\nspec:\n" \
       "  dataset: {train: train.jsonl, test: train.jsonl}\n  store: {path: store}\n"


@pytest.mark.parametrize("section, field", [
    ("sandbox: {timeoutSeconds: 1e300}", "sandbox.timeoutSeconds"),
    ("collect: {rollouts: 1000000000000}", "collect.rollouts"),
    ("model: {maxNewTokens: 1000000000000}", "model.maxNewTokens"),
    ("evaluate: {rollouts: 1000000000000}", "evaluate.rollouts"),
    ("train: {maxLength: 1000000000000}", "train.maxLength"),
])
def test_numbers_beyond_any_sensible_round_are_refused_when_the_file_is_read(tmp_path, capsys, section, field):
    path = tmp_path / "round.yaml"
    path.write_text(HEAD + f"  {section}\n")
    with pytest.raises(ConfigError, match=f"spec.{field}: Input should be less than or equal to"):
        load_round(path)
    assert main(["collect", "--round", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"spec.{field}" in err and "Traceback" not in err


def test_a_round_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "round.yaml"
    path.write_bytes(HEAD.encode() + b"  # caf\xe9\n")
    with pytest.raises(ConfigError, match=r"round.yaml: not UTF-8 text \(byte \d+"):
        load_round(path)
    assert main(["collect", "--round", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not UTF-8" in err


def _round(folder: Path, rollouts: int) -> str:
    path = folder / "round.yaml"
    path.write_text(HEAD.replace("name: lim", "name: part") + "  model: {base: tiny, backend: scripted}\n"
                    f"  collect: {{shards: 1, k: 2, rollouts: {rollouts}, depth: 2, stopOnPass: false, "
                    "treesInFlight: 1}\n")
    return str(path)


def test_an_interrupted_partial_survives_a_run_of_other_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTQ_WORK_DIR", str(tmp_path / "work"))
    write_tasks(tmp_path / "train.jsonl", load_humanevalfix(DATA)[:4])
    searched: list[str] = []
    real_steps = collect.Search.steps

    def counting_steps(self):
        searched.append(self.task.id)
        if stop_at and len(searched) == stop_at:
            raise KeyboardInterrupt
        return (yield from real_steps(self))

    monkeypatch.setattr(collect.Search, "steps", counting_steps)
    stop_at = 3  # settings A: two trees land, then the collector is killed
    round_a = _round(tmp_path, 2)
    assert main(["collect", "--round", round_a]) == 130
    partials = sorted((tmp_path / "store" / "rounds" / "part" / "trajectories").glob("*.partial-*"))
    assert len(partials) == 1 and len(list(read_jsonl(partials[0]))) == 2
    stop_at = 0
    assert main(["collect", "--round", _round(tmp_path, 3)]) == 0  # settings B, to the end
    assert partials[0].exists()  # A's partial is still there
    searched.clear()
    assert main(["collect", "--round", _round(tmp_path, 2)]) == 0  # back to A: only the two trees it lacked
    assert len(searched) == 2, searched
