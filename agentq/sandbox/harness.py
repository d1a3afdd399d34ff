"""The trusted side of a run: the task's tests, with `solution` as a proxy to the candidate process.

`from solution import *` binds stubs: callables and classes become `Remote` handles whose calls travel over
the pipe; modules are re-imported here; prelude names (`List`, `ListNode`, ...) are this process's own;
plain constants are copied. Whatever the candidate does, only decoded plain data reaches this address
space, so the asserts, the test functions and the result reporting cannot be patched, traced, exited or
faked from the candidate. Each test's outcome is written to a pipe the candidate does not hold.
"""

from __future__ import annotations

import collections
import importlib
import sys
import traceback
import types
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from agentq.sandbox import leetcode, wire

MAX_TEXT = 2000
TESTS_FILE = "tests.py"
# Importing these has side effects (a browser, a window) that a test process must not have.
_NO_IMPORT = frozenset({"antigravity", "this", "turtle", "tkinter", "idlelib", "webbrowser"})
_BUILTIN_NAMES = frozenset(dir(__import__("builtins")))


class CandidateGone(BaseException):
    """The candidate process died, hung up or broke the protocol: no further call can succeed.

    A BaseException, so a test's broad `except Exception` cannot swallow it and pass.
    """


class CandidateError(Exception):
    """An exception the candidate raised, re-raised here by type name and message."""

    remote_type = "Exception"
    where = ""


_ERROR_TYPES: dict[str, type[CandidateError]] = {}


def error_class(name: str, base_name: str = "") -> type[CandidateError]:
    """This process's stand-in for the candidate's exception class `name`: one class per name, so the class a
    test imports from `solution` is the class of what the candidate raises, and also a subclass of the
    nearest builtin (`class Bad(ValueError)` is caught by `except ValueError`, as in plain Python)."""
    name = name if name.isidentifier() and len(name) <= 100 else "CandidateException"
    cls = _ERROR_TYPES.get(name)
    if cls is None:
        builtins = __import__("builtins")
        base = getattr(builtins, name, None)
        if not (isinstance(base, type) and issubclass(base, Exception)):
            base = getattr(builtins, base_name, None) if base_name.isidentifier() else None
        bases: tuple[type, ...] = (CandidateError,)
        if isinstance(base, type) and issubclass(base, Exception) and base is not Exception:
            bases = (CandidateError, base)
        try:
            cls = type(name, bases, {"remote_type": name})
        except TypeError:
            cls = type(name, (CandidateError,), {"remote_type": name})
        _ERROR_TYPES[name] = cls
    return cls


def forget_run() -> None:
    """What a run leaves in the test process (which lives on) that the next must not meet: the proxy module, and
    the stand-ins for the candidate's exception classes (a name's class keeps the base its first candidate gave)."""
    sys.modules.pop("solution", None)
    _ERROR_TYPES.clear()


def candidate_error(info: dict[str, Any]) -> CandidateError:
    """The candidate's exception as an instance of `error_class`: same name, same message (`str(err)` is what
    the candidate's own `str` gave); where it was raised is kept apart, for failure messages."""
    cls = error_class(str(info.get("type", "Exception")), str(info.get("base", "")))
    args = info.get("args")
    plain = type(args) is list and all(type(a) in (str, int, float, bool, type(None)) for a in args)
    try:
        err = cls(*args) if plain else cls(str(info.get("message", "")))
    except Exception:  # noqa: BLE001 - a builtin base that wants other arguments (UnicodeError and kin)
        err = cls(str(info.get("message", "")))
    err.where = str(info.get("where", ""))
    return err


