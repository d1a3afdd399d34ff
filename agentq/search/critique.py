"""AI self-critique: the model ranks sibling rewrites, and the ranking becomes Q_ai in [0, 1].

Agent Q uses the model's own judgement of sibling actions as a second value signal beside the search
return. Judges, small models above all, favour a position (11 of 11 quickstart critiques put candidate 1
first), so each set of K siblings is judged in every cyclic rotation of the order (K judgements; for K = 2,
the shown order and its reverse): each candidate sits in each slot exactly once. The judgements are kept as
votes, Q_ai is their mean, and a preference between two siblings counts only when every vote agrees
(`consistent_preference`). A judge that prefers a slot, whichever slot (the first, the last, the middle one),
then never yields a preference: for a fixed ranking of slots, no slot can outrank the slot d places after it
in every rotation (that would be a cycle of strict inequalities). Reversing the order alone cancels only a
first- or last-slot bias: a judge fond of the middle slot kept the middle candidate ahead of both others.
A critique answer the parser cannot use gives a neutral vote and is counted, so it can neither stall nor
bias the search. A model that cannot rank at all (SmolLM2-135M reached `RANKING:` in 0 of 16 critiques)
only spends generation on neutral votes: a shard's `CritiqueGate` stops asking it after a few unusable
judgements and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from agentq.policy.base import Prompt, Request, Sample
from agentq.policy.prompts import parse_ranking

C = TypeVar("C")

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


def consistent_preference(votes_a: Sequence[float], votes_b: Sequence[float]) -> int:
    """+1 when every judgement ranks a above b, -1 when every one ranks b above a, 0 otherwise.

    A single judgement is not enough: without the reversed order nobody can tell a preference from a
    position bias.
    """
    if len(votes_a) < 2 or len(votes_a) != len(votes_b):
        return 0
    gaps = [a - b for a, b in zip(votes_a, votes_b, strict=True)]
    if all(g > 0 for g in gaps):
        return 1
    if all(g < 0 for g in gaps):
        return -1
    return 0


def _flips(votes_a: Sequence[float], votes_b: Sequence[float]) -> bool:
    """One judgement put a above b and another put b above a: the order decided, not the candidates."""
    gaps = [a - b for a, b in zip(votes_a, votes_b, strict=True)]
    return any(g > 0 for g in gaps) and any(g < 0 for g in gaps)


@dataclass
class Critique:
    q_ai: list[float]  # per candidate: mean of its votes
    votes: list[list[float]]  # per candidate: Q_ai from each judgement (shown order, reversed order)
    answers: list[str]
    usable: int  # judgements the parser could read
    flipped: int  # sibling pairs whose order changed with the presentation order


def critique_requests(build: Callable[[list[C]], Prompt], candidates: list[C], *, temperature: float,
                      max_new_tokens: int, seed: int) -> list[Request]:
    """The k judgements (every cyclic rotation of the order) of k >= 2 candidates, as requests for one batched call.

    `build` writes the prompt that shows the candidates in the order given; what a candidate is (a function
    rewrite with its test results, a patch with its reflection category) is the task kind's business."""
    return [Request(build([candidates[i] for i in order]), 1, temperature, max_new_tokens, seed)
            for order in _orders(len(candidates))]


def _orders(k: int) -> list[list[int]]:
    """Every cyclic rotation of 0..k-1: each candidate in each slot once (k = 2: shown and reversed)."""
    return [[(start + i) % k for i in range(k)] for start in range(k)]


@dataclass
class CritiqueGate:
    """A shard's running count of critique judgements the parser could read; once `after` judgements have
    been made and at most `min_share` of them were usable, the critic is not asked again (every later Q_ai
    stays neutral) and `warning` says so once. Pairs never depend on it: the tests decide them."""

    after: int = 8
    min_share: float = 0.25
    judgements: int = 0
    usable: int = 0
    off: bool = False
    warning: str | None = None

    def record(self, critique: Critique) -> None:
        self.judgements += len(critique.answers)
        self.usable += critique.usable
        if not self.off and self.judgements >= self.after and self.usable <= self.min_share * self.judgements:
            self.off = True
            self.warning = (f"the critic gave a usable ranking in {self.usable} of {self.judgements} judgements; "
                            "critique is off for the rest of this shard (Q_ai neutral, pairs decided by the "
                            "tests as always); set collect.critic: none to skip it from the start")


def read_critique(requests: list[Request], answers: list[list[Sample]]) -> Critique:
    """Q_ai votes from the answers to `critique_requests`; an unreadable answer votes neutral."""
    k = len(requests[0].prompt.candidates)
    votes: list[list[float]] = [[] for _ in range(k)]
    usable = 0
    for order, request, answer in zip(_orders(k), requests, answers, strict=True):
        ranking = parse_ranking(request.prompt.answer_prefix + answer[0].text, k)
        if ranking is None:
            q_shown = [NEUTRAL_Q] * k
        else:
            usable += 1
            q_shown = rank_to_q(ranking)
        for position, index in enumerate(order):
            votes[index].append(q_shown[position])
    flipped = sum(_flips(votes[a], votes[b]) for a in range(k) for b in range(a + 1, k))
    return Critique([sum(v) / len(v) for v in votes], votes, [a[0].text for a in answers], usable, flipped)
