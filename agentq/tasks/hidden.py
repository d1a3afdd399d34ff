"""Hidden tests for DebugBench by differential testing: new inputs, the reference's answers, never shown.

DebugBench's visible tests are the statement's own examples, so a candidate that special-cases them
("if nums == [2,7,11,15]: return [0,1]") would pass and be rewarded. For each distinct problem (slug and
reference) we draw inputs shaped like the examples (hidden_inputs.py), run the reference on all of them in
one sandboxed probe, and keep an input only when the reference

* answers it without raising, within CASE_BUDGET_S, identically in a second run in reverse order (so
  neither randomness nor state carried between calls decides the answer), and
* answers with the same shape as the examples' outputs (an input that makes the reference return None
  where the examples return a list is probably outside the problem's contract).

Kept cases become `test_hidden_<n>` functions built by the same code as the visible tests (conversions,
any-order and in-place handling, comparison) and are stored in `Task.hidden_tests`. A final sandbox run
checks the reference passes visible + hidden together; a hidden case it fails there is dropped.

Problems whose examples replay a class's calls (design problems) or whose statement accepts any of
several answers are skipped with a counted reason: one reference answer cannot judge those.
"""

from __future__ import annotations

import ast
import hashlib
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from agentq.sandbox import LocalExecutor, Verdict
from agentq.sandbox.limits import Limits
from agentq.tasks.debugbench import (
    SOURCE,
    Signature,
    Unsupported,
    call_lines,
    case_test,
    find_signature,
    split_example,
    test_module,
)
from agentq.tasks.hidden_inputs import InputModel
from agentq.tasks.leetcode_values import ExampleParseError
from agentq.tasks.schema import HIDDEN_TEST_PREFIX, Task

PROBE_LIMITS = Limits(timeout_s=10)  # a run that hits it loses one input and reruns the rest
CASE_BUDGET_S = 0.1  # the reference's time for one hidden case (a slow but correct fix must still fit)
SUITE_BUDGET_S = 1.0  # and for all of a task's hidden cases together
MAX_EXPECTED_CHARS = 1000
CANDIDATES_PER_CASE = 4  # inputs drawn per case wanted: many are lost to the filters above
PROBE_ROUNDS = 4
_ANY_ANSWER = re.compile(
    r"\breturn any\b|\bany of them\b|\bany (?:valid|possible|one)\b"
    r"|\bmultiple (?:valid |possible )?(?:answers|solutions)",
    re.IGNORECASE,
)
_PROBE = re.compile(r"PROBE (\d+\.\d+) (\d+) ")


@dataclass
class Problem:
    """One distinct (slug, reference): every bug-type instance of it shares its hidden cases."""

    reference: str
    visible: str
    sig: Signature
    any_order: bool
    outputs: list[Any]
    inputs: list[dict[str, Any]]
    cases: list[tuple[dict[str, Any], Any]] = field(default_factory=list)
    drops: Counter = field(default_factory=Counter)


@dataclass
class HiddenStats:
    problems: int = 0
    seconds: float = 0.0
    dropped: Counter = field(default_factory=Counter)  # candidate inputs lost, by filter


def problem_seed(seed: int, group: str, reference: str) -> str:
    """A string seed (random.Random hashes it with SHA-512, independent of PYTHONHASHSEED)."""
    return f"{seed}\0{group}\0{hashlib.sha256(reference.encode()).hexdigest()}"


def plan_problem(task: Task, n: int, seed: int) -> Problem | str:
    """The problem with its candidate inputs, or why it gets no hidden tests."""
    if _ANY_ANSWER.search(task.description):
        return "any_answer"
    parsed = []
    for text in task.metadata.get("examples", []):
        try:
            parsed.append(split_example(text))
        except ExampleParseError:
            continue
    if not parsed:
        return "no_examples"
    if any(example.design for example in parsed):
        return "design"
    try:
        sigs = [find_signature(task.reference_code, [name for name, _ in e.args], task.group) for e in parsed]
    except Unsupported as err:
        return err.reason
    sig = sigs[0]
    if "tree[]" in sig.kinds or len({s.method for s in sigs}) != 1:
        return "unsupported_type"
    # Examples may name an argument differently (`coins` then `nums`); positions are what the call uses.
    examples = [
        dict(zip(sig.params, (dict(e.args)[p] for p in s.params), strict=True))
        for e, s in zip(parsed, sigs, strict=True)
    ]
    constraints = str(task.metadata.get("constraints", ""))
    model = InputModel(sig.params, sig.kinds, examples, constraints)
    rng = random.Random(problem_seed(seed, task.group, task.reference_code))
    seen = {repr(e) for e in examples}
    inputs = []
    for _ in range(n * CANDIDATES_PER_CASE * 3):
        values = model.sample(rng)
        if values is not None and repr(values) not in seen:
            seen.add(repr(values))
            inputs.append(values)
            if len(inputs) == n * CANDIDATES_PER_CASE:
                break
    if not inputs:
        return "no_inputs"
    any_order = bool(task.metadata.get("any_order"))
    outputs = [e.output for e in parsed]
    return Problem(task.reference_code, task.tests, sig, any_order, outputs, inputs)


