"""Repo tasks in the search: the scripted backend's repair answers, the reflection strategy (K=1 chain) fixing a
task on a later attempt with the earlier failure's category and output in its prompt, and the MCTS over patches
writing the same trajectory records as function trees (sibling pairs decided by tests). Runs real repository
runs (bubblewrap sandbox) on a tiny library made here; the round on a real library is tests/test_repo_round.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from openai_server import running_scripted_server

from agentq.config import ModelSpec, ScriptedSpec
from agentq.policy.base import Request, load_policy
from agentq.policy.scripted import ScriptedPolicy
from agentq.policy.scripted_server import BadRequest, ScriptedChat
from agentq.preferences import PairPolicy, build_pairs
from agentq.repair.patch import diff_hunks, search_replace
from agentq.repair.problem import RepoProblem
from agentq.repair.reflection import Category, repair_messages
from agentq.repair.sft import sft_examples
from agentq.sandbox.repo import RepoExecutor, SdistStore
from agentq.sandbox.runner import Runner
from agentq.search.mcts import Search, SearchParams
from agentq.tasks.schema import RepoTask, Task, write_tasks
from tests.test_repo_tasks import BUG, MINILIB, MINITESTS, make_sdist, repo_record


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Runner:
    return minilib_runner(tmp_path_factory)


def minilib_runner(tmp_path_factory) -> Runner:
    """A Runner over a data folder holding the minilib sdist (no function executor)."""
    root = tmp_path_factory.mktemp("data")
    make_sdist(root / "repos", "minilib", {"minilib/__init__.py": MINILIB, "tests/test_minilib.py": MINITESTS})
    return Runner(None, SdistStore(root / "repos", RepoExecutor(tmp_path_factory.mktemp("trees"))))


@pytest.fixture(scope="module")
def task() -> RepoTask:
    return RepoTask.model_validate(repo_record())


def only(category: str) -> ScriptedPolicy:
    weights = {"p_reference": 0.0, "p_buggy": 0.0, "p_mutant": 0.0, "p_garbage": 0.0, f"p_{category}": 1.0}
    return ScriptedPolicy(ScriptedSpec(**weights))


def test_diff_hunks_read_both_sides_of_the_bug_patch():
    [(path, fixed, buggy)] = diff_hunks(BUG)
    assert path == "minilib/__init__.py"
    assert "    if x < lo:\n" in fixed and "    if x > lo:\n" not in fixed
    assert "    if x > lo:\n" in buggy and "    if x < lo:\n" not in buggy


@pytest.mark.parametrize(("draw", "category", "reward"), [
    ("reference", Category.RESOLVED, 1.0), ("buggy", Category.NO_CHANGE, 0.0),
    ("mutant", Category.TEST_ASSERTION, 0.0), ("garbage", Category.MALFORMED, 0.0)])
def test_scripted_repair_answers_read_run_and_categorise(runner, task, draw, category, reward):
    search = Search(task, only(draw), runner, SearchParams(k=1, rollouts=1, depth=1, critique=False)).run()
    child = search.nodes[1]
    assert child.category == category.value and child.reward == reward, child.feedback
    assert (child.code is None) == (draw == "garbage")
    assert search.stats.parse_errors == (draw == "garbage")


def test_reflection_fixes_on_the_second_attempt_and_categorises_the_first(runner, task):
    """A seed whose first attempt fails: the chain goes on, the second prompt quotes the failure, it resolves."""
    policy = ScriptedPolicy(ScriptedSpec(p_reference=0.5, p_buggy=0.0, p_mutant=0.5, p_garbage=0.0))
    params = SearchParams().reflection(3)
    assert (params.k, params.root_k, params.depth, params.rollouts, params.critique) == (1, 1, 3, 3, False)
    for seed in range(30):
        search = Search(task, policy, runner, params.replace(seed=seed)).run()
        if len(search.nodes) == 3 and search.solved:
            break
    else:
        pytest.fail("no seed in 0..29 gave a fix on the second attempt")
    root, first, second = search.nodes
    assert (first.parent, second.parent) == (root.id, first.id)  # a chain: K=1
    assert first.category == Category.TEST_ASSERTION.value and not first.verdict.passed
    assert "test_clamp_low" in first.feedback
    prompt = second.prompt[-1]["content"]
    assert f"## Attempt 1: {Category.TEST_ASSERTION.value}" in prompt and "test_clamp_low" in prompt
    assert "## Attempt" not in first.prompt[-1]["content"]
    assert second.category == Category.RESOLVED.value and second.reward == 1.0


def test_mcts_over_patches_gives_test_decided_sibling_pairs(runner, task):
    policy = ScriptedPolicy(ScriptedSpec(p_reference=0.4, p_buggy=0.2, p_mutant=0.2, p_garbage=0.2))
    search = Search(task, policy, runner, SearchParams(k=3, rollouts=3, depth=2, critique=False, seed=1)).run()
    record = search.record()
    assert all("category" in n for n in record["nodes"][1:])
    pairs, _ = build_pairs([record], PairPolicy(threshold=0.1))
    assert pairs, "no sibling pair decided by the tests"
    for pair in pairs:
        assert pair["decided_by"] == "tests" and pair["chosen_passed"]
        assert "<<<<<<< SEARCH" in pair["chosen"][0]["content"]
        assert pair["prompt"][-1]["content"].startswith("## Failure report")


def test_the_prompt_holds_the_localised_file(runner, task):
    problem = RepoProblem.build(task, runner)
    assert list(problem.context)[0] == "minilib/__init__.py"
    request = Request(problem.first_prompt("full_rewrite"), 1, 0.0, 256, 0)
    [[sample]] = only("reference").generate_batch([request])
    reading = problem.read(sample.text)
    assert reading.verdict is None and "+    if x < lo:" in (reading.code or "")
    assert Path(problem.tree, "minilib/__init__.py").read_text().count("if x > lo:") == 1  # the buggy tree


def test_sft_examples_from_a_reflection_chain(runner, task):
    """A chain fixed on a later attempt gives a positive example and a reflection example, both SEARCH/REPLACE."""
    policy = ScriptedPolicy(ScriptedSpec(p_reference=0.5, p_buggy=0.0, p_mutant=0.5, p_garbage=0.0))
    for seed in range(30):
        search = Search(task, policy, runner, SearchParams(seed=seed).reflection(3)).run()
        if len(search.nodes) >= 3 and search.solved:
            break
    record = search.record()
    examples = sft_examples([record])
    assert [e["kind"] for e in examples] == ["positive", "reflection"]
    positive, reflection = examples
    assert positive["messages"][:-1] == record["nodes"][1]["prompt"] and "## Attempt" not in str(positive)
    assert "## Attempt 1:" in reflection["messages"][-2]["content"]
    fix = diff_hunks(record["nodes"][-1]["code"])
    for example in examples:
        answer = example["messages"][-1]
        assert answer["role"] == "assistant" and answer["content"] == search_replace(fix)
        assert RepoProblem.build(task, runner).read(answer["content"]).code == record["nodes"][-1]["code"]


def _critiqued_search(runner, task, critique: str) -> Search:
    """K=3 siblings under the root: a seed whose batch holds one resolving patch and two failures of other kinds."""
    spec = ScriptedSpec(p_reference=0.4, p_buggy=0.2, p_mutant=0.2, p_garbage=0.2, critique=critique)
    for seed in range(30):
        search = Search(task, ScriptedPolicy(spec), runner,
                        SearchParams(k=3, rollouts=1, depth=1, stop_on_pass=False, seed=seed)).run()
        rewards = [n.reward for n in search.nodes[1:]]
        if rewards.count(1.0) == 1 and len(set(n.category for n in search.nodes[1:])) == 3:
            return search
    pytest.fail("no seed in 0..29 gave a sibling set with one resolving patch and two other kinds of failure")


@pytest.mark.parametrize(("critique", "resolving_q", "fallbacks"),
                         [("truthful", 1.0, 0), ("reverse", 0.0, 0), ("garbage", 0.5, 3)])
def test_repo_siblings_are_critiqued_and_a_truthful_critic_ranks_the_resolving_one_first(runner, task, critique,
                                                                                           resolving_q, fallbacks):
    search = _critiqued_search(runner, task, critique)
    siblings = search.nodes[1:]
    record = search.record()
    assert search.stats.critique_calls == 3  # K = 3 siblings: every cyclic rotation of the order
    assert search.stats.critique_fallbacks == fallbacks  # an unreadable answer votes neutral
    assert all(len(n["q_ai_votes"]) == 3 for n in record["nodes"][1:])
    [resolving] = [n for n in siblings if n.category == Category.RESOLVED.value]
    assert resolving.q_ai == resolving_q, [(n.category, n.q_ai_votes) for n in siblings]
    if critique != "garbage":
        assert all(0.0 < n.q_ai < 1.0 or n.q_ai == 1.0 - resolving_q for n in siblings if n is not resolving)


def test_the_repo_critique_prompt_shows_diffs_categories_and_output_but_no_answers(runner, task):
    search = _critiqued_search(runner, task, "truthful")
    siblings = search.nodes[1:]
    prompt = search.problem.critique_prompt(siblings)
    text = prompt.messages[-1]["content"]
    assert prompt.purpose == "critique" and text.startswith("## Failure report\n" + task.problem_text().strip())
    for i, node in enumerate(siblings, 1):
        assert f"### Candidate {i}\n" in text and f"Result: {node.category}" in text
        assert (node.code or "").rstrip() in text
    assert "RANKING:" in text
    failing = next(n for n in siblings if n.feedback and n.category != Category.RESOLVED.value)
    assert failing.feedback in text
    # what the critic must never see: the bug patch (whose inverse is the answer) and the tests' source
    assert "-    if x < lo:" not in text  # the bug patch's side: the fix's text comes only from a candidate
    assert "assert clamp(-1, 0, 5) == 0" not in text


def _spec(collect: dict, evaluate: dict):
    from agentq.config import RoundSpec

    return RoundSpec.model_validate({"dataset": {"train": "a", "test": "b"}, "store": {"path": "s"},
                                     "collect": collect, "evaluate": evaluate})


@pytest.mark.parametrize(("collect", "evaluate", "draw", "strategy", "attempts", "solved"), [
    ({"strategy": "reflection", "attempts": 3}, {}, "mutant", "reflection", 3, False),  # the whole chain
    # the fix is found at once, but an honest evaluation cannot know it (no hidden test runs during the search,
    # and this answer brings no reproduction test of its own): the chain runs on, the first fix is the answer
    ({"strategy": "reflection", "attempts": 3}, {}, "reference", "reflection", 3, True),
    ({}, {"strategy": "reflection", "attempts": 2}, "mutant", "reflection", 2, False),  # evaluate's own setting
    ({"strategy": "reflection"}, {"strategy": "mcts", "k": 2, "rollouts": 2}, "mutant", "mcts", 4, False),
])
def test_evaluate_mcts_mode_searches_with_the_rounds_strategy(runner, task, collect, evaluate, draw, strategy,
                                                             attempts, solved):
    from agentq.evaluate import evaluate_task, summarize

    record = evaluate_task(task, "mcts", only(draw), runner, _spec(collect, evaluate))
    assert (record["strategy"], record["attempts"], record["solved"]) == (strategy, attempts, solved), record
    summary = summarize([record, {**record, "task_id": "other", "attempts": attempts + 1}])
    assert summary["strategy"] == strategy and summary["mean_attempts"] == attempts + 0.5


TOTAL_BUG = """diff --git a/minilib/__init__.py b/minilib/__init__.py
--- a/minilib/__init__.py
+++ b/minilib/__init__.py
@@ -13,4 +13,4 @@ def total(xs):
     s = 0
     for x in xs:
