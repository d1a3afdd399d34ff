"""Parser for the values LeetCode prints in examples: `nums = [2,7,11,15], target = 9`, `Output: "a,b"`.

The grammar is JSON with LeetCode's spellings (`true`/`false`/`null`), double- or single-quoted strings and
`name = value` lists. Anything outside it raises ExampleParseError instead of being guessed at: a number
with leading zeros (reverse-bits prints its input in binary) or an output with a trailing note would
otherwise become a silently wrong test.
"""

from __future__ import annotations

import json
import re

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.])")
_NAME = re.compile(r"[A-Za-z_]\w*")
_WORDS = {"true": True, "false": False, "null": None}


class ExampleParseError(ValueError):
    pass


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def fail(self, expected: str):
        near = self.text[self.pos : self.pos + 20]
        raise ExampleParseError(f"expected {expected} at offset {self.pos} ({near!r}) in {self.text[:80]!r}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos : self.pos + 1]

    def take(self, char: str) -> bool:
        if self.peek() == char:
            self.pos += 1
            return True
        return False

    def at_end(self) -> bool:
        return self.peek() == ""

    def value(self):
        char = self.peek()
        if char == "[":
            return self.array()
        if char in "\"'":
            return self.string(char)
        match = _NUMBER.match(self.text, self.pos)
        if match:
            self.pos = match.end()
            number = match.group()
            return float(number) if any(c in number for c in ".eE") else int(number)
        match = _NAME.match(self.text, self.pos)
        if match and match.group() in _WORDS:
            self.pos = match.end()
            return _WORDS[match.group()]
        self.fail("a value")

    def array(self) -> list:
        self.pos += 1
        items: list = []
        if self.take("]"):
            return items
        while True:
            items.append(self.value())
            if self.take("]"):
                return items
            if not self.take(","):
                self.fail("',' or ']'")

    def string(self, quote: str) -> str:
        start = self.pos
        self.pos += 1
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\":
                self.pos += 2
                continue
            if char == quote:
                self.pos += 1
                body = self.text[start + 1 : self.pos - 1]
                if quote == "'":
                    if "\\" in body:
                        self.fail("a single-quoted string without escapes")
                    return body
                try:
                    return json.loads(f'"{body}"')
                except json.JSONDecodeError:
                    self.fail("a valid string escape")
            self.pos += 1
        self.fail(f"closing {quote}")

    def name(self) -> str:
        self.skip_space()
        match = _NAME.match(self.text, self.pos)
        if not match:
            self.fail("an argument name")
        self.pos = match.end()
        return match.group()


def parse_value(text: str):
    """One complete value; trailing text is an error."""
    parser = _Parser(text)
    value = parser.value()
    if not parser.at_end():
        parser.fail("end of value")
    return value


def parse_arguments(text: str) -> list[tuple[str, object]]:
    """`a = 1, b = [2,3]` -> [("a", 1), ("b", [2, 3])]."""
    parser = _Parser(text)
    args: list[tuple[str, object]] = []
    while True:
        name = parser.name()
        if not parser.take("="):
            parser.fail("'='")
        args.append((name, parser.value()))
        if parser.at_end():
            return args
        if not parser.take(","):
            parser.fail("',' between arguments")
