"""Plain-data values and message framing between the candidate process and the test process.

Only JSON crosses the pipe, and the decoder builds nothing but exact builtin types, the trusted side's
own `ListNode`/`TreeNode`, and opaque handles. So an object whose `__eq__` always returns True, an `int`
subclass, or any other object with behaviour cannot reach the side that runs the asserts: at worst it
arrives as a handle that compares by identity. Tags cover what JSON lacks:

    tuple, set, frozenset, deque, dict (any keys, order kept), bytes, bytearray, complex, range,
    big int (hex), float nan/inf, list_node / tree_node (LeetCode level order), ref (a handle to an object
    that stays on the side that owns it; an iterator's handle is pulled one `next` at a time, so a generator
    arrives as a generator, lazily, infinite ones included).
"""

from __future__ import annotations

import base64
import collections
import json
import math
import socket
from collections.abc import Callable
from typing import Any

from agentq.sandbox import leetcode

MAX_MESSAGE = 64 << 20
_BIG = 1 << 62
MUTABLE_TAGS = frozenset({"dict", "set", "bytearray", "deque", "list_node", "tree_node"})


class ProtocolError(Exception):
    """The other side sent something that is not a well-formed message."""


def send(sock: socket.socket, obj: Any) -> None:
    data = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    sock.sendall(len(data).to_bytes(4, "big") + data)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("connection closed")
        got += k
    return bytes(buf)


def recv(sock: socket.socket, limit: int = MAX_MESSAGE) -> Any:
    n = int.from_bytes(recv_exact(sock, 4), "big")
    if n > limit:
        raise ProtocolError(f"message of {n} bytes exceeds the {limit}-byte limit")
    try:
        return json.loads(recv_exact(sock, n))
    except (ValueError, RecursionError) as err:
        raise ProtocolError(f"malformed message: {err}") from None


class Framed:
    """Length-prefixed JSON messages on a stream socket, read through a buffer: a call between the test process
    and the candidate is one small message each way, which one recv then usually holds whole (reading the
    4-byte length and the body apart cost a second system call per message)."""

    _dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

    def __init__(self, sock: socket.socket, limit: int = MAX_MESSAGE) -> None:
        self.sock, self.limit = sock, limit
        self.buf = bytearray()

    def send(self, obj: Any) -> None:
        data = self._dumps(obj).encode()
        self.sock.sendall(len(data).to_bytes(4, "big") + data)

    def _fill(self, need: int) -> None:
        while len(self.buf) < need:
            chunk = self.sock.recv(max(65536, need - len(self.buf)))
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def recv(self) -> Any:
        self._fill(4)
        n = int.from_bytes(self.buf[:4], "big")
        if n > self.limit:
            raise ProtocolError(f"message of {n} bytes exceeds the {self.limit}-byte limit")
        self._fill(4 + n)
        body = bytes(self.buf[4 : 4 + n])
        del self.buf[: 4 + n]
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as err:
            raise ProtocolError(f"malformed message: {err}") from None


class Codec:
    """Encode/decode plain data; `to_ref`/`from_ref` decide what a handle means on this side."""

    def __init__(
        self,
        to_ref: Callable[[Any], dict[str, Any]],
        from_ref: Callable[[dict[str, Any]], Any],
        node_classes: Callable[[], tuple[type, type]] = lambda: (leetcode.ListNode, leetcode.TreeNode),
        duck_nodes: bool = False,
    ):
        self.to_ref = to_ref
        self.from_ref = from_ref
        self.node_classes = node_classes
        # The candidate side recognises its nodes by shape (it may define its own classes); the trusted
        # side only ever holds its own classes.
        self.duck_nodes = duck_nodes

    def encode(self, v: Any) -> Any:
        kind = type(v)
        if v is None or kind is bool or kind is str:
            return v
        if kind is int:
            return v if -_BIG < v < _BIG else {"t": "int", "v": hex(v)}
        if kind is float:
            return v if math.isfinite(v) else {"t": "float", "v": repr(v)}
        if kind is list:
            return [self.encode(x) for x in v]
        if isinstance(v, int):
            return self.encode(int.__index__(v))
        if isinstance(v, float):
            return self.encode(float.__float__(v))
        if isinstance(v, str):
            return str.__str__(v)
        if isinstance(v, list):
            return [self.encode(x) for x in list.__iter__(v)]
        if isinstance(v, tuple):
            return {"t": "tuple", "v": [self.encode(x) for x in tuple.__iter__(v)]}
        if isinstance(v, dict):
            return {"t": "dict", "v": [[self.encode(k), self.encode(x)] for k, x in dict.items(v)]}
        if isinstance(v, collections.deque):
            return {"t": "deque", "v": [self.encode(x) for x in list(v)]}
        if isinstance(v, frozenset):
            return {"t": "frozenset", "v": [self.encode(x) for x in frozenset.__iter__(v)]}
        if isinstance(v, set):
            return {"t": "set", "v": [self.encode(x) for x in set.__iter__(v)]}
        if isinstance(v, bytes | bytearray):
            tag = "bytes" if isinstance(v, bytes) else "bytearray"
            return {"t": tag, "v": base64.b64encode(bytes(v)).decode()}
        if isinstance(v, complex):
            return {"t": "complex", "v": [self.encode(v.real), self.encode(v.imag)]}
        if isinstance(v, range):
            return {"t": "range", "v": [v.start, v.stop, v.step]}
        list_cls, tree_cls = self.node_classes()
        if isinstance(v, tree_cls) or (self.duck_nodes and leetcode.is_tree_node(v)):
            return {"t": "tree_node", "v": [self.encode(x) for x in leetcode.tree_values(v)]}
        if isinstance(v, list_cls) or (self.duck_nodes and leetcode.is_list_node(v)):
            return {"t": "list_node", "v": [self.encode(x) for x in leetcode.linked_values(v)]}
        return self.to_ref(v)

    def decode(self, x: Any) -> Any:
        kind = type(x)
        if x is None or kind is bool or kind is int or kind is float or kind is str:
            return x
        if kind is list:
            return [self.decode(i) for i in x]
        if kind is not dict:
            raise ProtocolError(f"unexpected JSON value of type {kind.__name__}")
        tag, v = x.get("t"), x.get("v")
        try:
            return self._decode_tagged(tag, v, x)
        except ProtocolError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            raise ProtocolError(f"bad {tag!r} value: {err}") from None

    def _decode_tagged(self, tag: Any, v: Any, x: dict[str, Any]) -> Any:
        if tag == "ref":
            return self.from_ref(x)
        if tag == "int":
            return int(v, 16)
        if tag == "float":
            if v not in ("nan", "inf", "-inf"):
                raise ProtocolError(f"bad float {v!r}")
            return float(v)
        if tag == "bytes":
            return base64.b64decode(v)
        if tag == "bytearray":
            return bytearray(base64.b64decode(v))
        if tag == "range":
            return range(*(int(i) for i in v))
        if not isinstance(v, list):
            raise ProtocolError(f"tag {tag!r} needs a list value")
        items = [self.decode(i) for i in v]
        if tag == "tuple":
            return tuple(items)
        if tag == "dict":
            return {k: val for k, val in items}
        if tag == "set":
            return set(items)
        if tag == "frozenset":
            return frozenset(items)
        if tag == "deque":
            return collections.deque(items)
        if tag == "complex":
            return complex(*items)
        list_cls, tree_cls = self.node_classes()
        if tag == "list_node":
            return leetcode.build_linked(items, list_cls)
        if tag == "tree_node":
            return leetcode.build_tree(items, tree_cls)
        raise ProtocolError(f"unknown tag {tag!r}")
