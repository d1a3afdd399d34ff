"""Monte-Carlo tree search over full-rewrite candidates, after Agent Q (Putta et al., 2024).

The root is the buggy program, run once so that depth-1 prompts carry its test feedback; every other
node is one candidate rewrite, tested in the sandbox the moment it is proposed, so its reward (the
fraction of tests passed) is known without a simulated rollout. One rollout = one expansion: walk down
by UCB1 through children that can still grow, expand the node reached with K rewrites conditioned on its
code and test feedback, let the model critique the siblings, and back the K rewards up the path as a
running mean. A node whose children can no longer grow (depth limit, solved, no program) is widened
with K more children instead, so a tree always spends `rollouts` expansions unless it stops on a pass.
The whole tree is kept, because preference pairs are built from sibling comparisons.

What a candidate is depends on the task's kind, and only the tree's `Problem` knows it (agentq/search/
problems.py): a full rewrite of a function, or a patch against a repository whose prompts carry the earlier
attempts on the path with their reflection category (with K=1 the tree is the reflection loop's chain).
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from agentq.config import CollectSpec, EvaluateSpec, RoundSpec
from agentq.policy.base import Policy, Request, Sample, spent
from agentq.sandbox.verdict import Verdict, safe_text
from agentq.search.critique import NEUTRAL_Q, Critique, CritiqueGate, critique_requests, read_critique
from agentq.search.problems import Problem, problem_for
from agentq.tasks.schema import AnyTask


@dataclass(frozen=True)
class SearchParams:
    """Every knob of one search; recorded in each trajectory so runs can be compared and reproduced."""

    k: int = 2
    root_k: int | None = None  # K for expansions of the root (None: k); a wider root gives more siblings
    rollouts: int = 10
    depth: int = 2
    temperature: float = 0.8
    critique_temperature: float = 0.2
    exploration: float = 1.0
    alpha: float = 0.5
    stop_on_pass: bool = True
    max_new_tokens: int = 768
    critique_max_new_tokens: int = 256
    critique: bool = True  # False: no critique calls, every Q_ai stays neutral
    seed: int = 0

    @classmethod
    def _mcts(cls, spec: RoundSpec) -> SearchParams:
        c: CollectSpec = spec.collect
        return cls(
            k=c.k, root_k=c.root_k, rollouts=c.rollouts, depth=c.depth, temperature=c.temperature,
            critique_temperature=c.critique_temperature, exploration=c.exploration,
            alpha=spec.preferences.alpha, stop_on_pass=c.stop_on_pass,
            max_new_tokens=spec.model.max_new_tokens, critique_max_new_tokens=c.critique_max_new_tokens,
            critique=c.critic != "none", seed=c.seed,
        )

    @classmethod
    def for_collect(cls, spec: RoundSpec) -> SearchParams:
        params, c = cls._mcts(spec), spec.collect
        return params.reflection(c.attempts) if c.strategy == "reflection" else params

    def reflection(self, attempts: int) -> SearchParams:
        """The reflection loop as a search: one child per node, so the tree is a chain of `attempts` attempts,
        each prompted with its ancestors'; no siblings to critique; it stops at the first pass."""
        return self.replace(k=1, root_k=1, depth=attempts, rollouts=attempts, critique=False, stop_on_pass=True)

    @classmethod
    def for_evaluate(cls, spec: RoundSpec) -> SearchParams:
        """The evaluation budget (evaluate.k/rollouts/depth), or the reflection chain when the round's evaluation
        strategy is reflection (`evaluation_strategy`)."""
        e: EvaluateSpec = spec.evaluate
        strategy, attempts = evaluation_strategy(spec)
        if strategy == "reflection":
            return cls._mcts(spec).reflection(attempts)
        return cls._mcts(spec).replace(k=e.k, root_k=None, rollouts=e.rollouts, depth=e.depth, stop_on_pass=True)

    def replace(self, **changes: Any) -> SearchParams:
        return SearchParams(**{**asdict(self), **changes})


def evaluation_strategy(spec: RoundSpec) -> tuple[str, int]:
    """(strategy, attempts) of evaluate's mcts mode: evaluate.strategy/attempts, else collect's."""
    e, c = spec.evaluate, spec.collect
    return e.strategy or c.strategy, e.attempts or c.attempts


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
    category: str | None = None  # repo tasks: the reflection taxonomy's name for the attempt
    feedback: str | None = None  # repo tasks: the output a child's prompt quotes
    q_ai: float = NEUTRAL_Q
    q_ai_votes: list[float] = field(default_factory=list)
    batch: int = 0  # the expansion that made this node; critique votes compare only within one
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
            "reward": self.reward, "flags": self.flags,
            **({"category": self.category, "feedback": self.feedback} if self.category else {}),
            "q_mcts": self.q_mcts, "q_ai": self.q_ai,
            "q_ai_votes": self.q_ai_votes, "batch": self.batch, "visits": self.visits,
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

    def run_many(self, jobs: list[Any]) -> list[Verdict]: ...


