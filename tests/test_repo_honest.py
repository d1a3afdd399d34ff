"""Honest repository evaluation: a prompt never holds the hidden tests' names or their output, the agent's own
reproduction test is what runs while it searches, and every prompt holds to its token budget."""

from __future__ import annotations

import pytest

from agentq.config import RoundSpec
from agentq.policy.base import BatchPolicy, Request, Sample
from agentq.policy.scripted import ScriptedPolicy
from agentq.repair.localization import RoundLocalization
from agentq.repair.patch import search_replace
from agentq.repair.reflection import REPRODUCTION_FILE, prompt_tokens
from agentq.sandbox.runner import Runner
from agentq.search.mcts import Search, SearchParams
from agentq.tasks.issues import failing_test_names
from agentq.tasks.schema import RepoTask
from tests.test_repo_search import minilib_runner, only
from tests.test_repo_tasks import repo_record


class Recording(BatchPolicy):
    """A policy that keeps every prompt it is asked, answering with another policy (or a list of answers)."""

    def __init__(self, inner: BatchPolicy | None = None, answers: list[str] | None = None) -> None:
        self.inner, self.answers, self.prompts = inner, list(answers or []), []

    def generate_batch(self, requests: list[Request]) -> list[list[Sample]]:
        self.prompts += ["\n".join(m["content"] for m in r.prompt.messages) for r in requests]
        if self.inner is not None:
            return self.inner.generate_batch(requests)
        return [[Sample(text=self.answers.pop(0) if len(self.answers) > 1 else self.answers[0])] * r.n
                for r in requests]


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Runner:
    return minilib_runner(tmp_path_factory)


@pytest.fixture(scope="module")
def task() -> RepoTask:
    return RepoTask.model_validate(repo_record(issue="clamp(-1, 0, 5) returns 5 instead of 0"))


@pytest.fixture(scope="module")
def hidden_output(runner, task) -> list[str]:
    """What the task's own tests print on the buggy tree: their failure messages (`assert 5 == 0`...)."""
    verdict = task.judge([""], runner)[0]
    messages = [t.message for t in verdict.tests if not t.passed and t.message]
    assert messages, verdict
    return messages


def _spec(**evaluate) -> RoundSpec:
    return RoundSpec.model_validate({"dataset": {"train": "a", "test": "b"}, "store": {"path": "s"},
                                     "collect": {"strategy": "reflection", "attempts": 3}, "evaluate": evaluate})


def _forbidden(task: RepoTask, hidden_output: list[str]) -> list[str]:
    return [*task.fail_to_pass, *task.pass_to_pass, *failing_test_names(task.fail_to_pass), *hidden_output]


@pytest.mark.parametrize("mode", ["mcts", "zero_shot"])
def test_a_repository_evaluation_prompt_never_holds_the_hidden_tests_or_their_output(runner, task, hidden_output,
                                                                                      mode):
    from agentq.evaluate import evaluate_task

    policy = Recording(only("mutant"))  # wrong edits: a search that saw the judged tests would quote them
    record = evaluate_task(task, mode, policy, runner, _spec())
    assert len(policy.prompts) == (3 if mode == "mcts" else 1) and not record["solved"]
    for prompt in policy.prompts:
        assert [s for s in _forbidden(task, hidden_output) if s in prompt] == [], prompt
    if mode == "mcts":
        assert record["feedback"].startswith("own reproduction tests")
        assert "## Attempt 2: not checked" in policy.prompts[-1]  # the earlier attempts, with what could be said


def test_collection_does_show_the_judged_tests_so_the_check_above_can_fail(runner, task, hidden_output):
    policy = Recording(only("mutant"))
    search = Search(task, policy, runner, SearchParams(max_new_tokens=256).reflection(3)).run()
    assert search.problem.notes["feedback"].startswith("the task's fail-to-pass")
    later = "\n".join(policy.prompts[1:])
    assert any(s in later for s in task.fail_to_pass) and any(s in later for s in hidden_output)


REPRO = "def test_low():\n    from minilib import clamp\n    assert clamp(-1, 0, 5) == 0\n"


def test_the_agents_own_reproduction_test_is_what_runs_and_decides(runner, task):
    from agentq.evaluate import evaluate_task

    wrong = search_replace([("minilib/__init__.py", "    if x > hi:\n", "    if x >= hi:\n"),
                            (REPRODUCTION_FILE, "", REPRO)])
    fix = search_replace([("minilib/__init__.py", "    if x > lo:\n", "    if x < lo:\n"),
                          (REPRODUCTION_FILE, "", REPRO)])
    policy = Recording(answers=[wrong, fix])
    record = evaluate_task(task, "mcts", policy, runner, _spec())
    # the second prompt quotes the first attempt's own test failing; the fix then passes it and the chain stops
    assert len(policy.prompts) == 2 and record["attempts"] == 2 and record["solved"], (record, policy.prompts[-1])
    assert f"{REPRODUCTION_FILE}::test_low" in policy.prompts[1]
    for prompt in policy.prompts:  # its own test may print what a hidden one would: the names never show
        assert [s for s in _forbidden(task, []) if s in prompt] == []


def test_every_repo_prompt_holds_to_its_token_budget(runner, task):
    """A long issue and long failed attempts against a small budget: the issue and the attempts are cut to their
    shares, the code to what is left; every prompt of the chain fits."""
    runner.localization = RoundLocalization(None, None, 1024)
    try:
        long_task = task.model_copy(update={"issue": "clamp misbehaves. " * 600})
        garbage = "I think so.\n" + "x" * 9000
        policy = Recording(answers=[garbage])
        search = Search(long_task, policy, runner, SearchParams(max_new_tokens=256).reflection(4)).run()
        assert len(policy.prompts) == 4
        for node in search.nodes[1:]:
            assert prompt_tokens(node.prompt) <= 1024, prompt_tokens(node.prompt)
        assert "[... the rest of the report is cut]" in policy.prompts[0]
        assert "earlier attempt(s) left out" in policy.prompts[-1] or "cut to fit" in policy.prompts[-1]
        assert "def clamp(x, lo, hi):" in policy.prompts[0]  # the code still made it in
    finally:
        runner.localization = None


def test_a_scripted_search_through_the_honest_problem_still_resolves_with_the_final_judgement(runner, task):
    """The reference answer (no reproduction test) is never checked during the search, yet is judged resolved."""
    search = Search(task, ScriptedPolicy(only("reference").spec), runner,
                    SearchParams(max_new_tokens=256).reflection(2), visible_only=True).run()
    assert [n.category for n in search.nodes[1:]] == ["not checked", "not checked"]
    assert search.problem.final(search.best().code, runner)["solved"]
