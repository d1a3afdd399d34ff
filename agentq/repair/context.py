"""The code a repair prompt shows, inside a hard token budget, filled by priority as Agentless does.

A whole module can be 250 KB; a prompt that takes the first localised file whole runs to 60k tokens. So the
prompt's code is built in two passes over the files of the localisation set (best first):

1. the *skeleton* of each file (imports, top-level assignments' first lines, class and function signatures with
   a docstring's first line; bodies elided as `...`), file after file while it fits;
2. then whole functions, the most relevant first (BM25 of the function's text against the issue, ties to the
   better-ranked file), each replacing its signature in the skeleton while the budget holds.

Every line shown is the file's own line, so an edit copied from the prompt matches the file. Token counts are
estimates (`estimate_tokens`, characters / CHARS_PER_TOKEN): 2.5 characters per token lies below what BPE
tokenizers give for Python (SmolLM2's tokenizer: 3.28 on average over the shared libraries' modules, 2.67 for
the densest one), so a prompt within its estimated budget is within it for such a tokenizer too;
benchmarks/repo_agent.py measures both.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass

CHARS_PER_TOKEN = 2.5
ELIDED = "..."


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class Function:
    """A function or method of a file: its name, 1-based line span (decorators included) and signature span."""

    path: str
    name: str
    start: int
    end: int
    header_end: int  # last line of the signature (and of a docstring's first line when kept)


@dataclass
class _Outline:
    """A file's skeleton as line spans; functions are spans that can be shown whole instead."""

    text: list[str]
    spans: list[tuple[int, int] | Function]  # kept line ranges (1-based, inclusive) and functions, in order


def _header_end(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> int:
    """The signature's last line, and the docstring's first when the body opens with one."""
    first = node.body[0]
    end = first.lineno - 1
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        end = first.lineno
    return max(end, node.lineno)


def _outline(path: str, text: str) -> _Outline | None:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    spans: list[tuple[int, int] | Function] = []

    def start_of(node: ast.AST) -> int:
        return min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])

    def function(node: ast.FunctionDef | ast.AsyncFunctionDef, prefix: str = "") -> Function:
        return Function(path, prefix + node.name, start_of(node), node.end_lineno or node.lineno, _header_end(node))

    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            spans.append((node.lineno, node.end_lineno or node.lineno))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            spans.append((node.lineno, node.lineno))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            spans.append(function(node))
        elif isinstance(node, ast.ClassDef):
            spans.append((start_of(node), _header_end(node)))
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    spans.append(function(item, f"{node.name}."))
                elif isinstance(item, (ast.Assign, ast.AnnAssign)) and item.lineno == item.end_lineno:
                    spans.append((item.lineno, item.lineno))
    return _Outline(text.splitlines(), spans)


def render(outline: _Outline, whole: set[Function]) -> str:
    """The file as the prompt shows it: kept lines, whole functions for `whole`, the rest elided."""
    out: list[str] = []
    last = 0
    for span in outline.spans:
        if isinstance(span, Function):
            lines = (span.start, span.end) if span in whole else (span.start, span.header_end)
        else:
            lines = span
        if lines[0] > last + 1 and out and out[-1].strip() != ELIDED:
            out.append(_indent(outline.text, lines[0]) + ELIDED)
        out += outline.text[lines[0] - 1 : lines[1]]
        if isinstance(span, Function) and span not in whole:
            out.append(_indent(outline.text, span.header_end + 1, inner=True) + ELIDED)
        last = lines[1] if not isinstance(span, Function) or span in whole else span.end
    if last < len(outline.text):
        out.append(ELIDED)
    return "\n".join(out) + "\n"


def _indent(lines: list[str], lineno: int, inner: bool = False) -> str:
    """The indentation of line `lineno` (the first body line when `inner`), for an elision marker."""
    for line in lines[lineno - 1 :]:
        if line.strip():
            return line[: len(line) - len(line.lstrip())]
    return "    " if inner else ""


def file_block(path: str, text: str) -> str:
    """One file as the repair prompt shows it (agentq/repair/reflection.py's layout)."""
    return f"### {path}\n```python\n{text.rstrip()}\n```"


def budgeted_context(files: list[str], texts: dict[str, str], query: str, tokens: int) -> tuple[dict[str, str], dict]:
    """The prompt's code for the ranked `files` within `tokens` (estimated), and what was shown: the files whose
    skeleton fitted, the functions shown whole, the tokens used."""
    outlines = {p: o for p in files if (o := _outline(p, texts[p])) is not None}
    shown: dict[str, str] = {}
    whole: dict[str, set[Function]] = {}
    used = 0
    for path in files:
        if path not in outlines:
            continue
        block = file_block(path, render(outlines[path], set()))
        if used + estimate_tokens(block) > tokens:
            break
        shown[path], whole[path], used = block, set(), used + estimate_tokens(block)
    if not shown and files:  # not even the best file's skeleton fits: its head, cut to the budget
        path = files[0]
        head = texts[path][: max(0, int(tokens * CHARS_PER_TOKEN) - len(file_block(path, "")) - 8)]
        shown[path] = file_block(path, head.rsplit("\n", 1)[0] + f"\n{ELIDED}")
        used = estimate_tokens(shown[path])
    functions = [s for p in whole for s in outlines[p].spans if isinstance(s, Function)]
    for function in _by_relevance(functions, texts, query, list(shown)):
        trial = whole[function.path] | {function}
        block = file_block(function.path, render(outlines[function.path], trial))
        cost = estimate_tokens(block) - estimate_tokens(shown[function.path])
        if used + cost <= tokens:
            shown[function.path], whole[function.path], used = block, trial, used + cost
    context = {p: b.split("\n", 2)[2].removesuffix("\n```") for p, b in shown.items()}
    notes = {"files": list(context), "whole_functions": sum(len(w) for w in whole.values()),
             "functions": len(functions), "context_tokens": used}
    return context, notes


def _by_relevance(functions: list[Function], texts: dict[str, str], query: str, files: list[str]) -> list[Function]:
    """Functions ordered by BM25 of their text against the issue; ties go to the better-ranked file, then to
    the order in the file."""
    if not functions:
        return []
    # Imported here: the sandbox image has neither bm25s nor numpy, and every `agentq` command imports this
    # module while it builds its parser (serve-scripted's arguments).
    from agentq.localize.lexical import BM25Index

    lines = {p: texts[p].splitlines() for p in files}
    docs = {f"{i}": "\n".join(lines[f.path][f.start - 1 : f.end]) for i, f in enumerate(functions)}
    scores = BM25Index(docs).scores(query)
    return [functions[int(i)] for i in sorted(docs, key=lambda i: (-scores[i], files.index(functions[int(i)].path),
                                                                   functions[int(i)].start))]
