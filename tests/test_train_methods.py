"""Learning from sparse passes: expert iteration (SFT on passing samples) and GRPO with the sandbox as reward,
each unit-tested and run end to end in a tiny round; and the prompt cut that keeps the problem statement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentq.cli import main
from agentq.io import read_jsonl, write_jsonl
from agentq.sandbox.executor import LocalExecutor
from agentq.sandbox.limits import Limits
from agentq.tasks.humanevalfix import load_humanevalfix
from agentq.tasks.schema import write_tasks
from agentq.train.grpo import SandboxReward, grpo_prompts
from agentq.train.sft import expert_examples

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def tasks():
    return load_humanevalfix(DATA)[:6]


def test_sandbox_reward_is_the_share_of_tests_passed_and_zero_without_a_program(tasks):
    task = tasks[0]  # HumanEval-0: seven asserts, each its own test
    always_true = "def has_close_elements(numbers, threshold):\n    return True\n"
    completions = [[{"role": "assistant", "content": f"```python\n{task.reference_code}```"}],
                   [{"role": "assistant", "content": f"Here:\n```python\n{always_true}```"}],
                   "I cannot fix this."]
    with LocalExecutor(workers=2, limits=Limits(timeout_s=5)) as executor:
        reward = SandboxReward({task.id: task}, executor)
        rewards = reward([None] * 3, completions, task_id=[task.id] * 3)
    assert rewards == [1.0, pytest.approx(4 / 7), 0.0] and reward.calls == 1


def test_grpo_prompts_are_the_depth_1_prompts_of_tasks_whose_rewards_differed(tasks):
    def record(task_id, rewards):
        nodes = [{"id": 0, "depth": 0, "reward": 0.0, "prompt": []}]
        nodes += [{"id": i, "depth": 1, "reward": r, "prompt": [{"role": "user", "content": task_id}]}
                  for i, r in enumerate(rewards, 1)]
        return {"task_id": task_id, "group": task_id, "nodes": nodes}

    by_id = {t.id: t for t in tasks}
    ids = list(by_id)
    records = [record(ids[0], [0.0, 0.0]), record(ids[1], [0.0, 0.5]), record("elsewhere", [0.0, 1.0])]
    assert [e["task_id"] for e in grpo_prompts(records, by_id)] == [ids[1]]
    assert grpo_prompts(records, by_id)[0]["prompt"] == [{"role": "user", "content": ids[1]}]
    assert [e["task_id"] for e in grpo_prompts(records[:1], by_id)] == [ids[0]]  # none differed: every task


def test_expert_examples_keep_distinct_passing_answers_up_to_a_cap_per_task(tmp_path):
    def example(task, answer, kind="positive"):
        return {"messages": [{"role": "user", "content": "fix"}, {"role": "assistant", "content": answer}],
                "kind": kind, "task_id": task, "group": task}

    write_jsonl(tmp_path / "sft.jsonl", [example("a", "x"), example("a", "x"), example("a", "y"), example("a", "z"),
                                         example("a", "w", "reflection"), example("b", "x")])
    kept = list(read_jsonl(expert_examples(tmp_path / "sft.jsonl", tmp_path / "out.jsonl", per_task=2)))
    assert [(e["task_id"], e["messages"][-1]["content"]) for e in kept] == [("a", "x"), ("a", "y"), ("b", "x")]


def test_a_long_prompt_is_cut_in_its_middle_so_the_statement_and_instructions_stay():
    from transformers import AutoTokenizer

    from agentq.policy.tiny import tiny_model_dir
    from agentq.train.dpo import fit_prompt

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir())
    user = "## Problem\nReturn x plus one.\n\n" + "feedback line\n" * 400 + "Reply with one ```python block."
    messages = [{"role": "system", "content": "You fix bugs."}, {"role": "user", "content": user}]
    fitted = fit_prompt(messages, completion_tokens=100, tokenizer=tokenizer, max_length=512)
    text = fitted[1]["content"]
    text_of = tokenizer.apply_chat_template(fitted, tokenize=False, add_generation_prompt=True)
    assert len(tokenizer(text_of, add_special_tokens=False)["input_ids"]) <= 412
    assert text.startswith("## Problem\nReturn x plus one.") and text.endswith("Reply with one ```python block.")
    assert "characters cut to fit train.maxLength" in text and fitted[0] == messages[0]
    assert fit_prompt(messages[:1], 100, tokenizer, 512) == messages[:1]  # short enough: unchanged


def round_file(tmp_path: Path, name: str, train: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        "apiVersion: agentq.dev/v1alpha1\nkind: AgentQRound\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        "  model: {base: tiny, backend: scripted}\n"
        "  dataset: {train: train.jsonl, test: test.jsonl}\n"
        f"  train: {train}\n"
        "  evaluate: {modes: [full_rewrite]}\n"
        "  store: {path: store}\n"
    )
    return path


@pytest.mark.slow
@pytest.mark.parametrize("method", ["expert_iteration", "grpo"])
def test_a_tiny_round_trains_with_the_method_and_publishes_its_model(tmp_path, tasks, method):
    write_tasks(tmp_path / "train.jsonl", tasks)
    write_tasks(tmp_path / "test.jsonl", load_humanevalfix(DATA)[100:102])
    spec = f"{{method: {method}, grpo: {{groupSize: 2, klCoef: 0.04}}}}"
    assert main(["round", "run", str(round_file(tmp_path, "m", spec)), "--preset", "tiny"]) == 0
    store = tmp_path / "store" / "rounds" / "m"
    summary = json.loads((store / "adapter" / "training_summary.json").read_text())
    assert summary["steps"] >= 1 and (store / "merged" / "config.json").exists()
    assert (store / "eval" / "summary.json").exists()
    if method == "grpo":
        assert summary["method"] == "grpo" and summary["group_size"] == 2 and summary["reward_calls"] >= 1
        assert summary["prompts"] >= 1 and summary["kl_coef"] == 0.04
        assert any("reward" in r for r in read_jsonl(store / "adapter" / "train_log.jsonl"))
    else:
        distinct: dict[str, set[str]] = {}
        for e in read_jsonl(store / "sft.jsonl"):
            if e["kind"] == "positive":
                distinct.setdefault(e["task_id"], set()).add(e["messages"][-1]["content"])
        assert distinct and summary["examples"] == sum(min(len(v), 4) for v in distinct.values())
