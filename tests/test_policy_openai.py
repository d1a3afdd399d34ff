"""The openai backend against a real local HTTP server (tests/openai_server.py) that answers like the scripted mock."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from agentq.cli import main
from agentq.config import ModelSpec, ScriptedSpec
from agentq.policy.base import Request, load_policy
from agentq.policy.openai_backend import ServerUnavailable
from agentq.policy.prompts import critique_prompt, rewrite_prompt, zero_shot_prompt
from agentq.policy.scripted import ScriptedPolicy
from agentq.tasks.humanevalfix import load_humanevalfix
from agentq.tasks.schema import write_tasks
from tests.openai_server import free_port, running_server

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
    assert all(s.logprob is not None and s.logprob < 0 and s.tokens > 0 for g in served for s in g)


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
