"""`agentq model fetch`: a round's base model copied into its store once, then read from there."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentq.cli import main
from agentq.config import ConfigError, load_round
from agentq.workspace import RoundWorkspace

pytestmark = pytest.mark.slow  # builds and copies the tiny model


def round_file(tmp_path: Path, base: str, fetch: str | None) -> Path:
    path = tmp_path / "round.yaml"
    model = f"{{base: '{base}', backend: scripted" + (f", fetchFrom: {fetch}" if fetch else "") + "}"
    path.write_text("apiVersion: agentq.dev/v1alpha1\nkind: AgentQRound\nmetadata: {name: r1}\nspec:\n"
                    f"  model: {model}\n  dataset: {{train: t.jsonl, test: e.jsonl}}\n  store: {{path: store}}\n")
    return path


def test_fetch_copies_once_and_the_round_loads_from_the_store(tmp_path, capsys):
    path = round_file(tmp_path, "store:models/tiny-copy", "tiny")
    assert main(["model", "fetch", "--round", str(path)]) == 0
    copy = tmp_path / "store" / "models" / "tiny-copy"
    assert (copy / "config.json").exists() and (copy / "model.safetensors").exists()
    assert main(["model", "fetch", "--round", str(path)]) == 0
    assert "already at" in capsys.readouterr().out
    ws = RoundWorkspace(load_round(path), str(path))
    location, identity = ws.model_source()
    assert Path(location) == copy and identity
    other = round_file(tmp_path, "store:models/tiny-copy", "smollm2-135m")
    assert main(["model", "fetch", "--round", str(other)]) == 2  # the key holds another model: refused


def test_a_store_model_that_is_not_there_names_the_fix(tmp_path):
    path = round_file(tmp_path, "store:models/nothing", None)
    ws = RoundWorkspace(load_round(path), str(path))
    with pytest.raises(ConfigError, match="spec.model.base: no model at .*models/nothing .*fetchFrom"):
        ws.model_source()
    assert main(["model", "fetch", "--round", str(path)]) == 2  # nothing to fetch: a one-line error