-        s += x
+        s -= x
     return s
"""


def test_the_scripted_server_knows_a_repair_prompt_by_its_report_and_a_shared_report_by_the_buggy_lines(task):
    other = RepoTask.model_validate(repo_record(task_id="minilib-0.1__total", bug_patch=TOTAL_BUG))
    function = Task(id="f", source="s", group="g", description="d", buggy_code="def f():\n    return 1\n",
                    entry_point="f", tests="def test_a():\n    pass\n")
    chat = ScriptedChat([function, task, other], ScriptedSpec(), ["start"])
    for buggy, want in ((MINILIB.replace("if x < lo:", "if x > lo:"), task),
                        (MINILIB.replace("s += x", "s -= x"), other)):
        prompt = chat.prompt(repair_messages(task.problem_text(), {"minilib/__init__.py": buggy}))
        assert prompt.task is want and prompt.purpose == "repair"
    with pytest.raises(BadRequest, match="no known task"):
        chat.prompt(repair_messages("Repository: minilib 0.1\n\nother tests fail", {"minilib/__init__.py": MINILIB}))


@pytest.mark.parametrize("strategy", ["reflection", "mcts"])
def test_a_search_through_the_openai_backend_and_the_scripted_server_resolves_and_counts_tokens(tmp_path, runner,
                                                                                                  task, strategy):
    """`agentq model serve-scripted` started on a repo task file answers repair prompts (and, for MCTS over
    patches, the critiques of sibling patches) as the in-process backend does, usage included: the same trees,
    the same votes, the same token counts, non-zero both ways."""
    write_tasks(tmp_path / "repo.jsonl", [task])
    params = (SearchParams(max_new_tokens=256).reflection(3) if strategy == "reflection" else
              SearchParams(max_new_tokens=256, k=3, rollouts=2, depth=2, stop_on_pass=False))
    with running_scripted_server([tmp_path / "repo.jsonl"], "--served-model-name", "mock") as url:
        served = load_policy(ModelSpec(backend="openai", openai={"url": url, "model": "mock"}))
        trees = [Search(task, served, runner, params.replace(seed=seed)).run() for seed in range(3)]
    assert any(t.solved for t in trees), [[n.category for n in t.nodes[1:]] for t in trees]
    local = ScriptedPolicy(ScriptedSpec())
    for tree in trees:
        again = Search(task, local, runner, tree.params).run()
        assert [n.completion for n in tree.nodes] == [n.completion for n in again.nodes]
        assert [n.q_ai_votes for n in tree.nodes] == [n.q_ai_votes for n in again.nodes]
        assert (strategy == "mcts") == (tree.stats.critique_calls > 0)
        assert tree.stats.tokens_in > 0 and tree.stats.tokens_out > 0
        assert (tree.stats.tokens_in, tree.stats.tokens_out) == (again.stats.tokens_in, again.stats.tokens_out)
