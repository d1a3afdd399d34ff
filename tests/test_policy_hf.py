"""The transformers backend on the tiny random Qwen2: batching, seeding, greedy decoding, log-probs."""

from __future__ import annotations

import sys

import pytest
import torch

from agentq.config import ModelSpec
from agentq.policy.base import PolicyError, load_policy
from agentq.policy.models import ModelLoadError
from agentq.policy.prompts import rewrite_prompt
from agentq.tasks.schema import Task

TASK = Task(
    id="inc/0", source="demo", group="inc", description="Return x plus one.",
    buggy_code="def inc(x):\n    return x - 1\n", reference_code="def inc(x):\n    return x + 1\n",
    entry_point="inc", tests="def test_a():\n    assert inc(1) == 2\n",
)
PROMPTS = [rewrite_prompt(TASK), rewrite_prompt(TASK, "def inc(x):\n    return x\n", "failed: 0/1 tests passed.")]


@pytest.fixture(scope="module")
def policy():
    return load_policy(ModelSpec(base="tiny"))


def test_n_samples_per_prompt_in_order(policy):
    out = policy.generate(PROMPTS, n=3, temperature=1.0, max_new_tokens=12, seed=0)
    assert [len(group) for group in out] == [3, 3]
    for group in out:
        assert all(0 < s.tokens <= 12 and s.logprob is not None and s.logprob < 0 for s in group)
        assert len({s.text for s in group}) > 1  # sampled, not copies


def test_same_seed_same_samples_other_seed_differs(policy):
    a = policy.generate(PROMPTS, n=2, temperature=0.8, max_new_tokens=10, seed=123)
    b = policy.generate(PROMPTS, n=2, temperature=0.8, max_new_tokens=10, seed=123)
    c = policy.generate(PROMPTS, n=2, temperature=0.8, max_new_tokens=10, seed=124)
    assert [[s.text for s in g] for g in a] == [[s.text for s in g] for g in b]
    assert [[s.text for s in g] for g in a] != [[s.text for s in g] for g in c]


def manual_greedy(policy, prompt, steps: int) -> list[int]:
    text = policy.tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
    ids = policy.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    chosen = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(policy.model(ids).logits[0, -1].argmax())
            chosen.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return chosen


def test_temperature_zero_is_greedy(policy):
    out = policy.generate(PROMPTS[:1], n=3, temperature=0.0, max_new_tokens=8, seed=5)[0]
    assert len({s.text for s in out}) == 1
    expected = policy.tokenizer.decode(manual_greedy(policy, PROMPTS[0], 8), skip_special_tokens=True)
    assert out[0].text == expected
    # the seed does not matter to greedy decoding
    assert policy.generate(PROMPTS[:1], n=1, temperature=0.0, max_new_tokens=8, seed=99)[0][0].text == expected


def model_logprob(policy, prompt, new_ids: torch.Tensor) -> float:
    text = policy.tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = policy.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    ids = torch.cat([prompt_ids, new_ids[None]], dim=1)
    with torch.no_grad():
        logp = torch.log_softmax(policy.model(ids).logits[0, :-1].float(), dim=-1)
    n_prompt = prompt_ids.shape[1]
    return logp[n_prompt - 1:].gather(1, ids[0, n_prompt:, None]).sum().item()


def test_greedy_logprob_is_the_sum_of_model_token_logprobs(policy):
    sample = policy.generate(PROMPTS[:1], n=1, temperature=0.0, max_new_tokens=8, seed=0)[0][0]
    expected = model_logprob(policy, PROMPTS[0], torch.tensor(manual_greedy(policy, PROMPTS[0], 8)))
    assert sample.tokens == 8
    assert sample.logprob == pytest.approx(expected, abs=1e-3)


def test_sampled_logprob_is_under_the_untempered_model(policy):
    """At temperature 0.5 the reported log-prob is still the model's own (temperature 1) one."""
    checked = 0
    for seed in range(10):
        sample = policy.generate(PROMPTS[:1], n=1, temperature=0.5, max_new_tokens=6, seed=seed)[0][0]
        new_ids = policy.tokenizer(sample.text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
        if len(new_ids) != sample.tokens:
            continue  # random tokens can re-tokenize differently; such samples cannot be re-scored
        assert sample.logprob == pytest.approx(model_logprob(policy, PROMPTS[0], new_ids), abs=1e-3)
        checked += 1
    assert checked >= 3


def test_nf4_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match="model.quantization nf4 needs a CUDA GPU"):
        load_policy(ModelSpec(base="tiny", quantization="nf4"))


