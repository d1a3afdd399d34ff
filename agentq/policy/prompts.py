"""What the model is asked, and how its free-text answers are read back.

Prompts show only what a human fixer would see: the problem description, its examples and constraints
(DebugBench keeps them apart from the description, in the task's metadata: without them a model cannot
know what the tests check), code, and feedback from visible tests. Test sources, visible or hidden, never
enter a prompt.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from typing import Any

from agentq.policy.base import Prompt, Purpose
from agentq.tasks.schema import Task

SYSTEM = "You are an expert Python programmer. You fix bugs in programs and reply with complete, runnable code."
FEEDBACK_LIMIT = 1500
RANKING_LABEL = "RANKING:"

FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
OPEN_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n", re.MULTILINE)
CODE_START = re.compile(r"^(?:@|def |async def |class |import |from \S+ import )", re.MULTILINE)
RANKING_LINE = re.compile(r"RANKING\s*:\s*(.*)", re.IGNORECASE)
RANK_ITEM = re.compile(r"^\s*(?:candidate\s*)?[#\[(]?\s*(\d+)\s*[\])]?\s*$", re.IGNORECASE)
PYTHON_TAGS = {"", "python", "python3", "py"}


def _fenced(code: str) -> str:
    return f"```python\n{code.rstrip()}\n```"


def _statement(task: Task) -> str:
    """The description plus the statement's examples and constraints when the task keeps them apart.

    Examples are the visible tests' cases, so showing them reveals nothing hidden; a description that
    already quotes an example is left as it is.
    """
    parts = [task.description.strip()]
    examples = [str(e).strip() for e in task.metadata.get("examples") or [] if str(e).strip()]
    if examples and not any(e.splitlines()[0] in task.description for e in examples):
        parts.append("### Examples\n" + "\n\n".join(f"Example {i}:\n{e}" for i, e in enumerate(examples, 1)))
    constraints = str(task.metadata.get("constraints") or "").strip()
    if constraints and constraints not in task.description:
        parts.append(f"### Constraints\n{constraints}")
    return "\n\n".join(parts)


def _problem(task: Task) -> str:
    """The opening every prompt of a task shares (after the system text), so a prefix cache (vLLM, SGLang)
    computes it once per task and reuses it for every expansion, critique and zero-shot answer of the tree."""
    return f"## Problem\n{_statement(task)}\n\n## Buggy code\n{_fenced(task.buggy_code)}"


def clip_feedback(feedback: str) -> str:
    """Test feedback cut to FEEDBACK_LIMIT characters, the one limit every prompt applies."""
    feedback = feedback.strip()
    return feedback if len(feedback) <= FEEDBACK_LIMIT else feedback[: FEEDBACK_LIMIT - 3] + "..."


def _entry_hint(task: Task) -> str:
    return f"Keep the name and signature of `{task.entry_point}`."


def _chat(user: str, task: Task, purpose: Purpose, **fields: Any) -> Prompt:
    return Prompt(messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
                  task=task, purpose=purpose, **fields)


def rewrite_prompt(task: Task, parent_code: str | None = None, parent_feedback: str | None = None) -> Prompt:
    """Ask for a full corrected program; a child node also sees its parent attempt and the test feedback.

    Without `parent_code`, `parent_feedback` is the buggy program's own test results (a depth-1 prompt).
    """
    parts = [_problem(task), "## Task\nFix the bug in the program above."]
    if parent_code is not None:
        parts.append(f"## A previous attempt\n{_fenced(parent_code)}")
    if parent_feedback:
        whose = "the previous attempt" if parent_code is not None else "the buggy code"
        parts.append(f"## Test results of {whose}\n{clip_feedback(parent_feedback)}")
    parts.append(
        f"Reply with the complete corrected program in a single ```python code block. {_entry_hint(task)}"
    )
    return _chat("\n\n".join(parts), task, "rewrite")


def zero_shot_prompt(task: Task) -> Prompt:
    """The structured single-answer format used by zero-shot evaluation."""
    user = (
        f"{_problem(task)}\n\n## Task\nFix the bug in the program above. "
        "Answer in exactly this format:\n"
        "THOUGHT: <one or two sentences on what the bug is>\n"
        "CODE:\n```python\n<the complete corrected program>\n```\n"
        f"{_entry_hint(task)}"
    )
    return _chat(user, task, "zero_shot")


def critique_prompt(task: Task, candidates: Sequence[str], feedback: Sequence[str | None] | None = None) -> Prompt:
    """Ask the model to rank K sibling candidates best-first, in the format parse_ranking reads.

    Each candidate is shown with its visible test results, and the model may reason before its final
    RANKING line. The format is described, not exemplified with a concrete order: a "1 > 2" example
    is copied by small models (11 of 11 quickstart critiques ranked candidate 1 first).
    """
    feedback = list(feedback) if feedback is not None else [None] * len(candidates)
    blocks = []
    for i, (code, result) in enumerate(zip(candidates, feedback, strict=True), 1):
        block = f"### Candidate {i}\n{_fenced(code)}"
        if result:
            block += f"\nTest results: {clip_feedback(result)}"
        blocks.append(block)
    user = (
        f"{_problem(task)}\n\n## Candidate fixes\n" + "\n\n".join(blocks) + "\n\n"
        "Which candidate is most likely a correct fix? Think briefly about what each one does differently, "
        f"then end with one line `{RANKING_LABEL} ` followed by all {len(candidates)} candidate numbers, "
        "best first, separated by `>`."
    )
    return _chat(user, task, "critique", candidates=list(candidates))


def _parses(code: str) -> bool:
    if not code.strip():
        return False
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _defines(code: str, entry_point: str) -> bool:
    name = entry_point.split(".")[0]
    return re.search(rf"^\s*(?:async\s+def|def|class)\s+{re.escape(name)}\b", code, re.MULTILINE) is not None


def _has_program(code: str) -> bool:
    """Bare text counts as code only with a definition or import: a lone word also parses as Python."""
    tree = ast.parse(code)
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)
    return any(isinstance(node, kinds) for node in tree.body)


def _bare_code(text: str) -> str | None:
    """Code written without fences, possibly after a line of prose and before a closing remark."""
    start = CODE_START.search(text)
    if start is None:
        return None
    lines = text[start.start():].rstrip().splitlines()
    # Drop trailing prose lines until the rest parses (bounded: a few trailing remarks at most).
    for end in range(len(lines), max(len(lines) - 20, 0), -1):
        code = "\n".join(lines[:end])
        if _parses(code) and _has_program(code):
            return code.strip("\n") + "\n"
    return None


def extract_code(text: str, entry_point: str | None = None) -> str | None:
    """The program in a model answer, or None when nothing in it parses as Python.

    Several fenced blocks: the last complete Python one that defines the entry point, else the last one
    that parses. An unterminated final fence (a truncated answer) is used when it still parses.
    """
    blocks = [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(text)]
    candidates = [code for tag, code in blocks if tag in PYTHON_TAGS and _parses(code)]
    if not blocks:
        opened = OPEN_FENCE.search(text)
        if opened and opened.group(1).lower() in PYTHON_TAGS:
            tail = text[opened.end():]
            if _parses(tail):
                candidates = [tail]
    if entry_point:
        defining = [code for code in candidates if _defines(code, entry_point)]
        candidates = defining or candidates
    if candidates:
        return candidates[-1].strip("\n") + "\n"
    if blocks:
        return None
    return _bare_code(text)


def parse_ranking(text: str, k: int) -> list[int] | None:
    """0-based candidate indices best-first from the last `RANKING:` line, or None when unusable."""
    lines = RANKING_LINE.findall(text)
    if not lines:
        return None
    items = re.split(r">=?|,|;|\s+then\s+", lines[-1].strip().rstrip("."))
    ranks: list[int] = []
    for item in items:
        match = RANK_ITEM.match(item)
        if match is None:
            return None
        ranks.append(int(match.group(1)) - 1)
    if sorted(ranks) != list(range(k)):
        return None
    return ranks


def format_ranking(order: Sequence[int]) -> str:
    """The line parse_ranking reads, from 0-based indices best-first."""
    return f"{RANKING_LABEL} " + " > ".join(str(i + 1) for i in order)