def probe_source(problem: Problem, indices: list[int]) -> str:
    """Tests that each fail on purpose with `PROBE <seconds> <len> <repr of the answer>` as their message:
    the sandbox reports every test's message, so one run returns every answer."""
    tests = ["from time import perf_counter as _clock"]
    for i in indices:
        setup, compute, _ = call_lines(problem.sig, problem.inputs[i], problem.any_order)
        tests.append(
            "\n".join(
                [
                    f"def test_probe_{i}():",
                    *setup,
                    "    _started = _clock()",
                    *compute,
                    "    _seconds = _clock() - _started",
                    "    _text = repr(got)",
                    "    raise AssertionError(f'PROBE {_seconds:.6f} {len(_text)} {_text}')",
                ]
            )
        )
    return test_module(tests, set(problem.sig.kinds) | {problem.sig.returns})


def read_probe(message: str) -> tuple[float, str] | str:
    """(seconds, repr of the answer), or why there is none."""
    match = _PROBE.search(message)
    if not match:
        return "not_run" if message.startswith("not run:") else "raised"
    text = message[match.end() : match.end() + int(match[2])]
    return (float(match[1]), text) if len(text) == int(match[2]) else "too_large"


def run_probes(executor: LocalExecutor, jobs: list[tuple[Problem, list[int]]]) -> list[dict[int, Any]]:
    """For each job, input index -> (seconds, answer) or a drop reason.

    A timeout or a dead reference process stops a run part way: the input it stopped on is dropped as
    slow (or crashed) and the ones never reached run again in the next round.
    """
    results: list[dict[int, Any]] = [{} for _ in jobs]
    pending = [(j, indices) for j, (_, indices) in enumerate(jobs)]
    for _ in range(PROBE_ROUNDS):
        if not pending:
            break
        verdicts = executor.run_many(
            [(jobs[j][0].reference, probe_source(jobs[j][0], indices)) for j, indices in pending], PROBE_LIMITS
        )
        again = []
        for (j, indices), verdict in zip(pending, verdicts, strict=True):
            rest = _collect(verdict, indices, results[j])
            if rest:
                again.append((j, rest))
        pending = again
    for j, indices in pending:
        results[j].update(dict.fromkeys(indices, "not_run"))
    return results


def _collect(verdict: Verdict, indices: list[int], into: dict[int, Any]) -> list[int]:
    """Record what one probe run answered; return the indices to run again."""
    messages = {t.name: t.message for t in verdict.tests}
    rest, stopped = [], False
    for i in indices:
        message = messages.get(f"test_probe_{i}")
        if message is None and not stopped and verdict.status in ("timeout", "killed", "memory"):
            into[i], stopped = "slow" if verdict.status == "timeout" else "crashed", True
        elif message is None and stopped or message is not None and message.startswith("not run:"):
            rest.append(i)
        elif message is None:
            into[i] = "probe_error"
        else:
            into[i] = read_probe(message)
    return rest


