"""A repo task as a search problem (agentq/search/problems.py): candidates are patches, prompts are repairs.

The root is the empty patch on the buggy tree. A node's prompt is the issue, the localised code and every
earlier attempt on its path with its reflection category and failing output (`repair_messages`), so the same
`Search` is the reflection loop when K=1 (each node's one child sees the whole chain) and an MCTS over
patches when K>1 (a child sees its own ancestors, never its siblings). An answer is read into a patch by
agentq/repair/patch.py against the buggy tree; one that does not parse is a parse failure (reward 0, counted
apart), one that does not apply, changes nothing or does not compile is judged without a run (reward 0), and
the rest go to the repository executor through the Runner (`RepoJob`). Every attempt, run or not, can still
be reflected on, so every node may grow. Siblings (K>1) are critiqued as their diffs with their category and
failing output (`critique_messages`): what the repair prompts show, never the tests' source or the bug patch.

Localisation runs once per task, when its search is made, from the issue text alone (never the failing tests'
ids). With the round's model (fitted at the start of collect on the round's training repo tasks:
agentq/repair/localization.py) `Localizer.locate` ranks the files and the prompt gets its conformal prediction
set; without one the files are ranked by BM25 alone, which untrained RRF with the other stages did not beat
(docs/benchmarks.md, localization on repo tasks), and the prompt gets the CONTEXT_FILES best. Every prompt
holds to the round's token budget (`localize.promptTokens`): the issue at most ISSUE_SHARE of it, earlier
attempts at most ATTEMPT_SHARE (oldest left out first), and the code the rest, filled by priority
(agentq/repair/context.py: skeletons of the set's files, then whole functions, most relevant first).

Evaluation is honest (`honest`, what `visible_only` means for a repo task): the agent sees what a developer
would, the issue, the code, and the results of tests it writes itself. Its answers may create
REPRODUCTION_FILE, which runs (alone) against the patched tree; that is the only run during the search, its
output the only feedback, and its result the reward that picks the answer. The task's fail-to-pass and
pass-to-pass tests are run once, on the final answer (without the reproduction file). Collection keeps the
judged tests' results as feedback and reward (the records say which: `feedback` in the notes).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agentq.localize.pipeline import Localizer, fuse
from agentq.localize.repo import Repository
from agentq.policy.base import Prompt
from agentq.repair.context import budgeted_context, estimate_tokens
from agentq.repair.patch import ApplyError, ParseError, Patch, answer_to_patch
from agentq.repair.reflection import (
    REPRODUCTION_FILE,
    Category,
    RunOutcome,
    categorize,
    critique_messages,
    failing_output,
    prompt_tokens,
    repair_messages,
    syntax_errors,
)
from agentq.sandbox.repo import apply_patch, copy_tree
from agentq.sandbox.runner import RepoJob
from agentq.sandbox.verdict import Verdict
from agentq.search.problems import Reading
from agentq.tasks.schema import RepoTask

if TYPE_CHECKING:
    from agentq.localize.dense import Embedder
    from agentq.repair.localization import RoundLocalization
    from agentq.search.mcts import Node

CONTEXT_FILES = 3
RANKING_STAGES = ("bm25",)
DEFAULT_PROMPT_TOKENS = 8192
ISSUE_SHARE = 0.25
ATTEMPT_SHARE = 0.3
FEEDBACK = {True: "own reproduction tests (the task's tests judged once, on the final answer)",
            False: "the task's fail-to-pass and pass-to-pass tests"}


def run_outcome(verdict: Verdict) -> RunOutcome:
    """A repository verdict (agentq.sandbox.repo.RepoVerdict) as the taxonomy reads it (mapping in
    agentq/repair/reflection.py's docstring)."""
    status = getattr(verdict, "patch_status", "applied")
    applied = status not in ("failed", "refused")
    f2p_total = getattr(verdict, "f2p_total", 0)
    return RunOutcome(
        applied=applied, apply_error="" if applied else verdict.message,
        timed_out=verdict.status == "timeout",
        crashed=(applied and verdict.status in ("error", "killed", "memory"))
        or verdict.message.startswith("pytest did not finish"),
        fail_to_pass={t.name: t.passed for t in verdict.tests[:f2p_total]},
        pass_to_pass={t.name: t.passed for t in verdict.tests[f2p_total:]},
        output="\n".join(x for x in (verdict.message, verdict.stderr_tail) if x.strip()),
    )


def buggy_tree(task: RepoTask, runner: Any) -> Path:
    """The task's buggy tree (pristine + bug patch), made once beside the runner's pristine trees: patches are
    read against it and localisation indexes it. Never run in; the executor copies the pristine tree itself."""
    store = getattr(runner, "repos", None)
    if store is None or not hasattr(store, "pristine"):
        raise ValueError(f"task {task.task_id}: a repo task needs a runner with a local repository store "
                         "(spec.dataset.repoData)")
    pristine = store.pristine(task.repo.model_dump(exclude_none=True))
    key = hashlib.sha256(f"{pristine.name}\0{task.bug_patch}".encode()).hexdigest()[:16]
    tree = pristine.parent / "buggy" / key
    if tree.is_dir():
        return tree
    tree.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=tree.parent))
    try:
        copy_tree(pristine, scratch / "t")
        if task.bug_patch.strip() and apply_patch(scratch / "t", task.bug_patch) == "failed":
            raise ValueError(f"task {task.task_id}: its bug_patch does not apply to {pristine.name}")
        with contextlib.suppress(OSError):  # another process made it first: keep theirs
            (scratch / "t").rename(tree)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return tree


