"""A code-aware tokeniser: identifiers split at CamelCase and snake_case boundaries, whole identifiers kept.

`parseHTTPResponse` yields `parsehttpresponse`, `parse`, `http`, `response`: a report that names
`http_response` then matches code that says `HTTPResponse`. Path tokens are repeated (`PATH_WEIGHT`) so the
file's own name and package outweigh one mention in its body, which is what BM25's term frequency rewards.
"""

from __future__ import annotations

import functools
import re

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+")
# Boundaries inside one identifier: lower->Upper, ACRONYMWord, letter<->digit.
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
# Words too common in code and reports to tell files apart.
STOPWORDS = frozenset({
    "self", "cls", "the", "an", "of", "to", "in", "is", "it", "and", "or", "not", "for", "if", "else", "elif",
    "return", "def", "class", "import", "from", "as", "with", "none", "true", "false", "py", "test", "tests", "be",
    "this", "that", "on", "by", "at", "are", "was", "were",
})
PATH_WEIGHT = 3


def split_identifier(ident: str) -> list[str]:
    """The identifier itself (lower-cased) followed by its CamelCase/snake_case parts, when it has several."""
    parts = [p.lower() for piece in ident.split("_") if piece for p in _CAMEL.findall(piece)]
    whole = ident.lower().strip("_")
    return [whole, *parts] if len(parts) > 1 or (parts and parts[0] != whole) else parts or [whole]


@functools.lru_cache(maxsize=1 << 17)
def _identifier_tokens(ident: str) -> tuple[str, ...]:
    # Memoised: a large tree repeats its identifiers (sympy's ~1.2M occurrences are a few tens of thousands).
    return tuple(t for t in split_identifier(ident) if len(t) > 1 and t not in STOPWORDS)


def code_tokens(text: str) -> list[str]:
    """Tokens of source code or report text, stopwords and one-letter parts dropped."""
    out: list[str] = []
    for match in _IDENT.findall(text):
        out.extend(_identifier_tokens(match))
    return out


def path_tokens(path: str) -> list[str]:
    """Tokens of a repository path (`src/toolz/itertoolz.py` -> toolz, itertoolz, ...), without the suffix."""
    stem = path[:-3] if path.endswith(".py") else path
    return code_tokens(stem.replace("/", " ").replace(".", " "))


def document_tokens(path: str, text: str) -> list[str]:
    """What BM25 indexes for one file: its path tokens, weighted up, and its body."""
    return path_tokens(path) * PATH_WEIGHT + code_tokens(text)
