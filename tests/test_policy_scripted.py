"""The scripted mock: determinism, mixture proportions, mutants, and critique answers the parser reads."""

from __future__ import annotations

import ast
import random
from collections import Counter

import pytest

from agentq.config import ModelSpec, ScriptedSpec
from agentq.policy.base import PolicyError, Prompt, load_policy
from agentq.policy.prompts import critique_prompt, extract_code, parse_ranking, rewrite_prompt, zero_shot_prompt
from agentq.policy.scripted import ScriptedPolicy, mutate
from agentq.tasks.schema import Task

REFERENCE = (
    "def clamp(x, lo, hi):\n    if x < lo:\n        return lo\n    if x > hi:\n        return hi\n    return x\n"
)
# Formatted unlike ast.unparse output, so a mutant of the reference can never equal it textually.
BUGGY = "def clamp(x, lo, hi):\n    if x < lo:  return hi\n    if x > hi:  return lo\n    return x\n"


def make_task(i: int = 0) -> Task:
    return Task(
        id=f"clamp/{i}", source="demo", group="clamp", description=f"Clamp x into [lo, hi] (variant {i}).",
        buggy_code=BUGGY, reference_code=REFERENCE, entry_point="clamp", tests="def test_a():\n    pass\n",
    )


def policy(**scripted) -> ScriptedPolicy:
    return load_policy(ModelSpec(backend="scripted", scripted=ScriptedSpec(**scripted)))


def classify(text: str) -> str:
    code = extract_code(text, "clamp")
    if code is None:
        return "garbage"
    if code == REFERENCE:
        return "reference"
    if code == BUGGY:
        return "buggy"
    return "mutant"


def test_same_call_same_answers_and_seed_changes_them():
    pol = policy()
    prompts = [rewrite_prompt(make_task(i)) for i in range(3)]
    a = pol.generate(prompts, n=6, temperature=0.8, max_new_tokens=100, seed=7)
    b = ScriptedPolicy(ScriptedSpec()).generate(prompts, n=6, temperature=0.8, max_new_tokens=100, seed=7)
    c = pol.generate(prompts, n=6, temperature=0.8, max_new_tokens=100, seed=8)
    assert [len(g) for g in a] == [6, 6, 6]
    assert a == b
    assert a != c
    # a prompt's answers do not depend on which other prompts share the batch
    alone = pol.generate(prompts[1:2], n=6, temperature=0.8, max_new_tokens=100, seed=7)
    assert alone[0] == a[1]


def test_child_prompt_changes_the_draw_and_greedy_repeats_one_answer():
    pol = policy()
    task = make_task()
    root = pol.generate([rewrite_prompt(task)], n=8, temperature=0.8, max_new_tokens=100, seed=0)[0]
    child = pol.generate([rewrite_prompt(task, BUGGY, "failed")], n=8, temperature=0.8, max_new_tokens=100, seed=0)[0]
    assert [s.text for s in root] != [s.text for s in child]
    greedy = pol.generate([rewrite_prompt(task)], n=4, temperature=0.0, max_new_tokens=100, seed=0)[0]
    assert len({s.text for s in greedy}) == 1


def test_mixture_proportions_over_many_samples():
    weights = {"reference": 0.2, "buggy": 0.3, "mutant": 0.4, "garbage": 0.1}
    pol = policy(p_reference=0.1, p_buggy=0.15, p_mutant=0.2, p_garbage=0.05)  # normalised by the backend
    prompts = [rewrite_prompt(make_task(i)) for i in range(40)]
    counts = Counter(
        classify(s.text) for group in pol.generate(prompts, n=50, temperature=1.0, max_new_tokens=100, seed=3)
        for s in group
    )
    total = sum(counts.values())
    assert total == 2000
    for category, p in weights.items():
        assert abs(counts[category] / total - p) < 0.04, (category, counts)


@pytest.mark.parametrize("category", ["reference", "buggy", "mutant", "garbage"])
def test_pure_mixtures_give_only_that_category(category):
    probs = {f"p_{c}": 1.0 if c == category else 0.0 for c in ("reference", "buggy", "mutant", "garbage")}
    samples = policy(**probs).generate([rewrite_prompt(make_task())], n=30, temperature=1, max_new_tokens=9, seed=1)
    assert {classify(s.text) for s in samples[0]} == {category}
    assert all(s.tokens > 0 and s.logprob is None for s in samples[0])


def test_zero_shot_answers_use_thought_code_format():
    samples = policy(p_garbage=0).generate([zero_shot_prompt(make_task())], n=10, temperature=1,
                                           max_new_tokens=50, seed=0)[0]
    for s in samples:
        assert s.text.startswith("THOUGHT: ") and "\nCODE:\n```python\n" in s.text
        assert extract_code(s.text, "clamp") is not None