def _shape(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def fits_outputs(value: Any, outputs: list[Any]) -> bool:
    """Same top-level kind as some example output and, for lists, only element kinds the examples show."""
    if _shape(value) not in {_shape(o) for o in outputs}:
        return False
    if _shape(value) != "list":
        return True
    shown = {_shape(item) for o in outputs if _shape(o) == "list" for item in o}
    return not shown or {_shape(item) for item in value} <= shown


def select_cases(problem: Problem, forward: dict[int, Any], backward: dict[int, Any], n: int) -> None:
    """Up to n cases, answers the problem has not shown yet first (more cases that say something)."""
    usable: list[tuple[int, float, Any]] = []
    for i in range(len(problem.inputs)):
        first, second = forward.get(i, "not_run"), backward.get(i, "not_run")
        reason = first if isinstance(first, str) else second if isinstance(second, str) else None
        if reason is None:
            (t1, text), (t2, text2) = first, second
            if text != text2:
                reason = "nondeterministic"
            elif max(t1, t2) > CASE_BUDGET_S:
                reason = "slow"
            elif len(text) > MAX_EXPECTED_CHARS:
                reason = "too_large"
            else:
                try:
                    value = ast.literal_eval(text)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    reason = "unreadable"
                else:
                    reason = None if fits_outputs(value, problem.outputs) else "output_shape"
        if reason:
            problem.drops[reason] += 1
        else:
            usable.append((i, max(t1, t2), value))
    shown = {repr(o) for o in problem.outputs}
    fresh, repeated = [], []
    for item in usable:
        (repeated if repr(item[2]) in shown else fresh).append(item)
        shown.add(repr(item[2]))
    ordered = fresh + repeated
    spent = 0.0
    for i, seconds, value in ordered:
        if len(problem.cases) == n:
            break
        if spent + seconds > SUITE_BUDGET_S:
            problem.drops["suite_budget"] += 1
            continue
        spent += seconds
        problem.cases.append((problem.inputs[i], value))


def hidden_source(problem: Problem, numbers: list[int] | None = None) -> str:
    numbers = numbers or list(range(1, len(problem.cases) + 1))
    tests = [
        case_test(f"{HIDDEN_TEST_PREFIX}{k}", f"hidden case {k}", problem.cases[k - 1][0], problem.cases[k - 1][1],
                  problem.sig, problem.any_order)
        for k in numbers
    ]
    return test_module(tests, set(problem.sig.kinds) | {problem.sig.returns})


def _verify(executor: LocalExecutor, problems: list[Problem]) -> dict[int, list[int]]:
    """Case numbers the reference passes with the visible tests in one run; a case it fails is dropped,
    and a problem whose run fails for any other reason keeps none."""
    kept = {id(p): list(range(1, len(p.cases) + 1)) for p in problems}
    todo = [p for p in problems if p.cases]
    for _ in range(2):
        verdicts = executor.run_many([(p.reference, f"{p.visible}\n\n{hidden_source(p, kept[id(p)])}") for p in todo])
        again = []
        for problem, verdict in zip(todo, verdicts, strict=True):
            if verdict.passed:
                continue
            failed = {t.name for t in verdict.tests if not t.passed}
            numbers = [k for k in kept[id(problem)] if f"{HIDDEN_TEST_PREFIX}{k}" not in failed]
            problem.drops["reference_fails_suite"] += len(kept[id(problem)]) - len(numbers)
            if verdict.status != "failed" or len(numbers) == len(kept[id(problem)]):
                numbers = []
            kept[id(problem)] = numbers
            if numbers:
                again.append(problem)
        todo = again
    for problem in todo:
        kept[id(problem)] = []
    return kept


def add_hidden_tests(
    tasks: list[Task], executor: LocalExecutor, n: int, seed: int = 0
) -> tuple[list[Task], HiddenStats]:
    """Tasks with up to n hidden cases each; `metadata["hidden"]` records how many, or why none."""
    started = time.monotonic()
    stats = HiddenStats()
    problems: dict[tuple[str, str], Problem | str] = {}
    for task in tasks:
        key = (task.group, task.reference_code or "")
        if key not in problems:
            if task.source != SOURCE:
                problems[key] = "upstream_tests"  # HumanEvalFix's own tests already go beyond its examples
            elif task.reference_code is None:
                problems[key] = "no_reference"
            else:
                problems[key] = plan_problem(task, n, seed)
    planned = [p for p in problems.values() if isinstance(p, Problem)]
    stats.problems = len(planned)
    jobs = [(p, list(range(len(p.inputs)))) for p in planned]
    jobs += [(p, list(reversed(range(len(p.inputs))))) for p in planned]
    results = run_probes(executor, jobs)
    for k, problem in enumerate(planned):
        select_cases(problem, results[k], results[k + len(planned)], n)
    kept = _verify(executor, planned)
    for problem in planned:
        stats.dropped.update(problem.drops)
    out = []
    for task in tasks:
        problem = problems[(task.group, task.reference_code or "")]
        metadata = dict(task.metadata)
        if isinstance(problem, str):
            metadata["hidden"] = {"cases": 0, "skipped": problem}
            out.append(task.model_copy(update={"metadata": metadata}))
            continue
        numbers = kept[id(problem)]
        metadata["hidden"] = {"cases": len(numbers), "seed": seed} if numbers else {"cases": 0, "skipped": "no_case"}
        hidden = hidden_source(problem, numbers) if numbers else None
        out.append(task.model_copy(update={"metadata": metadata, "hidden_tests": hidden}))
    stats.seconds = time.monotonic() - started
    return out, stats


def coverage(tasks: list[Task], n: int) -> dict[str, Any]:
    """Hidden-test coverage of (validated) tasks, from their metadata: what the build prints."""
    cases = [int(t.metadata.get("hidden", {}).get("cases", 0)) for t in tasks]
    skipped = Counter(t.metadata["hidden"]["skipped"] for t in tasks if t.metadata.get("hidden", {}).get("skipped"))
    return {
        "tasks": len(tasks),
        "with_n": sum(c >= n for c in cases),
        "share_with_n": round(sum(c >= n for c in cases) / len(tasks), 4) if tasks else 0.0,
        "cases_per_task": dict(sorted(Counter(cases).items())),
        "skipped": dict(sorted(skipped.items())),
    }