@dataclass
class Generate:
    """A tree waits for these generations from `policy` (the policy itself, or its critic)."""

    policy: Policy
    requests: list[Request]

    def serve(self) -> list[list[Sample]]:
        return self.policy.generate_batch(self.requests)


@dataclass
class Run:
    """A tree waits for these runs in the sandbox (function jobs, or repo jobs through a Runner)."""

    executor: Executor
    jobs: list[Any]

    def serve(self) -> list[Verdict]:
        return self.executor.run_many(self.jobs)


Need = Generate | Run


@dataclass
class SearchStats:
    samples: int = 0
    executions: int = 0
    parse_errors: int = 0
    critique_calls: int = 0
    critique_fallbacks: int = 0
    critique_flips: int = 0
    rollouts: int = 0  # expansions spent: the budget `rollouts` counts these
    wall_s: float = 0.0
    tokens_in: int = 0  # prompt tokens of every expansion and critique request (agentq/policy/base.py: spent)
    tokens_out: int = 0  # completion tokens of their samples


class Search:
    """One task's tree. `run()` spends the rollout budget; `record()` is what the trajectory file stores."""

    def __init__(self, task: AnyTask, policy: Policy, executor: Executor, params: SearchParams,
                 critic: Policy | None = None, visible_only: bool = False, gate: CritiqueGate | None = None) -> None:
        """Rewards come from all of a task's tests (collection); evaluation searches with `visible_only` and
        judges the final answer on all of them. `gate`, shared by a shard's trees, stops the critique once the
        critic has shown it cannot rank."""
        self.task, self.policy, self.executor, self.params = task, policy, executor, params
        self.critic, self.gate = critic or policy, gate
        self.problem: Problem = problem_for(task, executor, visible_only)
        self.nodes: list[Node] = [Node(id=0, parent=None, depth=0, code=self.problem.root_code())]
        # A problem may judge its root without a run (an honest repo evaluation runs no hidden test before the end).
        self.nodes[0].verdict = getattr(self.problem, "root_verdict", lambda: None)()
        self.stats = SearchStats()

    @property
    def solved(self) -> bool:
        """A candidate passes (the root is the buggy program, never an answer)."""
        return any(n.solved for n in self.nodes[1:])

    def select(self) -> list[Node]:
        """Path from the root to the node to expand: descend by UCB1 (ties: lowest id, for determinism)
        through children that can still grow; stop where none can, and expand (or widen) that node."""
        path = [self.nodes[0]]
        while True:
            parent = path[-1]
            kids = [self.nodes[i] for i in parent.children if self.expandable(self.nodes[i])]
            if not kids:
                return path
            path.append(max(kids, key=lambda c: (ucb1(c, parent.visits, self.params), -c.id)))

    def expandable(self, node: Node) -> bool:
        """Below the depth limit, not solved, and something the problem can improve on."""
        return node.depth < self.params.depth and not node.solved and self.problem.can_grow(node)

    def path_to(self, node: Node) -> list[Node]:
        path = [node]
        while path[-1].parent is not None:
            path.append(self.nodes[path[-1].parent])
        return path[::-1]

    def expansion(self, leaf: Node) -> Request:
        """The request for K candidates from the leaf, conditioned on its path (the problem writes the prompt)."""
        p = self.params
        prompt = self.problem.prompt(self.path_to(leaf))
        k = p.root_k if leaf.parent is None and p.root_k else p.k
        # A widened node draws a fresh batch: its seed also counts the children it already has.
        seed = node_seed(p.seed, self.task.id, leaf.id) + len(leaf.children)
        return Request(prompt, k, p.temperature, p.max_new_tokens, seed)

    def add_children(self, leaf: Node, request: Request, samples: list[Sample]) -> list[Node]:
        self.stats.samples += len(samples)
        children = []
        for sample in samples:
            text = safe_text(sample.text)  # the answer goes on into prompts, JSON and the trainer's tokenizer
            reading = self.problem.read(text)
            node = Node(id=len(self.nodes), parent=leaf.id, depth=leaf.depth + 1, prompt=request.prompt.messages,
                        completion=text, code=reading.code, verdict=reading.verdict,
                        category=reading.category, feedback=reading.feedback, batch=self.stats.rollouts)
            self.nodes.append(node)
            leaf.children.append(node.id)
            children.append(node)
        return children

    @staticmethod
    def runnable(children: list[Node]) -> list[Node]:
        """Children to run: those whose answer was not already judged while reading it."""
        return [c for c in children if c.verdict is None]

    def take_verdicts(self, children: list[Node], verdicts: list[Verdict]) -> None:
        """Verdicts of the runnable children, in order; the others were judged when read (parse errors)."""
        runnable = self.runnable(children)
        self.stats.executions += len(runnable)
        for child, verdict in zip(runnable, verdicts, strict=True):
            child.verdict, child.reward = verdict, verdict.reward
            self.problem.judged(child)
        for child in children:
            if child not in runnable:
                assert child.verdict is not None
                self.stats.parse_errors += child.verdict.status == "parse_error"
                child.reward = 0.0

    def count_tokens(self, groups: list[list[Sample]]) -> None:
        """Add what one generation call for this tree cost (an expansion or its critique) to the tree's stats."""
        tokens_in, tokens_out = spent(groups)
        self.stats.tokens_in += tokens_in
        self.stats.tokens_out += tokens_out

    def critique(self, siblings: list[Node], seed: int) -> list[Request]:
        """Requests that rank one batch of siblings as the problem shows them: function rewrites with their visible
        test results, patches with their reflection category and failing output (fewer than two: no critique).

        A widened node's new batch is critiqued on its own (prompts stay K candidates long); each node
        records its batch, so critique votes are only ever compared within one judgement.
        """
        if len(siblings) < 2 or not self.params.critique or (self.gate is not None and self.gate.off):
            return []
        return critique_requests(self.problem.critique_prompt, siblings, temperature=self.params.critique_temperature,
                                 max_new_tokens=self.params.critique_max_new_tokens, seed=seed + 1)

    def take_critique(self, siblings: list[Node], critique: Critique) -> None:
        self.stats.critique_calls += len(critique.votes[0])
        self.stats.critique_fallbacks += len(critique.votes[0]) - critique.usable
        self.stats.critique_flips += critique.flipped
        for child, q, votes in zip(siblings, critique.q_ai, critique.votes, strict=True):
            child.q_ai, child.q_ai_votes = q, votes

    def backpropagate(self, path: list[Node], rewards: list[float]) -> None:
        """Each reward counts as one visit of every node on the path (a running mean of returns)."""
        for node in path:
            node.visits += len(rewards)
            node.value_sum += sum(rewards)

    def steps(self) -> Generator[Need, list[list[Sample]] | list[Verdict], Search]:
        """The search as a sequence of needs: each yield asks for generations or sandbox runs and receives
        their results. `run` serves them one at a time; the scheduler serves many trees' needs in one call.

        Spends the budget: exactly `rollouts` expansions, fewer only on a pass with `stop_on_pass`.
        """
        start = time.perf_counter()
        root = self.nodes[0]
        if root.verdict is None:  # the buggy program's own results feed the depth-1 prompts
            root.verdict = (yield Run(self.executor, [self.problem.job(root.code or "")]))[0]
            root.reward = root.verdict.reward
            self.stats.executions += 1
        while self.stats.rollouts < self.params.rollouts:
            if self.params.stop_on_pass and self.solved:
                break
            if not self.expandable(root):
                break  # the buggy program already passes (or the depth limit is 0): nothing to search
            # One rollout: select, expand with K rewrites, test them, critique them, back the rewards up.
            path = self.select()
            request = self.expansion(path[-1])
            samples = (yield Generate(self.policy, [request]))[0]
            self.count_tokens([samples])
            children = self.add_children(path[-1], request, samples)
            jobs = [self.problem.job(c.code or "") for c in self.runnable(children)]
            self.take_verdicts(children, (yield Run(self.executor, jobs)) if jobs else [])
            critique = self.critique(children, request.seed)
            if critique:
                answers = yield Generate(self.critic, critique)
                self.count_tokens(answers)
                judged = read_critique(critique, answers)
                if self.gate is not None:
                    self.gate.record(judged)
                self.take_critique(children, judged)
            for child in children:
                child.visits, child.value_sum = 1, child.reward
            self.backpropagate(path, [c.reward for c in children])
            self.stats.rollouts += 1
        self.stats.wall_s += time.perf_counter() - start
        return self

    def run(self) -> Search:
        """The whole search, each need served on its own (the sequential path)."""
        steps = self.steps()
        try:
            need = next(steps)
            while True:
                need = steps.send(need.serve())
        except StopIteration as done:
            return done.value

    def best(self) -> Node | None:
        """The candidate to answer with: a full pass if any, else the highest reward (earliest on ties)."""
        candidates = [n for n in self.nodes[1:] if n.code is not None]
        return max(candidates, key=lambda n: (n.reward, -n.id), default=None)

    def record(self) -> dict[str, Any]:
        return {
            "task_id": self.task.id, "group": self.task.group, "params": asdict(self.params),
            "solved": self.solved, "stats": asdict(self.stats),
            "nodes": [n.to_record() for n in self.nodes], **self.problem.notes,
        }

