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

Localisation runs once per task, when its search is made. With the round's model (fitted at the start of
collect on the round's training repo tasks: agentq/repair/localization.py) `Localizer.locate` ranks the files
and the prompt gets its conformal prediction set; without one the files are ranked by BM25 alone, which
untrained RRF with the other stages did not beat (docs/benchmarks.md, localization on repo tasks: Recall@1
0.82 alone, 0.51-0.61 fused), and the prompt gets the CONTEXT_FILES best. Either way within CONTEXT_CHARS.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agentq.localize.pipeline import Localizer, fuse
from agentq.localize.repo import Repository
from agentq.policy.base import Prompt
from agentq.repair.patch import ApplyError, ParseError, Patch, answer_to_patch
from agentq.repair.reflection import (
    Category,
    RunOutcome,
    categorize,
    critique_messages,
    failing_output,
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

CONTEXT_CHARS = 16_000
CONTEXT_FILES = 3
RANKING_STAGES = ("bm25",)


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


def localised_context(tree: Path, task: RepoTask,
                      localization: RoundLocalization | None = None) -> tuple[dict[str, str], dict]:
    """The prompt's files, best first, within CONTEXT_CHARS (the first always): with the round's model, its
    conformal prediction set (the set's size is the budget, so a confident ranking shows fewer files); without
    one, the CONTEXT_FILES best by RANKING_STAGES. Also what the tree's record notes about it."""
    model = localization.model if localization is not None else None
    localizer = tree_localizer(tree, localization.embedder if localization is not None else None)
    if not localizer.paths:
        return {}, {"by": "none", "files": []}
    if model is not None:
        chosen = localizer.locate(task.issue, task.fail_to_pass, model).prediction_set
    else:
        scores = fuse(localizer.evidence(task.issue, task.fail_to_pass), RANKING_STAGES, localizer.paths)
        chosen = [localizer.paths[i] for i in np.argsort(-scores, kind="stable")[:CONTEXT_FILES]]
    context: dict[str, str] = {}
    used = 0
    for path in chosen:
        text = localizer.repo.files[path]
        if context and used + len(text) > CONTEXT_CHARS:
            break
        context[path], used = text, used + len(text)
    notes = {"by": "model" if model is not None else "+".join(RANKING_STAGES), "files": list(context)}
    return context, notes | ({"set_size": len(chosen)} if model is not None else {})


class RepoProblem:
    def __init__(self, task: RepoTask, tree: Path, context: dict[str, str], localization: dict | None = None) -> None:
        self.task, self.tree, self.context = task, tree, context
        self.notes = {"localization": localization} if localization else {}
        self.suspects = set(context)
        self._patches: dict[str, Patch] = {}

    @classmethod
    def build(cls, task: RepoTask, runner: Any) -> RepoProblem:
        tree = buggy_tree(task, runner)
        return cls(task, tree, *localised_context(tree, task, getattr(runner, "localization", None)))

    def root_code(self) -> str:
        return ""  # the empty patch: the buggy tree as it is

    def job(self, code: str) -> RepoJob:
        return RepoJob(self.task, code)

    def prompt(self, path: list[Node]) -> Prompt:
        attempts = [(n.completion, Category(n.category), n.feedback or "") for n in path[1:] if n.category]
        return Prompt(messages=repair_messages(self.task.problem_text(), self.context, attempts), task=self.task,
                      purpose="repair")

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
        return Prompt(messages=critique_messages(self.task.problem_text(), shown), task=self.task, purpose="critique",
                      candidates=[n.code or n.completion for n in siblings])

    def final(self, code: str, executor: Any) -> dict[str, Any]:
        """A final patch run on the task's tests: solved means resolved (F2P pass, P2P keep passing)."""
        verdict = executor.run_many([RepoJob(self.task, code)])[0]
        return {"parse_failure": False, "solved": verdict.passed, "visible_solved": verdict.passed,
                "status": verdict.status, "reward": verdict.reward, "message": verdict.message[:500]}
