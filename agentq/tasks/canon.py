"""Plain-data canonicalisation that generated test sources embed, so a candidate's return value cannot lie.

A candidate controls the objects it returns. If tests compared them directly, an object whose `__eq__`
always returns True, or an `int` subclass with a lying `__eq__`/`__bool__`, would pass every assert. Tests
therefore pass every value that comes out of the candidate through `_canon` first: exact builtin scalars go
through unchanged, subclasses of the builtin scalar and container types are rebuilt with the *base type's*
own methods (which ignore overrides), and anything else raises, failing the test.

The function is written here as real code (linted and unit-tested) and emitted into each test source with
`inspect.getsource`, because tests must be self-contained files that run under a plain `python -m pytest`.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import keyword


def _canon(value):
    """Return `value` as plain data (exact builtin types only), or raise TypeError."""
    kind = type(value)
    if value is None or kind in (bool, int, float, complex, str, bytes):
        return value
    if issubclass(kind, int):
        return int.__int__(value)
    if issubclass(kind, float):
        return float.__float__(value)
    if issubclass(kind, complex):
        return complex.__complex__(value)
    if issubclass(kind, str):
        return str.__str__(value)
    if issubclass(kind, bytes):
        return bytes.__bytes__(value)
    if issubclass(kind, list):
        return [_canon(item) for item in list.__iter__(value)]
    if issubclass(kind, tuple):
        return tuple([_canon(item) for item in tuple.__iter__(value)])
    if issubclass(kind, dict):
        return {_canon(key): _canon(item) for key, item in dict.items(value)}
    if issubclass(kind, frozenset):
        return frozenset([_canon(item) for item in frozenset.__iter__(value)])
    if issubclass(kind, set):
        return {_canon(item) for item in set.__iter__(value)}
    raise TypeError(f"returned a {kind.__name__!s} object, expected plain data (numbers, str, list, dict, ...)")


CANON_SOURCE = inspect.getsource(_canon)

_BUILTIN_NAMES = frozenset(n for n in dir(builtins) if not n.startswith("_") and not keyword.iskeyword(n))
_CANON_NAMES = frozenset(n.id for n in ast.walk(ast.parse(CANON_SOURCE)) if isinstance(n, ast.Name))


def module_prelude(used_names: set[str]) -> str:
    """Header of every generated test file.

    `from solution import *` would let the candidate shadow builtins the tests rely on (a solution defining
    `abs` or `sorted` at module level), so the builtins the test body uses are re-imported after it, and
    `_canon` is defined after it too.
    """
    trusted = sorted((used_names | _CANON_NAMES) & _BUILTIN_NAMES)
    lines = ["from solution import *  # noqa: F401,F403"]
    if trusted:
        lines.append(f"from builtins import {', '.join(trusted)}")
    return "\n".join(lines) + "\n\n\n" + CANON_SOURCE


def is_builtin(name: str) -> bool:
    return name in _BUILTIN_NAMES