def test_vllm_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(PolicyError, match="vllm package is not installed"):
        load_policy(ModelSpec(base="tiny", backend="vllm"))


def test_path_override_replaces_base(tmp_path):
    with pytest.raises(Exception, match="does-not-exist"):
        load_policy(ModelSpec(base="tiny"), path_override=tmp_path / "does-not-exist")


def test_one_batch_mixes_greedy_and_sampled_requests_each_at_its_own_limit(policy):
    from agentq.policy.base import Request

    greedy_alone = policy.generate(PROMPTS[:1], n=1, temperature=0, max_new_tokens=10, seed=0)[0][0]
    out = policy.generate_batch([Request(PROMPTS[0], 3, 0.0, 10, 5), Request(PROMPTS[1], 2, 1.5, 4, 5)])
    assert [len(group) for group in out] == [3, 2]
    assert len({s.text for s in out[0]}) == 1 and out[0][0].text == greedy_alone.text
    assert all(s.tokens <= 4 for s in out[1])
    assert all(s.logprob is not None and s.logprob <= 0 for group in out for s in group)


def test_prompt_tokens_are_the_tokenized_prompt_once_per_request_and_greedy_copies_cost_nothing(policy):
    from agentq.policy.base import Request, spent

    out = policy.generate_batch([Request(PROMPTS[0], 3, 0.0, 6, 1), Request(PROMPTS[1], 2, 1.0, 6, 1)])
    lengths = [len(policy.tokenizer(policy.tokenizer.apply_chat_template(p.messages, tokenize=False,
                                                                          add_generation_prompt=True),
                                    add_special_tokens=False)["input_ids"]) for p in PROMPTS]
    assert lengths[0] != lengths[1]  # the left padding of the shorter prompt must not be counted
    assert [[s.prompt_tokens for s in group] for group in out] == [[lengths[0], 0, 0], [lengths[1], 0]]
    assert out[0][0].tokens > 0 and [s.tokens for s in out[0][1:]] == [0, 0]  # greedy: generated once
    assert all(s.tokens > 0 for s in out[1])
    assert spent(out) == (sum(lengths), out[0][0].tokens + out[1][0].tokens + out[1][1].tokens)


def test_one_prefill_per_prompt_gives_the_answers_of_prefilling_every_row(policy, monkeypatch):
    """The shared prefill (each prompt read once, its cache repeated for its n rows) changes nothing: greedy
    answers and their log-probs are those of a batch that reads every row's prompt itself."""
    from agentq.policy.base import Request

    requests = [Request(PROMPTS[0], 1, 0.0, 12, 3), Request(PROMPTS[1], 1, 0.0, 9, 3)]
    shared = policy.generate_batch(requests)
    calls = []
    monkeypatch.setattr(policy, "_prefill", lambda batch, copies: calls.append(copies))
    alone = policy.generate_batch(requests)
    assert calls == [[1, 1]]
    assert [g[0].text for g in shared] == [g[0].text for g in alone]
    assert [g[0].tokens for g in shared] == [g[0].tokens for g in alone]
    assert [g[0].logprob for g in shared] == pytest.approx([g[0].logprob for g in alone], abs=1e-3)


def test_a_row_stops_where_it_closes_its_code_block_and_at_its_own_limit():
    """Rewrite and zero-shot rows end at the closing fence (nothing after it is read); other rows, and rows
    still inside their block, run on to their own token limit."""
    from agentq.policy.hf import _RowStop, closes_code_block

    assert not closes_code_block("Here:\n```python\ndef f():\n    return 1\n")
    assert closes_code_block("Here:\n```python\ndef f():\n    return 1\n```")
    assert not closes_code_block("no fences at all")

    class Pieces:
        def __init__(self, texts):
            self.texts = texts

        def batch_decode(self, last, skip_special_tokens):
            return [t[int(last[i, 0])] for i, t in enumerate(self.texts)]

    answer = ["```python\n", "x = 1\n", "```", "\nMore prose", " and more"]
    stop = _RowStop(Pieces([answer, answer, answer]), prompt_length=2, limits=[5, 5, 2],
                    code_stops=[True, False, True])
    done = []
    for step in range(1, 6):
        ids = torch.tensor([[0, 0, *range(step)]] * 3)
        done.append(stop(ids, None).tolist())
    assert stop.lengths == [3, 5, 2]
    assert done[0] == [False, False, False] and done[1] == [False, False, True] and done[2] == [True, False, True]