RICH = (
    "def rises(xs):\n    total = 0\n    for i in range(1, len(xs)):\n"
    "        if xs[i] > xs[i - 1] and i % 2 == 0:\n            total += xs[i] - xs[i - 1]\n    return total\n"
)


@pytest.mark.parametrize("code, distinct", [(REFERENCE, 2), (RICH, 8)])
def test_mutants_parse_and_differ_from_the_original(code, distinct):
    rng = random.Random(0)
    seen = set()
    for _ in range(60):
        mutated = mutate(code, rng)
        assert mutated is not None
        ast.parse(mutated)
        assert mutated != ast.unparse(ast.parse(code)) + "\n"
        seen.add(mutated)
    # sites are all used: REFERENCE has 2 comparisons; RICH has comparisons, constants, operators, operands
    assert len(seen) >= distinct


def test_mutation_kinds():
    rng = random.Random(1)
    mutants = {mutate(RICH, rng) for _ in range(200)}
    assert any("range(2," in m for m in mutants)  # off-by-one constant
    assert any("xs[i] >= xs[i - 1]" in m for m in mutants)  # flipped comparison
    assert any(" or i % 2" in m for m in mutants)  # and -> or
    assert any("xs[i - 1] - xs[i]" in m for m in mutants)  # swapped operands
    assert mutate("x = (", rng) is None
    assert mutate("pass\n", rng) is None  # nothing to mutate


def critique(mode: str, candidates: list[str], seed: int = 0) -> str:
    """The full answer as a parser sees it: some reasoning, then the RANKING line last."""
    pol = policy(critique=mode)
    prompt = critique_prompt(make_task(), candidates)
    answer = pol.generate([prompt], n=1, temperature=0.2, max_new_tokens=50, seed=seed)[0][0].text
    assert prompt.answer_prefix + answer == answer  # no label forced in: the model has room to reason
    if mode != "garbage":
        assert not answer.startswith("RANKING") and answer.splitlines()[-1].startswith("RANKING:")
    return answer


CANDIDATES = [
    f"```python\n{BUGGY}```",                               # far from the reference
    f"```python\n{REFERENCE}```",                           # the reference itself
    f"```python\n{REFERENCE.replace('x < lo', 'x <= lo')}```",  # one token off
]


def test_truthful_critique_ranks_by_closeness_to_the_reference():
    assert parse_ranking(critique("truthful", CANDIDATES), 3) == [1, 2, 0]


def test_reverse_critique_is_the_truthful_order_reversed():
    assert parse_ranking(critique("reverse", CANDIDATES), 3) == [0, 2, 1]


def test_random_critique_is_a_seeded_permutation():
    orders = [parse_ranking(critique("random", CANDIDATES, seed), 3) for seed in range(12)]
    assert all(sorted(o) == [0, 1, 2] for o in orders)
    assert len({tuple(o) for o in orders}) > 1
    assert orders == [parse_ranking(critique("random", CANDIDATES, seed), 3) for seed in range(12)]


def test_garbage_critique_is_unusable():
    assert parse_ranking(critique("garbage", CANDIDATES), 3) is None


def test_errors_are_clear():
    with pytest.raises(PolicyError, match="must be above 0"):
        policy(p_reference=0, p_buggy=0, p_mutant=0, p_garbage=0)
    with pytest.raises(PolicyError, match="Prompt.task"):
        policy().generate([Prompt(messages=[{"role": "user", "content": "hi"}])], n=1, temperature=0,
                          max_new_tokens=5, seed=0)


def test_token_estimate_counts_the_prompt_once_per_request_and_greedy_copies_cost_nothing():
    from agentq.policy.base import Request, spent
    from agentq.policy.scripted import token_count

    prompt = rewrite_prompt(make_task())
    sampled, greedy = policy().generate_batch([Request(prompt, 4, 1.0, 50, 2), Request(prompt, 3, 0.0, 50, 2)])
    want = token_count(prompt.text())
    assert want > 50  # the prompt quotes the task's code: many words and symbols
    assert [s.prompt_tokens for s in sampled] == [want, 0, 0, 0] and [s.prompt_tokens for s in greedy] == [want, 0, 0]
    assert all(s.tokens == token_count(s.text) > 0 for s in sampled)
    assert greedy[0].tokens == token_count(greedy[0].text) and [s.tokens for s in greedy[1:]] == [0, 0]
    assert len({s.text for s in greedy}) == 1
    assert spent([sampled, greedy]) == (2 * want, sum(token_count(s.text) for s in sampled + greedy[:1]))
    assert token_count("def f(x):\n    return x_1 + 2") == 10
