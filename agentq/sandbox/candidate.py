"""The untrusted side: imports the candidate as module `solution` and answers calls from the test process.

Everything here runs inside the candidate process, which the candidate fully controls once its code runs:
nothing in this module is trusted, it only has to be correct for honest candidates. The trusted side
accepts plain data from it and nothing else (see wire.py).
"""

from __future__ import annotations

import os
import sys
import traceback
import types
from collections.abc import Iterator
from typing import Any, NoReturn

from agentq.sandbox import wire

MAX_TEXT = 2000


def describe_exception(err: BaseException, filename: str) -> dict[str, str]:
    """Type name, message and the candidate's own line where it was raised."""
    try:
        message = str(err)
    except BaseException:  # noqa: BLE001 - a hostile __str__ must not stop the report
        message = "<unprintable>"
    where = ""
    for frame in traceback.extract_tb(err.__traceback__):
        if frame.filename == filename:
            where = f"solution.py line {frame.lineno}: {(frame.line or '').strip()}"
    if isinstance(err, SyntaxError) and err.filename == filename:
        where = f"solution.py line {err.lineno}: {(err.text or '').strip()}"
    info = {"type": type(err).__name__, "message": message[:MAX_TEXT], "where": where[:MAX_TEXT],
            "base": builtin_base(type(err))}
    args = getattr(err, "args", ())
    if type(args) is tuple and len(args) <= 8 and all(type(a) in _PLAIN for a in args) \
            and sum(len(a) for a in args if type(a) is str) <= MAX_TEXT:
        info["args"] = list(args)  # so str(err) and err.args on the trusted side are what they were here
    return info


_PLAIN = (str, int, float, bool, type(None))


def builtin_base(cls: type) -> str:
    """The nearest builtin exception class of `cls` (ValueError for `class Bad(ValueError)`), by name."""
    for klass in cls.__mro__:
        if klass.__module__ == "builtins":
            return klass.__name__
    return "Exception"


class _Handles:
    """Objects that stay here and are referred to by number on the trusted side."""

    def __init__(self) -> None:
        self.objects: list[Any] = []

    def to_ref(self, obj: Any) -> dict[str, Any]:
        self.objects.append(obj)
        name = getattr(type(obj), "__name__", "object")
        ref = {"t": "ref", "id": len(self.objects) - 1, "cls": str(name)[:100], "callable": callable(obj)}
        if isinstance(obj, Iterator):  # generators and other iterators are pulled lazily, one `next` at a time
            ref["iter"] = "generator" if isinstance(obj, types.GeneratorType) else "iterator"
        return ref

    def from_ref(self, ref: dict[str, Any]) -> Any:
        return self.objects[ref["id"]]


def _public_names(module: types.ModuleType) -> list[str]:
    """What `from solution import *` would bind."""
    names = module.__dict__.get("__all__")
    if isinstance(names, list | tuple) and all(type(n) is str for n in names):
        return list(names)
    return [n for n in module.__dict__ if not n.startswith("_")]


def _export(name: str, value: Any, prelude: dict[str, Any], codec: wire.Codec) -> Any:
    if name in prelude and value is prelude[name]:
        return {"t": "prelude", "name": name}
    if isinstance(value, types.ModuleType):
        return {"t": "module", "name": value.__name__}
    if isinstance(value, type) and issubclass(value, BaseException):
        return {"t": "exc_class", "name": value.__name__, "base": builtin_base(value)}
    if callable(value):
        return codec.to_ref(value)
    return codec.encode(value)


def serve(raw_sock: Any, code: str, filename: str, prelude: dict[str, Any], builtins: dict[str, Any]) -> NoReturn:
    """Import the candidate, announce its public names, then answer call/getattr requests until killed.

    `builtins`: Python's builtins and the LeetCode prelude's names (leetcode.prelude_builtins), so the module's
    own namespace holds only what the candidate defines."""
    sock = wire.Framed(raw_sock)
    module = types.ModuleType("solution")
    module.__file__ = filename
    module.__dict__["__builtins__"] = builtins
    sys.modules["solution"] = module
    try:
        # dont_inherit: this module's `from __future__ import annotations` must not leak into the candidate,
        # where it would make annotations lazy and hide NameErrors that plain Python (and LeetCode) raise.
        exec(compile(code, filename, "exec", dont_inherit=True), module.__dict__)
    except BaseException as err:  # noqa: BLE001 - SystemExit and friends are candidate failures too
        sock.send({"import_error": describe_exception(err, filename)})
        os._exit(0)
    handles = _Handles()
    module_ns = module.__dict__

    def node_classes() -> tuple[type, type]:
        return module_ns.get("ListNode", prelude["ListNode"]), module_ns.get("TreeNode", prelude["TreeNode"])

    codec = wire.Codec(handles.to_ref, handles.from_ref, node_classes, duck_nodes=True)
    names = {}
    for name in _public_names(module):
        try:
            names[name] = _export(name, getattr(module, name), prelude, codec)
        except BaseException:  # noqa: BLE001 - a name that cannot be exported is simply absent
            continue
    sock.send({"names": names})
    while True:
        request = sock.recv()
        try:
            reply = _answer(request, handles, codec)
        except BaseException as err:  # noqa: BLE001
            reply = {"exc": describe_exception(err, filename)}
        for stream in (sys.stdout, sys.stderr):
            try:  # noqa: SIM105 - no context manager per call: this is the hot path
                stream.flush()
            except BaseException:  # noqa: BLE001 - a stream the candidate broke is its own business
                pass
        sock.send(reply)


def _mutable(raw: Any) -> bool:
    return type(raw) is list or (type(raw) is dict and raw.get("t") in wire.MUTABLE_TAGS)


def _answer(request: dict[str, Any], handles: _Handles, codec: wire.Codec) -> dict[str, Any]:
    target = handles.objects[request["ref"]]
    if request["op"] == "getattr":
        return {"ok": codec.encode(getattr(target, request["name"]))}
    if request["op"] == "next":
        try:
            return {"ok": codec.encode(next(target))}
        except StopIteration:
            return {"stop": True}
    raw_args, raw_kwargs = request["a"], request["k"]
    args = [codec.decode(a) for a in raw_args]
    kwargs = {k: codec.decode(v) for k, v in raw_kwargs.items()}
    result = target(*args, **kwargs)
    reply: dict[str, Any] = {"ok": codec.encode(result)}
    # In-place edits of arguments ("modify nums in-place") travel back so the test can check them.
    sent = [(str(i), arg, raw) for i, (arg, raw) in enumerate(zip(args, raw_args, strict=False))]
    sent += [(k, kwargs[k], raw) for k, raw in raw_kwargs.items()]
    mutated = {key: enc for key, arg, raw in sent if _mutable(raw) and (enc := codec.encode(arg)) != raw}
    if mutated:
        reply["m"] = mutated
    return reply
