"""`agentq model serve-scripted` over real HTTP: the same answers as the in-process scripted backend."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agentq.cli import build_parser
from agentq.config import ScriptedSpec
from agentq.policy.prompts import critique_prompt, rewrite_prompt, zero_shot_prompt
from agentq.policy.scripted import ScriptedPolicy
from agentq.policy.scripted_server import ScriptedChat, ScriptedServer
from agentq.tasks.humanevalfix import load_humanevalfix
from controller.inference import build_server
from controller.settings import OperatorSettings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPEC = ScriptedSpec(p_reference=0.3, p_buggy=0.2, p_mutant=0.4, p_garbage=0.1)


@pytest.fixture(scope="module")
def tasks():
    data = DATA if DATA.is_dir() else Path("/work/shared/data")
    return load_humanevalfix(data)[:6]


@pytest.fixture(scope="module")
def url(tasks):
    server = ScriptedServer(("127.0.0.1", 0), ScriptedChat(tasks, SPEC, ["start", "round"]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_rewrite_zero_shot_and_critique_answers_equal_the_in_process_backend(url, tasks):
    policy = ScriptedPolicy(SPEC)
    task = tasks[3]
    prompts = [rewrite_prompt(task), rewrite_prompt(task, tasks[3].buggy_code, "failed: 0/3 tests passed."),
               zero_shot_prompt(task),
               critique_prompt(task, [task.buggy_code, task.reference_code or "", task.buggy_code + "# x\n"])]
    for prompt in prompts:
        for temperature, n, seed in ((0.8, 4, 7), (0.0, 1, 3)):
            want = [s.text for s in policy.generate([prompt], n=n, temperature=temperature, max_new_tokens=64,
                                                    seed=seed)[0]]
            status, answer = post(url, {"model": "start", "messages": prompt.messages, "n": n,
                                        "temperature": temperature, "seed": seed, "max_tokens": 64})
            assert status == 200, answer
            assert [c["message"]["content"] for c in answer["choices"]] == want, prompt.purpose
    assert "RANKING:" in want[0]  # the last prompt was the critique


def test_health_models_and_clear_refusals(url):
    with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as resp:
        assert [m["id"] for m in json.loads(resp.read())["data"]] == ["start", "round"]
    status, answer = post(url, {"model": "gpt-4", "messages": []})
    assert status == 400 and "'gpt-4' is not served here" in answer["error"]["message"]
    status, answer = post(url, {"model": "start", "messages": [{"role": "user", "content": "hello"}]})
    assert status == 400 and "no known task" in answer["error"]["message"]


def test_it_takes_the_arguments_the_operator_gives_vllm():
    body = {"apiVersion": "agentq.dev/v1alpha1", "kind": "AgentQRound",
            "metadata": {"name": "r1", "namespace": "ns", "uid": "u"},
            "spec": {"dataset": {"train": "t", "test": "e"}, "store": {"pvc": "a"},
                     "model": {"server": {"vllm": {"gpus": 2}}}}}
    args = build_server(body, "evaluate", OperatorSettings())[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = build_parser().parse_args(["model", "serve-scripted", "--tasks", "t.jsonl", *args])
    assert parsed.port == 8000 and parsed.served_model_name == "start"
    assert parsed.lora_modules == ["round=/artifacts/rounds/r1/adapter"]
