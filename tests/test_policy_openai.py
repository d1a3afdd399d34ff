"""The openai backend against a real local HTTP server (tests/openai_server.py) that answers like the scripted mock."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import yaml
from openai_server import running_server
from test_scheduler import without_clock
from testenv import free_port

from agentq.cli import main
from agentq.config import ModelSpec, RoundFile, ScriptedSpec, parse_model
from agentq.io import read_jsonl
from agentq.policy.base import Request, load_policy
from agentq.policy.openai_backend import ServerUnavailable
from agentq.policy.prompts import critique_prompt, rewrite_prompt, zero_shot_prompt
from agentq.policy.scripted import ScriptedPolicy
from agentq.sandbox.executor import LocalExecutor
from agentq.search.mcts import Search, SearchParams
from agentq.tasks.humanevalfix import load_humanevalfix
from agentq.tasks.schema import write_tasks

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def tasks():
    return load_humanevalfix(DATA)[:4]


@pytest.fixture(scope="module")
def task_file(tmp_path_factory, tasks):
    path = tmp_path_factory.mktemp("openai") / "tasks.jsonl"
    write_tasks(path, tasks)
    return path


@pytest.fixture(scope="module")
def server(task_file):
    with running_server([task_file], "--delay-s", "0.05") as url:
        yield url


def spec(url: str, **openai) -> ModelSpec:
    return ModelSpec(base="tiny", backend="openai", openai={"url": url, "model": "mock", **openai})


def stats(url: str) -> dict:
    return httpx.get(url.removesuffix("/v1") + "/stats").json()


def test_answers_match_the_in_process_scripted_policy_request_for_request(server, tasks):
    t = tasks[0]
    requests = [Request(rewrite_prompt(t), 4, 0.8, 64, 3), Request(rewrite_prompt(t, t.buggy_code, "failed"), 2, 0.8,
                                                                    64, 9),
                Request(zero_shot_prompt(tasks[1]), 3, 0.0, 64, 1),
                Request(critique_prompt(t, [t.buggy_code, t.reference_code], ["failed", "passed"]), 1, 0.2, 64, 5)]
    served = load_policy(spec(server)).generate_batch(requests)
    local = ScriptedPolicy(ScriptedSpec()).generate_batch(requests)
    assert [[s.text for s in group] for group in served] == [[s.text for s in group] for group in local]
    assert [len(g) for g in served] == [4, 2, 3, 1]
    assert all(s.logprob is not None and s.logprob < 0 for g in served for s in g)
    # Token counts are the server's: the same as the in-process backend's (the greedy zero-shot request was one
    # generation, whose two copies cost nothing), the prompt counted once per request.
    assert [[(s.prompt_tokens, s.tokens) for s in g] for g in served] == \
        [[(s.prompt_tokens, s.tokens) for s in g] for g in local]
    assert all(g[0].prompt_tokens > 0 and g[0].tokens > 0 for g in served)


def test_requests_in_flight_are_bounded_by_concurrency(task_file, tasks):
    with running_server([task_file], "--delay-s", "0.1") as url:
        policy = load_policy(spec(url, concurrency=3))
        policy.generate_batch([Request(rewrite_prompt(t), 1, 0.8, 16, i) for i in range(4) for t in tasks])
        seen = stats(url)
    assert seen["requests"] == 16
    assert 1 < seen["max_in_flight"] <= 3  # the server saw several at once, never more than the bound


def test_503s_are_retried_with_backoff_until_answered(task_file, tasks):
    with running_server([task_file], "--fail-first", "2") as url:
        start = time.perf_counter()
        out = load_policy(spec(url, concurrency=1, maxRetries=3)).generate([rewrite_prompt(tasks[0])], n=2,
                                                                          temperature=0.8, max_new_tokens=32, seed=0)
        assert len(out[0]) == 2 and stats(url)["requests"] == 3
        assert time.perf_counter() - start >= 0.5 + 1.0  # backoff 0.5 s, then 1 s


def test_unreachable_server_fails_with_one_line_naming_the_url(tasks):
    url = f"http://127.0.0.1:{free_port()}/v1"
    policy = load_policy(spec(url, maxRetries=1))
    with pytest.raises(ServerUnavailable, match=rf"model.openai.url {url}/chat/completions: unreachable .* after 2 "):
        policy.generate([rewrite_prompt(tasks[0])], n=1, temperature=0, max_new_tokens=8, seed=0)


def test_an_unknown_served_model_is_named_in_the_error(server, tasks):
    policy = load_policy(ModelSpec(base="tiny", backend="openai", openai={"url": server, "model": "nope"}))
    with pytest.raises(ServerUnavailable, match="model 'nope'.* answered 404"):
        policy.generate([rewrite_prompt(tasks[0])], n=1, temperature=0, max_new_tokens=8, seed=0)


def test_backend_openai_without_a_server_is_one_config_line(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(
        "apiVersion: agentq.dev/v1alpha1\nkind: AgentQRound\nmetadata: {name: o}\nspec:\n"
        "  model: {base: tiny, backend: openai}\n  dataset: {train: t.jsonl, test: t.jsonl}\n"
    )
    assert main(["collect", "--round", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert "backend openai needs openai" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_tiny_round_collects_and_evaluates_through_the_server(tmp_path):
    """Collect and both evaluate arms ask the server (the round arm under its own served name); train and merge
    run on the tiny model. The server answers like the scripted backend, so the trees equal a scripted round's."""
    all_tasks = load_humanevalfix(DATA)
    write_tasks(tmp_path / "train.jsonl", all_tasks[:6])
    write_tasks(tmp_path / "test.jsonl", all_tasks[100:103])

    def round_file(name: str, model: str) -> str:
        (tmp_path / f"{name}.yaml").write_text(
            f"apiVersion: agentq.dev/v1alpha1\nkind: AgentQRound\nmetadata: {{name: {name}}}\nspec:\n"
            f"  model: {model}\n  dataset: {{train: train.jsonl, test: test.jsonl}}\n  store: {{path: store}}\n"
            "  collect: {critic: self}\n"
        )
        return str(tmp_path / f"{name}.yaml")

    with running_server([tmp_path / "train.jsonl", tmp_path / "test.jsonl"], models=("base", "merged")) as url:
        served = round_file("served", f"{{backend: openai, openai: {{url: '{url}', model: base, roundModel: merged}}}}")
        assert main(["round", "run", served, "--preset", "tiny"]) == 0
        asked = stats(url)
    store = tmp_path / "store" / "rounds"
    assert (store / "served" / "merged" / "config.json").exists() and (store / "served" / "eval" / "report.md").exists()
    evaluated = {r["task_id"] for r in read_jsonl(store / "served" / "eval" / "mcts.jsonl")}
    assert evaluated == {t.id for t in all_tasks[100:103]}
    # every tree's expansions and critiques, and both arms' evaluation prompts, were answered by the server
    trees = list(read_jsonl(store / "served" / "trajectories" / "shard-0-of-1.jsonl"))
    assert asked["by_model"]["merged"] > 0 and asked["by_model"]["base"] > asked["by_model"]["merged"]
    assert asked["sequences"] >= sum(t["stats"]["samples"] + t["stats"]["critique_calls"] for t in trees) > 0

    # The in-process scripted backend, with the settings the round ran with, grows the same trees.
    ran = parse_model(yaml.safe_load((store / "served" / "spec.yaml").read_text()), RoundFile, "spec.yaml").spec
    with LocalExecutor(workers=2) as executor:
        local = [Search(t, ScriptedPolicy(ScriptedSpec()), executor, SearchParams.for_collect(ran)).run().record()
                 for t in all_tasks[:6]]
    assert [without_clock({k: v for k, v in t.items() if k != "inputs_digest"}) for t in trees] == \
        [without_clock(t) for t in local]