def tree_localizer(tree: Path, embedder: Embedder | None = None) -> Localizer:
    """A Localizer over a buggy tree. The dense stage's embeddings are cached beside the trees: the round's
    localisation fit and the task's own prompt index the same tree, which is then embedded once."""
    cache = tree.parent.parent / "embeddings" if embedder is not None else None
    return Localizer(Repository.scan(tree), embedder, cache_dir=cache)


def clip_issue(issue: str, tokens: int) -> str:
    """The issue cut to `tokens` (estimated), said so where it is cut."""
    if estimate_tokens(issue) <= tokens:
        return issue
    return issue[: int(tokens * 2.5) - 40].rsplit("\n", 1)[0] + "\n[... the rest of the report is cut]"


def localised_context(tree: Path, task: RepoTask, localization: RoundLocalization | None = None,
                      tokens: int = DEFAULT_PROMPT_TOKENS) -> tuple[dict[str, str], dict]:
    """The prompt's code within `tokens` (estimated): with the round's model, its conformal prediction set (a
    confident ranking shows fewer files); without one, the CONTEXT_FILES best by RANKING_STAGES; skeletons
    first, then whole functions (agentq/repair/context.py). Also what the tree's record notes about it."""
    model = localization.model if localization is not None else None
    localizer = tree_localizer(tree, localization.embedder if localization is not None else None)
    if not localizer.paths:
        return {}, {"by": "none", "files": []}
    if model is not None:
        chosen = localizer.locate(task.issue, [], model).prediction_set
    else:
        scores = fuse(localizer.evidence(task.issue, []), RANKING_STAGES, localizer.paths)
        chosen = [localizer.paths[i] for i in np.argsort(-scores, kind="stable")[:CONTEXT_FILES]]
    context, shown = budgeted_context(chosen, localizer.repo.files, task.issue, tokens)
    notes = {"by": "model" if model is not None else "+".join(RANKING_STAGES), **shown}
    return context, notes | ({"set_size": len(chosen)} if model is not None else {})


