"""Monte-Carlo tree search over full-rewrite candidates, after Agent Q (Putta et al., 2024).

The root is the buggy program; every other node is one candidate rewrite, tested in the sandbox the
moment it is proposed, so its reward (the fraction of tests passed) is known without a simulated
rollout. One rollout = select a leaf by UCB1, expand it with K rewrites conditioned on the leaf's code
and test feedback, let the model critique the K siblings, and back the K rewards up the path as a
running mean. The whole tree is kept, because preference pairs are built from sibling comparisons.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from agentq.config import CollectSpec, EvaluateSpec, RoundSpec
from agentq.policy.base import Policy
from agentq.policy.prompts import extract_code, rewrite_prompt
from agentq.sandbox.verdict import Verdict
from agentq.screening import screen
from agentq.search.critique import NEUTRAL_Q, critique_siblings
from agentq.tasks.schema import HIDDEN_TEST_PREFIX, Task


@dataclass(frozen=True)
class SearchParams:
    """Every knob of one search; recorded in each trajectory so runs can be compared and reproduced."""

    k: int = 2
    rollouts: int = 10
    depth: int = 2
    temperature: float = 0.8
    critique_temperature: float = 0.2
    exploration: float = 1.0
    alpha: float = 0.5
    stop_on_pass: bool = True
    max_new_tokens: int = 768
    seed: int = 0

    @classmethod
    def for_collect(cls, spec: RoundSpec) -> SearchParams:
        c: CollectSpec = spec.collect
        return cls(
            k=c.k, rollouts=c.rollouts, depth=c.depth, temperature=c.temperature,
            critique_temperature=c.critique_temperature, exploration=c.exploration,
            alpha=spec.preferences.alpha, stop_on_pass=c.stop_on_pass,
            max_new_tokens=spec.model.max_new_tokens, seed=c.seed,
        )

    @classmethod
    def for_evaluate(cls, spec: RoundSpec) -> SearchParams:
        e: EvaluateSpec = spec.evaluate
        return cls.for_collect(spec).replace(k=e.k, rollouts=e.rollouts, depth=e.depth, stop_on_pass=True)

    def replace(self, **changes: Any) -> SearchParams:
        return SearchParams(**{**asdict(self), **changes})


@dataclass
class Node:
    id: int
    parent: int | None
    depth: int
    prompt: list[dict[str, str]] = field(default_factory=list)
    completion: str = ""
    code: str | None = None
    verdict: Verdict | None = None
    reward: float = 0.0
    flags: list[str] = field(default_factory=list)
    q_ai: float = NEUTRAL_Q
    visits: int = 0
    value_sum: float = 0.0
    children: list[int] = field(default_factory=list)

    @property
    def q_mcts(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    @property
    def solved(self) -> bool:
        return self.verdict is not None and self.verdict.passed

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id, "parent": self.parent, "depth": self.depth, "prompt": self.prompt,
            "completion": self.completion, "code": self.code,
            "verdict": self.verdict.model_dump() if self.verdict else None,
            "reward": self.reward, "flags": self.flags, "q_mcts": self.q_mcts, "q_ai": self.q_ai, "visits": self.visits,
            "children": self.children,
        }


def blended_q(q_mcts: float, q_ai: float, alpha: float) -> float:
    return alpha * q_mcts + (1 - alpha) * q_ai


def ucb1(child: Node, parent_visits: int, params: SearchParams) -> float:
    if child.visits == 0:
        return math.inf
    explore = params.exploration * math.sqrt(math.log(max(parent_visits, 1)) / child.visits)
    return blended_q(child.q_mcts, child.q_ai, params.alpha) + explore


def node_seed(seed: int, task_id: str, node_id: int) -> int:
    """A per-expansion seed that depends only on the run seed, the task and the node, not on call order."""
    return zlib.crc32(f"{seed}/{task_id}/{node_id}".encode())


class Executor(Protocol):
    """What MCTS needs from a sandbox (LocalExecutor and RemoteExecutor both provide it)."""

    def run_many(self, jobs: list[tuple[str, str]]) -> list[Verdict]: ...


@dataclass
class SearchStats:
    samples: int = 0
    executions: int = 0
    parse_errors: int = 0
    critique_calls: int = 0
    critique_fallbacks: int = 0
    rollouts: int = 0
    wall_s: float = 0.0


class Search:
    """One task's tree. `run()` spends the rollout budget; `record()` is what the trajectory file stores."""

    def __init__(self, task: Task, policy: Policy, executor: Executor, params: SearchParams,
                 critic: Policy | None = None, reward_tests: str | None = None) -> None:
        """`reward_tests` defaults to visible + hidden tests (collection); evaluation searches on visible
        tests only and judges the final answer on all of them."""
        self.task, self.policy, self.executor, self.params = task, policy, executor, params
        self.critic = critic or policy
        self.reward_tests = reward_tests if reward_tests is not None else task.all_tests()
        self.nodes: list[Node] = [Node(id=0, parent=None, depth=0, code=task.buggy_code)]
        self.stats = SearchStats()

    @property
    def solved(self) -> bool:
        return any(n.solved for n in self.nodes)

    def select(self) -> list[Node]:
        """Path from the root to a leaf, choosing children by UCB1 (ties: lowest id, for determinism)."""
        path = [self.nodes[0]]
        while path[-1].children:
            parent = path[-1]
            kids = [self.nodes[i] for i in parent.children]
            path.append(max(kids, key=lambda c: (ucb1(c, parent.visits, self.params), -c.id)))
        return path

    def expandable(self, node: Node) -> bool:
        return node.depth < self.params.depth and not node.solved

    def expand(self, leaf: Node) -> list[Node]:
        """Propose K rewrites of the leaf, test each at once, and critique them as siblings."""
        p = self.params
        if leaf.parent is None:
            prompt = rewrite_prompt(self.task)
        else:
            prompt = rewrite_prompt(self.task, parent_code=leaf.code,
                                    parent_feedback=visible_feedback(leaf.verdict))
        seed = node_seed(p.seed, self.task.id, leaf.id)
        samples = self.policy.generate([prompt], n=p.k, temperature=p.temperature,
                                       max_new_tokens=p.max_new_tokens, seed=seed)[0]
        self.stats.samples += len(samples)
        children = []
        for sample in samples:
            node = Node(id=len(self.nodes), parent=leaf.id, depth=leaf.depth + 1, prompt=prompt.messages,
                        completion=sample.text, code=extract_code(sample.text, self.task.entry_point))
            self.nodes.append(node)
            leaf.children.append(node.id)
            children.append(node)
        self._test(children)
        self._critique(children, seed)
        return children

    def _test(self, children: list[Node]) -> None:
        runnable = [c for c in children if c.code is not None]
        verdicts = self.executor.run_many([(c.code, self.reward_tests) for c in runnable]) if runnable else []
        self.stats.executions += len(runnable)
        for child, verdict in zip(runnable, verdicts, strict=True):
            child.verdict, child.reward = verdict, verdict.reward
            child.flags = screen(self.task, child.code, verdict)
        for child in children:
            if child.code is None:
                self.stats.parse_errors += 1
                child.verdict = Verdict(status="parse_error", message="no Python program found in the answer")
                child.reward = 0.0

    def _critique(self, children: list[Node], seed: int) -> None:
        codes = [c.code or c.completion for c in children]
        if len(codes) < 2:
            return
        critique = critique_siblings(self.critic, self.task, codes, temperature=self.params.critique_temperature,
                                     max_new_tokens=64, seed=seed + 1)
        self.stats.critique_calls += 1
        self.stats.critique_fallbacks += not critique.usable
        for child, q in zip(children, critique.q_ai, strict=True):
            child.q_ai = q

    def backpropagate(self, path: list[Node], rewards: list[float]) -> None:
        """Each reward counts as one visit of every node on the path (a running mean of returns)."""
        for node in path:
            node.visits += len(rewards)
            node.value_sum += sum(rewards)

    def rollout(self) -> None:
        path = self.select()
        leaf = path[-1]
        if self.expandable(leaf):
            children = self.expand(leaf)
            for child in children:
                child.visits, child.value_sum = 1, child.reward
            self.backpropagate(path, [c.reward for c in children])
        else:
            self.backpropagate(path, [leaf.reward])
        self.stats.rollouts += 1

    def run(self) -> Search:
        start = time.perf_counter()
        for _ in range(self.params.rollouts):
            if self.params.stop_on_pass and self.solved:
                break
            if not any(self.expandable(n) for n in self.nodes if not n.children):
                break  # every leaf is terminal: more rollouts would only re-count known rewards
            self.rollout()
        self.stats.wall_s += time.perf_counter() - start
        return self

    def best(self) -> Node | None:
        """The candidate to answer with: a full pass if any, else the highest reward (earliest on ties)."""
        candidates = [n for n in self.nodes[1:] if n.code is not None]
        return max(candidates, key=lambda n: (n.reward, -n.id), default=None)

    def record(self) -> dict[str, Any]:
        return {
            "task_id": self.task.id, "group": self.task.group, "params": asdict(self.params),
            "solved": self.solved, "stats": asdict(self.stats),
            "nodes": [n.to_record() for n in self.nodes],
        }


def visible_feedback(verdict: Verdict | None) -> str | None:
    """Feedback for the next prompt, from visible tests only: hidden test inputs must never reach a prompt."""
    if verdict is None:
        return None
    return verdict.feedback(hide_prefix=HIDDEN_TEST_PREFIX)
