"""AI self-critique: the model ranks sibling rewrites, and the ranking becomes Q_ai in [0, 1].

Agent Q uses the model's own judgement of sibling actions as a second value signal beside the search
return, because sparse pass/fail rewards alone separate few siblings. A critique answer the parser
cannot use must not stall or bias the search, so it falls back to a neutral value and is counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentq.policy.base import Policy
from agentq.policy.prompts import critique_prompt, parse_ranking
from agentq.tasks.schema import Task

NEUTRAL_Q = 0.5


def rank_to_q(ranking: list[int]) -> list[float]:
    """Best-first ranking of k candidates -> Q_ai per candidate index: best 1.0, worst 0.0, linear between."""
    k = len(ranking)
    if sorted(ranking) != list(range(k)):
        raise ValueError(f"ranking must be a permutation of 0..{k - 1}, got {ranking}")
    if k == 1:
        return [NEUTRAL_Q]
    q = [0.0] * k
    for position, index in enumerate(ranking):
        q[index] = (k - 1 - position) / (k - 1)
    return q


@dataclass
class Critique:
    q_ai: list[float]
    answer: str
    usable: bool


def critique_siblings(
    policy: Policy, task: Task, candidates: list[str], *, temperature: float, max_new_tokens: int, seed: int
) -> Critique:
    """Ask the model to rank the candidates; an unusable answer gives every sibling the neutral Q."""
    if len(candidates) < 2:
        return Critique([NEUTRAL_Q] * len(candidates), "", True)
    prompt = critique_prompt(task, candidates)
    answer = policy.generate([prompt], n=1, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)[0][0]
    ranking = parse_ranking(prompt.answer_prefix + answer.text, len(candidates))
    if ranking is None:
        return Critique([NEUTRAL_Q] * len(candidates), answer.text, False)
    return Critique(rank_to_q(ranking), answer.text, True)
