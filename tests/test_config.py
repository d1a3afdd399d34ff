"""The round file is what users write by hand: bad input must say which file, which field, what was expected."""

from pathlib import Path

import pytest

from agentq.config import ConfigError, RoundFile, dump_round, load_round

GOOD = """\
apiVersion: agentq.dev/v1alpha1
kind: AgentQRound
metadata: {name: round-1}
spec:
  dataset: {train: data/train.jsonl, test: data/test.jsonl}
  collect: {shards: 2, k: 3, critiqueTemperature: 0.3}
  store: {path: artifacts}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "round.yaml"
    path.write_text(text)
    return path


def test_good_round_loads_with_defaults_and_camel_case(tmp_path):
    rf = load_round(write(tmp_path, GOOD))
    assert rf.name == "round-1"
    assert rf.spec.collect.k == 3 and rf.spec.collect.critique_temperature == 0.3
    assert rf.spec.train.lora.r == 32 and len(rf.spec.train.lora.target_modules) == 7
    assert rf.spec.model.base == "Qwen/Qwen2.5-Coder-7B-Instruct"
    # defaults that give a learning signal and a comparison: contrast-keeping collection, test-decided pairs,
    # a base row in every report
    assert rf.spec.collect.stop_on_pass is False and rf.spec.collect.root_k is None
    assert rf.spec.preferences.critique_ties is False
    assert rf.spec.evaluate.baseline is True and rf.spec.evaluate.samples == 1
    assert rf.spec.train.precompute_ref_log_probs is True


def test_dump_round_trips(tmp_path):
    rf = load_round(write(tmp_path, GOOD))
    again = load_round(write(tmp_path, dump_round(rf)))
    assert again == rf
    assert "critiqueTemperature" in dump_round(rf)


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (("k: 3", "k: 0"), "spec.collect.k: Input should be greater than or equal to 1"),
        (("k: 3", "k: three"), "spec.collect.k"),
        (("{path: artifacts}", "{}"), "spec.store: Value error, set exactly one of path, pvc, s3"),
        (("shards: 2", "shardz: 2"), "spec.collect.shardz: Extra inputs are not permitted"),
        (("name: round-1", "name: Round_1"), "metadata.name: String should match pattern"),
        (("  dataset: {train: data/train.jsonl, test: data/test.jsonl}\n", ""), "spec.dataset: Field required"),
        (("  store:", "  evaluate: {samples: 2, passK: 5}\n  store:"),
         "spec.evaluate: Value error, passK (5) must not exceed samples (2)"),
    ],
)
def test_bad_round_names_file_field_and_expectation(tmp_path, patch, expected):
    path = write(tmp_path, GOOD.replace(*patch))
    with pytest.raises(ConfigError) as err:
        load_round(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_not_yaml_and_not_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_round(write(tmp_path, "spec: [unclosed"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_round(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_round(tmp_path / "missing.yaml")


def test_examples_are_valid():
    for path in sorted(Path(__file__).parent.parent.joinpath("examples").glob("*.yaml")):
        assert isinstance(load_round(path), RoundFile)


def test_fetch_from_needs_a_store_base():
    from agentq.config import ModelSpec, parse_model

    with pytest.raises(ConfigError, match="fetchFrom needs base: store:<key>"):
        parse_model({"base": "Qwen/Qwen2.5-Coder-7B-Instruct", "fetchFrom": "Qwen/x"}, ModelSpec, "round.yaml")
    assert parse_model({"base": "store:models/q", "fetchFrom": "Qwen/x"}, ModelSpec, "r").fetch_from == "Qwen/x"