def reproduction_tests(patch: Patch) -> list[str]:
    """Node ids of the test functions an answer's REPRODUCTION_FILE defines (none: nothing to run)."""
    text = patch.new_text.get(REPRODUCTION_FILE)
    if text is None:
        return []
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    return [f"{REPRODUCTION_FILE}::{node.name}" for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")]


def without_reproduction(diff: str) -> str:
    """The diff less its REPRODUCTION_FILE section: the fix the task's tests judge."""
    sections = re.split(r"(?m)^(?=diff --git )", diff)
    return "".join(s for s in sections if not s.startswith(f"diff --git a/{REPRODUCTION_FILE} "))


class RepoProblem:
    def __init__(self, task: RepoTask, tree: Path, context: dict[str, str], localization: dict | None = None,
                 honest: bool = False, prompt_tokens: int = DEFAULT_PROMPT_TOKENS, issue: str | None = None) -> None:
        self.task, self.tree, self.context, self.honest = task, tree, context, honest
        self.budget, self.issue = prompt_tokens, issue if issue is not None else task.problem_text()
        self.notes: dict[str, Any] = {"feedback": FEEDBACK[honest]}
        if localization:
            self.notes["localization"] = localization
        self.suspects = set(context)
        self._patches: dict[str, Patch] = {}
        self._reproductions: dict[str, list[str]] = {}

    @classmethod
    def build(cls, task: RepoTask, runner: Any, honest: bool = False) -> RepoProblem:
        """The problem with its prompt's parts sized to the budget: the issue, then the code in what is left
        beside the fixed text and the reserve for earlier attempts."""
        localization = getattr(runner, "localization", None)
        budget = getattr(localization, "prompt_tokens", DEFAULT_PROMPT_TOKENS)
        tree = buggy_tree(task, runner)
        issue = clip_issue(task.problem_text(), int(budget * ISSUE_SHARE))
        fixed = prompt_tokens(repair_messages(issue, {}, honest=honest))
        code_tokens = max(0, budget - fixed - int(budget * ATTEMPT_SHARE))
        context, notes = localised_context(tree, task, localization, code_tokens)
        return cls(task, tree, context, notes, honest, budget, issue)

    def root_code(self) -> str:
        return ""  # the empty patch: the buggy tree as it is

    def root_verdict(self) -> Verdict | None:
        """Honest: the root is not run (its only tests are the hidden ones); collection runs it (None)."""
        return Verdict(status="error", message="not run: the task's tests are judged only on the final answer") \
            if self.honest else None

    def job(self, code: str) -> RepoJob:
        """A run of a candidate: collection, on the task's tests; honest, on its own reproduction tests alone."""
        if not self.honest:
            return RepoJob(self.task, code)
        visible = self.task.model_copy(update={"fail_to_pass": self._reproductions[code], "pass_to_pass": []})
        return RepoJob(visible, code)

    def prompt(self, path: list[Node]) -> Prompt:
        attempts = [(n.completion, Category(n.category), n.feedback or "") for n in path[1:] if n.category]
        messages = repair_messages(self.issue, self.context, attempts, honest=self.honest, budget=self.budget)
        return Prompt(messages=messages, task=self.task, purpose="repair")

    def first_prompt(self, mode: str) -> Prompt:
        return self.prompt([])

    def read(self, answer: str) -> Reading:
        try:
            patch = answer_to_patch(self.tree, answer)
        except ParseError as err:
            return Reading(None, Verdict(status="parse_error", message=str(err)), Category.MALFORMED.value,
                           failing_output(err, None))
        except ApplyError as err:
            return Reading(None, Verdict(status="error", message=str(err)), Category.DOES_NOT_APPLY.value,
                           failing_output(err, None))
        if patch.empty or syntax_errors(patch):
            category = categorize(patch, None)
            output = failing_output(patch, None)
            return Reading(patch.diff, Verdict(status="error", message=output or category.value), category.value,
                           output)
        if self.honest:
            tests = reproduction_tests(patch)
            if not tests:
                return Reading(patch.diff, Verdict(status="error", message="not run: no reproduction test"),
                               Category.UNCHECKED.value, "")
            self._reproductions[patch.diff] = tests
        self._patches[patch.diff] = patch
        return Reading(patch.diff)

    def judged(self, node: Node) -> None:
        assert node.verdict is not None and node.code is not None
        outcome = run_outcome(node.verdict)
        patch = self._patches[node.code]
        node.category = categorize(patch, outcome, self.suspects).value
        node.feedback = failing_output(patch, outcome)

    def can_grow(self, node: Node) -> bool:
        return True  # a failed attempt, run or not, is what the next prompt reflects on

    def critique_prompt(self, siblings: list[Node]) -> Prompt:
        shown = [(n.code, n.completion, n.category or "", n.feedback or "") for n in siblings]
        return Prompt(messages=critique_messages(self.issue, shown), task=self.task, purpose="critique",
                      candidates=[n.code or n.completion for n in siblings])

    def final(self, code: str, executor: Any) -> dict[str, Any]:
        """A final patch run on the task's tests, once: solved means resolved (F2P pass, P2P keep passing). The
        agent's reproduction file is not part of the fix."""
        fix = without_reproduction(code)
        verdict = executor.run_many([RepoJob(self.task, fix)])[0]
        return {"parse_failure": False, "solved": verdict.passed, "visible_solved": verdict.passed,
                "status": verdict.status, "reward": verdict.reward, "message": verdict.message[:500]}
