"""Trusted code first: the entry point of every repository test run, inside the sandbox.

`python -s -P -B agentq_pytest_boot.py <spec.json>` (from a read-only mount, with an environment the trusted
side chose, so no PYTHONPATH, no user site and no script directory) runs, before any of the repository's code:

1. reads the run's report key from a pipe and closes it, and makes this process undumpable (no other process
   of its uid may open its memory or file descriptors through /proc);
2. imports pytest, every submodule of it, every plugin the run loads and the report writer from the
   interpreter's read-only site-packages while the work tree is not on `sys.path`, so a `pytest.py`,
   `sitecustomize.py` or a module named like a plugin in the tree is never what runs;
3. installs an audit hook (it cannot be removed) that refuses, to code the patch wrote, what a forgery of the
   run's results needs: frames, the garbage collector's object lists, code objects, tracing, ctypes, pytest's
   modules, /proc/*/mem and /proc/*/fd; and makes pytest's own modules refuse attribute assignment from
   anything but trusted code;
4. puts the tree's import roots on `sys.path`, drops from `sys.modules` the trusted copies of libraries the
   tree provides itself (pytest imports pygments; without this pygments' tests ran the installed pygments and
   every mutant of it survived), and runs `pytest.main` with the arguments the trusted side wrote (a
   configuration file it chose with `-c`, its rootdir, its plugins).

The report writer (agentq_pytest_report.py) signs every record with the run's key, so lines written into the
report pipe by anything else are rejected. What stays possible, and is stated rather than hidden: the library's
code runs in this interpreter (that is what running its own test suite means), so a forgery that reaches
pytest's classes by plain attribute access is not excluded here; the patch check (treepatch.reach) refuses the
constructs that lead there before the run.

Standard library and pytest only: this file runs next to the repository's code.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import threading
import types
from importlib.metadata import entry_points

WATCHED = frozenset({
    "sys._getframe", "sys._current_frames", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
    "sys.settrace", "sys.setprofile", "object.__getattr__", "object.__setattr__", "object.__delattr__",
    "code.__new__", "function.__new__", "compile", "exec", "import", "open", "os.chdir", "ctypes.dlopen",
    "ctypes.dlsym", "ctypes.cdata", "ctypes.addressof", "ctypes.string_at", "ctypes.wstring_at",
    "ctypes.call_function",
})
# Refused whenever code the patch wrote is anywhere on the stack (a fix has no use for them).
ANYWHERE = frozenset({"gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames",
                      "sys.settrace", "sys.setprofile", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata",
                      "ctypes.addressof", "ctypes.string_at", "ctypes.wstring_at", "ctypes.call_function"})
# Refused when code the patch wrote calls them itself (the standard library, logging for one, may take a frame
# on its behalf).
DIRECT = frozenset({"sys._getframe", "code.__new__", "function.__new__", "compile", "exec"})
FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_code", "gi_code", "cr_code",
                         "ag_code", "__code__"})
REFUSED_IMPORTS = ("ctypes", "_ctypes", "_testcapi", "_testinternalcapi", "_xxsubinterpreters", "_pytest",
                   "pytest", "pluggy", "agentq", "gc", "inspect")
FROZEN = ("_pytest", "pytest", "pluggy", "agentq_pytest_report")


class Refused(RuntimeError):
    """What the audit hook raises: the run goes on, the code that tried fails."""


class _Origins:
    """Which source files code comes from: the patch's (untrusted) or outside the work tree (trusted)."""

    def __init__(self, candidate_files: list[str], tree: str) -> None:
        self.candidate = frozenset(os.path.realpath(f) for f in candidate_files)
        self.tree = os.path.realpath(tree) + "/"
        self._seen: dict[str, tuple[bool, bool]] = {}

    def _classify(self, filename: str) -> tuple[bool, bool]:
        known = self._seen.get(filename)
        if known is None:
            real = os.path.realpath(filename) if filename.startswith("/") else filename
            trusted = filename.startswith("<frozen ") or filename.startswith("/") and not real.startswith(self.tree)
            known = self._seen[filename] = (real in self.candidate, trusted)
        return known

    def candidate_code(self, frame: types.FrameType | None) -> bool:
        return frame is not None and self._classify(frame.f_code.co_filename)[0]

    def trusted_code(self, frame: types.FrameType | None) -> bool:
        return frame is not None and self._classify(frame.f_code.co_filename)[1]

    def candidate_on_stack(self, frame: types.FrameType | None) -> bool:
        while frame is not None:
            if self.candidate_code(frame):
                return True
            frame = frame.f_back
        return False