class Channel:
    """Request/response to the candidate. Once broken it stays broken."""

    def __init__(self, sock: Any):
        self.sock = wire.Framed(sock)
        self.broken: str | None = None
        self.codec = wire.Codec(self._to_ref, self._from_ref)

    def _to_ref(self, value: Any) -> dict[str, Any]:
        if isinstance(value, Remote):
            return {"t": "ref", "id": value._ref}
        raise TypeError(f"cannot pass a {type(value).__name__} to the candidate (plain data only)")

    def _from_ref(self, ref: dict[str, Any]) -> Any:
        if type(ref.get("id")) is not int:
            raise wire.ProtocolError("ref without an integer id")
        if ref.get("iter") == "generator":
            return self._pull(ref["id"])
        if ref.get("iter") == "iterator":
            return RemoteIterator(self._pull(ref["id"]), str(ref.get("cls", "iterator"))[:100])
        return Remote(self, ref["id"], str(ref.get("cls", "object"))[:100])

    def _pull(self, ref: int) -> Iterator[Any]:
        """A real generator here that takes each item from the candidate's iterator when asked for it."""
        while True:
            item = self.request({"op": "next", "ref": ref})
            if item is _STOP:
                return
            yield item[0]

    def receive(self) -> Any:
        if self.broken:
            raise CandidateGone(self.broken)
        try:
            message = self.sock.recv()
            if type(message) is not dict:
                raise wire.ProtocolError("message is not an object")
            return message
        except (EOFError, OSError) as err:
            self.broken = f"the candidate process died or closed its pipe ({err})"
        except wire.ProtocolError as err:
            self.broken = f"the candidate broke the call protocol: {err}"
        raise CandidateGone(self.broken)

    def request(self, message: dict[str, Any]) -> Any:
        if self.broken:
            raise CandidateGone(self.broken)
        try:
            self.sock.send(message)
        except OSError as err:
            self.broken = f"the candidate process died or closed its pipe ({err})"
            raise CandidateGone(self.broken) from None
        reply = self.receive()
        if "exc" in reply and type(reply["exc"]) is dict:
            raise candidate_error(reply["exc"])
        if reply.get("stop") is True and message.get("op") == "next":
            return _STOP
        if "ok" not in reply:
            self.broken = "the candidate broke the call protocol: reply has neither 'ok' nor 'exc'"
            raise CandidateGone(self.broken)
        try:
            return self.codec.decode(reply["ok"]), reply.get("m")
        except (wire.ProtocolError, RecursionError) as err:
            self.broken = f"the candidate broke the call protocol: {err}"
            raise CandidateGone(self.broken) from None

    def call(self, ref: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        enc_args = [self.codec.encode(a) for a in args]
        enc_kwargs = {k: self.codec.encode(v) for k, v in kwargs.items()}
        result, mutated = self.request({"op": "call", "ref": ref, "a": enc_args, "k": enc_kwargs})
        if type(mutated) is dict:
            for key, raw in mutated.items():
                target = kwargs.get(key) if key in kwargs else _index(args, key)
                if target is not None:
                    try:
                        _update_in_place(target, self.codec.decode(raw))
                    except (wire.ProtocolError, RecursionError, TypeError, ValueError) as err:
                        self.broken = f"the candidate broke the call protocol: {err}"
                        raise CandidateGone(self.broken) from None
        return result

    def getattr(self, ref: int, name: str) -> Any:
        return self.request({"op": "getattr", "ref": ref, "name": name})[0]


def _index(args: tuple[Any, ...], key: str) -> Any:
    return args[int(key)] if key.isdigit() and int(key) < len(args) else None


def _update_in_place(target: Any, new: Any) -> None:
    """Make the test's own argument object look like the candidate's after the call."""
    if type(target) is list and type(new) is list or type(target) is bytearray and type(new) is bytearray:
        target[:] = new
    elif type(target) is collections.deque and type(new) is collections.deque:
        target.clear()
        target.extend(new)
    elif type(target) is dict and type(new) is dict or type(target) is set and type(new) is set:
        target.clear()
        target.update(new)
    elif type(target) in (leetcode.ListNode, leetcode.TreeNode) and type(new) is type(target):
        target.__dict__.clear()
        target.__dict__.update(new.__dict__)
    elif type(target) in (leetcode.ListNode, leetcode.TreeNode) and new is None:
        # The candidate emptied the structure; the test still holds its root node, which now has no children.
        for attr in ("next", "left", "right"):
            if attr in target.__dict__:
                target.__dict__[attr] = None


_STOP = object()  # the candidate's iterator is exhausted


class RemoteIterator:
    """The candidate's iterator that is not a generator (`map`, `zip`, its own class): an iterator here too,
    pulled lazily, and not a generator (tests may tell the two apart)."""

    __slots__ = ("_items", "_cls")

    def __init__(self, items: Iterator[Any], cls: str):
        self._items, self._cls = items, cls

    def __iter__(self) -> RemoteIterator:
        return self

    def __next__(self) -> Any:
        return next(self._items)

    def __repr__(self) -> str:
        return f"<candidate {self._cls} iterator>"


class Remote:
    """A function, class or object that lives in the candidate process. Compares by identity only."""

    __slots__ = ("_channel", "_ref", "_cls")

    def __init__(self, channel: Channel, ref: int, cls: str):
        self._channel, self._ref, self._cls = channel, ref, cls

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._channel.call(self._ref, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in Remote.__slots__ or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)
        return self._channel.getattr(self._ref, name)

    def __repr__(self) -> str:
        return f"<candidate {self._cls} #{self._ref}>"


def _import_local(name: str) -> types.ModuleType | None:
    top = name.partition(".")[0]
    if name in sys.modules:
        return sys.modules[name]
    if top in sys.stdlib_module_names and top not in _NO_IMPORT:
        try:
            return importlib.import_module(name)
        except ImportError:
            return None
    return None


def build_proxy(names: dict[str, Any], channel: Channel, prelude: dict[str, Any],
                protected: frozenset[str] = frozenset()) -> types.ModuleType:
    """The `solution` module the tests import. Protected names (`protected`: the tests' own top-level names; and
    every builtin) stay attributes, so `from solution import sum` still gets the candidate's, but a star import
    does not bind them: a candidate exporting `sum`, `len` or a helper's name cannot replace what the tests and
    their helpers call. Dunder names are never exported (`__builtins__` would become the tests' builtins)."""
    proxy = types.ModuleType("solution")
    exported = []
    for name, raw in names.items():
        if type(name) is not str or not name.isidentifier() or name.startswith("__"):
            continue
        tag = raw.get("t") if type(raw) is dict else None
        if tag == "prelude":
            if name not in prelude:
                continue
            value = prelude[name]
        elif tag == "module":
            value = _import_local(str(raw.get("name")))
            if value is None:
                continue
        elif tag == "exc_class":
            value = error_class(str(raw.get("name")), str(raw.get("base", "")))
        else:
            value = channel.codec.decode(raw)
        setattr(proxy, name, value)
        if name not in protected and name not in _BUILTIN_NAMES:
            exported.append(name)
    # Tests build their inputs from these; they must be this process's classes whatever the candidate did.
    for name, cls in (("ListNode", leetcode.ListNode), ("TreeNode", leetcode.TreeNode)):
        setattr(proxy, name, cls)
        if name not in exported:
            exported.append(name)
    proxy.__all__ = exported

    def prelude_name(name: str) -> Any:  # `from solution import List`: the prelude's, as in plain Python
        if name in prelude and not name.startswith("__"):
            return prelude[name]
        raise AttributeError(f"module 'solution' has no attribute {name!r}")

    proxy.__getattr__ = prelude_name  # type: ignore[method-assign]
    return proxy


def _failure_text(err: BaseException, test_lines: list[str]) -> str:
    """`AssertionError at tests.py line 12: assert candidate(...) == 3` style, for the model's feedback."""
    if isinstance(err, CandidateError):
        head = f"candidate raised {err.remote_type}: {err}" if str(err) else f"candidate raised {err.remote_type}"
        if err.where:
            head += f" ({err.where})"
    elif isinstance(err, CandidateGone):
        head = str(err)
    else:
        try:
            text = str(err)
        except Exception:  # noqa: BLE001
            text = ""
        head = f"{type(err).__name__}: {text}" if text else type(err).__name__
    line = ""
    for frame in traceback.extract_tb(err.__traceback__):
        if frame.filename == TESTS_FILE and frame.lineno and 0 < frame.lineno <= len(test_lines):
            line = f" at tests.py line {frame.lineno}: {test_lines[frame.lineno - 1].strip()}"
    return (head + line)[:MAX_TEXT]


class Tests(NamedTuple):
    code: types.CodeType  # compiled by the executor from `source` with filename TESTS_FILE
    source: str


def run_tests(
    channel: Channel,
    tests: Tests,
    test_names: list[str],
    prelude: dict[str, Any],
    report: Callable[[dict[str, Any]], None],
    protected: frozenset[str] = frozenset(),
    builtins: dict[str, Any] | None = None,
) -> None:
    """Import the tests against the proxy, run each test_* function, report each outcome, then `end`.
    `builtins`: what the tests' module runs with (Python's builtins and the LeetCode prelude's names)."""
    try:
        hello = channel.receive()
    except CandidateGone as err:
        report({"e": "import_error", "type": None, "message": str(err), "where": ""})
        return
    if type(hello.get("import_error")) is dict:
        info = hello["import_error"]
        report({"e": "import_error", **{k: str(info.get(k, ""))[:MAX_TEXT] for k in ("type", "message", "where")}})
        return
    if type(hello.get("names")) is not dict:
        report({"e": "import_error", "type": None, "message": "the candidate broke the protocol", "where": ""})
        return
    try:
        sys.modules["solution"] = build_proxy(hello["names"], channel, prelude, protected)
    except (wire.ProtocolError, RecursionError) as err:
        report({"e": "import_error", "type": None, "message": f"the candidate broke the protocol: {err}", "where": ""})
        return
    namespace: dict[str, Any] = {"__name__": "tests", "__file__": TESTS_FILE}
    if builtins is not None:
        namespace["__builtins__"] = builtins
    lines = tests.source.splitlines()
    try:
        exec(tests.code, namespace)
    except BaseException as err:  # noqa: BLE001 - report, never crash the run
        report({"e": "tests_error", "message": _failure_text(err, lines)})
        return
    for name in test_names:
        func = namespace.get(name)
        if channel.broken:
            report({"e": "test", "name": name, "passed": False, "message": f"not run: {channel.broken}"})
            continue
        if not callable(func):
            report({"e": "test", "name": name, "passed": False, "message": f"{name} is not a function"})
            continue
        try:
            func()
        except BaseException as err:  # noqa: BLE001 - every way a test can end is a result
            memory = isinstance(err, MemoryError)
            gone = channel.broken is not None
            message = _failure_text(err, lines)
            report({"e": "test", "name": name, "passed": False, "message": message, "memory": memory, "gone": gone})
            continue
        if channel.broken:  # the test swallowed CandidateGone
            report({"e": "test", "name": name, "passed": False, "message": channel.broken, "gone": True})
        else:
            report({"e": "test", "name": name, "passed": True, "message": ""})
    report({"e": "end"})