def _check(origins: _Origins, event: str, args: tuple, caller: types.FrameType | None) -> None:
    if event in DIRECT and origins.candidate_code(caller) or event in ANYWHERE and origins.candidate_on_stack(caller):
        raise Refused(f"agentq sandbox: {event} is refused to code the patch added")
    if event == "object.__getattr__" and args[1] in FRAME_ATTRS and origins.candidate_code(caller):
        raise Refused(f"agentq sandbox: reading {args[1]} is refused to code the patch added")
    if event in ("object.__setattr__", "object.__delattr__"):  # a function's __code__, __defaults__, ...
        module = str(getattr(args[0], "__module__", "") or "")
        if origins.candidate_code(caller) or module.startswith(FROZEN) and not origins.trusted_code(caller):
            raise Refused(f"agentq sandbox: {event} {args[1]!r} is refused")
    if event == "import" and str(args[0]).startswith(REFUSED_IMPORTS) and origins.candidate_on_stack(caller):
        raise Refused(f"agentq sandbox: importing {args[0]} is refused to code the patch added")
    if event in ("open", "os.chdir") and isinstance(args[0], str | bytes):
        path = os.fsdecode(args[0])
        if "proc" in path or "/fd" in path or event == "os.chdir":
            parts = os.path.realpath(path).split("/")
            if parts[1:2] == ["proc"] and (event == "os.chdir" or {"mem", "fd", "map_files"} & set(parts)):
                raise Refused(f"agentq sandbox: {event} {path} is refused")


def _install_guard(origins: _Origins) -> None:
    state = threading.local()
    getframe = sys._getframe

    def hook(event: str, args: tuple) -> None:
        if event not in WATCHED or getattr(state, "busy", False):
            return
        state.busy = True  # what the check itself does (frames, realpath) raises events too
        try:
            _check(origins, event, args, getframe(1))
        finally:
            state.busy = False

    sys.addaudithook(hook)


def _freeze(origins: _Origins) -> None:
    """pytest's modules (and the report writer) refuse attribute assignment except from trusted code (pytest
    sets some of its own at run time; monkeypatch, from site-packages, is trusted)."""

    class Frozen(types.ModuleType):
        def __setattr__(self, name: str, value: object) -> None:
            if not origins.trusted_code(sys._getframe(1)):
                raise Refused(f"agentq sandbox: {self.__name__}.{name} is read-only")
            types.ModuleType.__setattr__(self, name, value)

        def __delattr__(self, name: str) -> None:
            if not origins.trusted_code(sys._getframe(1)):
                raise Refused(f"agentq sandbox: {self.__name__}.{name} is read-only")
            types.ModuleType.__delattr__(self, name)

    for name, module in list(sys.modules.items()):
        if name.startswith(FROZEN) and type(module) is types.ModuleType:
            module.__class__ = Frozen


def _tree_first(roots: list[str], kept: tuple[str, ...]) -> None:
    """The tree's own copy of a library the trusted side imported too is what its tests import, as in a checkout
    installed for development: the trusted copy leaves `sys.modules` (the trusted modules keep their references
    to it). Never pytest, pluggy, the report writer, a loaded plugin or the standard library: the tree cannot
    shadow those."""
    provided = set()
    for root in roots:
        try:
            entries = os.listdir(root)
        except OSError:
            continue
        for entry in entries:
            name = entry.removesuffix(".py")
            if name.isidentifier() and (entry.endswith(".py") or os.path.isdir(os.path.join(root, entry))):
                provided.add(name)
    provided -= set(sys.stdlib_module_names)
    for name in [m for m in sys.modules if m.partition(".")[0] in provided and not m.startswith(kept)]:
        del sys.modules[name]


def _undumpable() -> None:
    import ctypes

    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]  # a later `import ctypes` goes through the import system, and so the audit hook


def _load_plugin(name: str) -> None:
    """A `-p` plugin by entry-point name (as pytest resolves it), else by module name."""
    for ep in entry_points(group="pytest11"):
        if ep.name == name:
            ep.load()
            return
    importlib.import_module(name)


def main() -> int:
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    key = os.read(spec["key_fd"], 64)
    os.close(spec["key_fd"])
    _undumpable()
    # Processes of the run's uid, counted in its user namespace (the pids cgroup bounds them as root as well).
    resource.setrlimit(resource.RLIMIT_NPROC, (spec["max_procs"], spec["max_procs"]))
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [here, *(d for d in spec["site"] if d not in sys.path)]
    import _pytest
    import agentq_pytest_report as report
    import pytest

    sys.path.remove(here)
    for info in __import__("pkgutil").walk_packages(_pytest.__path__, "_pytest."):
        if not info.name.startswith(("_pytest.pytester", "_pytest._py")):
            importlib.import_module(info.name)
    plugins_before = set(sys.modules)
    for name in spec["plugins"]:
        _load_plugin(name)
    plugin_modules = tuple(sorted({m.partition(".")[0] for m in set(sys.modules) - plugins_before}))
    os.set_inheritable(spec["report_fd"], False)  # processes the tests start do not hold the report pipe
    report.configure(spec["report_fd"], key)
    del key
    origins = _Origins(spec["candidate_files"], spec["tree"])
    _freeze(origins)
    _install_guard(origins)
    sys.path[:0] = spec["roots"]
    _tree_first(spec["roots"], (*FROZEN, *REFUSED_IMPORTS, *plugin_modules))
    return int(pytest.main(spec["args"], plugins=[report]))


if __name__ == "__main__":
    sys.exit(main())
