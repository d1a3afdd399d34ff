"""Repository runs: apply a candidate patch to a pinned library tree and run its own tests in a sandbox.

Warm state: each source distribution is unpacked once into a pristine tree (a git repository at a `base`
commit, with the sdist's metadata as a `.dist-info` so `importlib.metadata.version()` works as if installed);
a run copies that tree (`cp --reflink=auto`), never re-unpacks it and never writes to it.

A run, on the trusted side: copy -> `git apply` (then `git apply --3way`, then `patch -p1 --fuzz=3`; a patch
that applies by none of them is its own verdict, `patch_status="failed"`) -> every test file, conftest.py and
pytest configuration file the patch touched is restored from the pristine tree (added ones are deleted), so a
patch cannot pass by editing the tests. Then pytest runs in bubblewrap: its own user, PID, IPC, UTS, cgroup and
network namespaces (only loopback, which bwrap brings up: boltons' socket tests need it), every capability
dropped, the jail's seccomp filter, a read-only root with the work tree as the only writable path besides a
private /tmp and the results directory, RLIMIT_AS/CPU/FSIZE, a per-run memory and pids cgroup where the host
allows (root, cgroup v1 or v2), a wall-clock timeout, and `--die-with-parent` plus the PID namespace so nothing
outlives the run. Outcomes come back as node ids through the `agentq_pytest_report` plugin and are read here.

Known limit, stated rather than hidden: the library's code runs in the same interpreter as pytest (that is
what running a repository's own suite means), so code a patch adds could rewrite pytest's reports. Patches
whose added lines name the test machinery (pytest, the report plugin, the results path) are refused before
they run; a determined forgery by other means is not excluded by this check.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import py_compile
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from agentq.sandbox import jail
from agentq.sandbox.isolation import empty_and_remove
from agentq.sandbox.verdict import TestResult, Verdict

PatchStatus = Literal["applied", "3way", "fuzzy", "empty", "failed", "refused"]
REPORT_PLUGIN = Path(__file__).with_name("agentq_pytest_report.py")
WORK_MOUNT = "/repo"
RESULTS_MOUNT = "/results"
PLUGIN_MOUNT = "/opt/agentq-plugin"
SPEC_MOUNT = "/opt/agentq-spec/args.txt"
PYCACHE_MOUNT = "/opt/agentq-pycache"
CONFIG_FILES = ("conftest.py", "pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml", "noxfile.py")
# Added lines that reach for the test machinery instead of fixing the library.
_FORGERY = re.compile(r"\b(pytest|_pytest|pluggy|agentq_pytest_report|AGENTQ_REPORT|/results)\b")
_RUN_IDS = itertools.count()
REPO_UID_BASE = 2_900_000_000
_GIT_ENV = {"GIT_AUTHOR_NAME": "agentq", "GIT_AUTHOR_EMAIL": "agentq@localhost", "GIT_COMMITTER_NAME": "agentq",
            "GIT_COMMITTER_EMAIL": "agentq@localhost", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}


class RepoVerdict(Verdict):
    """A repository run: the usual Verdict (one TestResult per selected node id) plus the SWE-bench view."""

    patch_status: PatchStatus = "applied"
    f2p_passed: int = 0
    f2p_total: int = 0
    p2p_passed: int = 0
    p2p_total: int = 0
    restored: list[str] = Field(default_factory=list, description="Test/config files the patch touched, undone.")

    @property
    def resolved(self) -> bool:
        return self.f2p_total > 0 and self.f2p_passed == self.f2p_total and self.p2p_passed == self.p2p_total

    @property
    def reward(self) -> float:
        """1.0 when resolved; otherwise partial credit for fixed F2P tests, scaled down by broken P2P tests."""
        if self.resolved:
            return 1.0
        if self.f2p_total == 0:
            return 0.0
        kept = self.p2p_passed / self.p2p_total if self.p2p_total else 1.0
        return 0.9 * (self.f2p_passed / self.f2p_total) * kept


@dataclass(frozen=True)
class RepoLimits:
    timeout_s: float = 120.0
    per_test_s: int = 30
    memory_mb: int = 4096
    file_mb: int = 64
    max_procs: int = 256


def git(tree: Path, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    # safe.directory: the work tree belongs to the sandbox's uid after a run; git would refuse it otherwise.
    return subprocess.run(["git", "-c", "safe.directory=*", "-C", str(tree), *args], input=stdin,
                          capture_output=True, text=True, env={**os.environ, **_GIT_ENV}, check=check)


def sdist_stem(sdist: Path) -> str:
    return sdist.name.removesuffix(".tar.gz")


def unpack_pristine(sdist: Path, cache: Path) -> Path:
    """The pristine tree of an sdist under `cache` (unpacked and committed once; later calls reuse it)."""
    tree = cache / sdist_stem(sdist)
    if (tree / ".git").is_dir():
        return tree
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{tree.name}-", dir=cache))
    try:
        try:
            with tarfile.open(sdist) as tar:
                tar.extractall(scratch, filter="data")
        except tarfile.TarError:
            raise ValueError(f"{sdist.name}: not a readable source archive (expected a .tar.gz)") from None
        tops = [p for p in scratch.iterdir()]
        if len(tops) != 1 or not tops[0].is_dir():
            raise ValueError(f"{sdist.name}: expected one top-level directory in the archive, found {len(tops)}")
        root = tops[0]
        _write_dist_info(root)
        git(root, "init", "-q", "-b", "main")
        git(root, "add", "-A", "-f")
        git(root, "commit", "-q", "-m", "base: pristine sdist")
        with contextlib.suppress(OSError):  # another process finished first: keep theirs
            root.rename(tree)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return tree


def _write_dist_info(root: Path) -> None:
    """`NAME-VERSION.dist-info/METADATA` from PKG-INFO, so the tree on sys.path looks installed to importlib."""
    pkg_info = root / "PKG-INFO"
    if not pkg_info.exists():
        return
    fields = dict(line.split(": ", 1) for line in pkg_info.read_text(errors="replace").splitlines()[:20]
                  if ": " in line)
    name, version = fields.get("Name", "").strip(), fields.get("Version", "").strip()
    if name and version:
        info = root / f"{re.sub(r'[-_.]+', '_', name)}-{version}.dist-info"
        info.mkdir(exist_ok=True)
        shutil.copyfile(pkg_info, info / "METADATA")


def python_path(tree: Path) -> list[str]:
    """Import roots inside the work tree: `src/` first for src-layout projects, then the root."""
    return ["src", "."] if (tree / "src").is_dir() else ["."]


def is_test_path(path: str, test_target: list[str]) -> bool:
    """A path a candidate patch may not change: under a test directory, a test module, or pytest config."""
    name = path.rsplit("/", 1)[-1]
    if name in CONFIG_FILES or name.startswith("test_") or name.endswith("_test.py"):
        return True
    parts = path.split("/")
    if any(p in ("tests", "test", "testing") for p in parts[:-1]):
        return True
    return any(path == t.rstrip("/") or path.startswith(t.rstrip("/") + "/") for t in test_target if t != ".")


def changed_paths(patch: str) -> list[str]:
    """Paths a unified diff touches (both sides), from its `diff --git`, `---` and `+++` lines."""
    paths: list[str] = []
    for line in patch.splitlines():
        if line.startswith(("--- ", "+++ ")):
            target = line[4:].split("\t")[0].strip()
            if target != "/dev/null":
                paths.append(target.split("/", 1)[1] if "/" in target else target)
        elif line.startswith("diff --git "):
            paths += [p.split("/", 1)[1] for p in line.split()[2:4] if "/" in p]
    return list(dict.fromkeys(paths))


def added_lines(patch: str) -> list[str]:
    return [line[1:] for line in patch.splitlines() if line.startswith("+") and not line.startswith("+++")]


def apply_patch(work: Path, patch: str) -> PatchStatus:
    """Apply a candidate patch in the work tree: git apply, then a 3-way merge, then GNU patch with fuzz."""
    if not patch.strip():
        return "empty"
    text = patch if patch.endswith("\n") else patch + "\n"
    if git(work, "apply", "--whitespace=nowarn", "-", stdin=text, check=False).returncode == 0:
        return "applied"
    if git(work, "apply", "--3way", "--whitespace=nowarn", "-", stdin=text, check=False).returncode == 0:
        git(work, "reset", "-q", check=False)  # --3way stages; the status below reads the work tree either way
        return "3way"
    git(work, "checkout", "-q", "--", ".", check=False)
    done = subprocess.run(["patch", "-p1", "--fuzz=3", "--batch", "--forward", "--no-backup-if-mismatch",
                           "-r", "-", "-s"], input=text, cwd=work, capture_output=True, text=True)
    if done.returncode == 0:
        return "fuzzy"
    git(work, "checkout", "-q", "--", ".", check=False)
    git(work, "clean", "-qfd", check=False)
    return "failed"


def restore_tests(work: Path, test_target: list[str]) -> list[str]:
    """Undo every change to test files and pytest configuration; returns the paths restored or removed."""
    status = git(work, "status", "--porcelain", "-z", "--untracked-files=all").stdout
    restored = []
    for entry in filter(None, status.split("\0")):
        code, path = entry[:2], entry[3:]
        if not is_test_path(path, test_target):
            continue
        restored.append(path)
        if "?" in code or "A" in code:
            (work / path).unlink(missing_ok=True)
        else:
            git(work, "checkout", "-q", "HEAD", "--", path)
    return restored


def copy_tree(pristine: Path, dest: Path) -> None:
    """A private copy of the pristine tree (reflinks where the filesystem has them: near-free)."""
    subprocess.run(["cp", "-a", "--reflink=auto", f"{pristine}/.", str(dest)], check=True)


@dataclass
class RunReport:
    outcomes: dict[str, tuple[str, str]]  # node id -> (outcome, first message line)
    exitstatus: int | None
    collected: int
    status: str  # "finished", "timeout", "crashed"
    duration_s: float
    stderr_tail: str
    collect_errors: list[tuple[str, str]]
    # node id -> pytest's traceback entries of its failure ({path, lineno, lines}; the report plugin caps them)
    tracebacks: dict[str, list[dict]] = field(default_factory=dict)


class RepoSandbox:
    """Runs pytest in a repository work tree under bubblewrap; one instance serves many runs (thread-safe)."""

    def __init__(self, limits: RepoLimits | None = None, allow_weak_isolation: bool = False) -> None:
        self.limits = limits or RepoLimits()
        self.notes: list[str] = []
        self.bwrap = jail.bwrap_path()
        if self.bwrap is None:
            if not allow_weak_isolation:
                raise jail.IsolationUnavailable("bubblewrap (bwrap) is not installed; pass --allow-weak-isolation "
                                                "to run repository tests unconfined")
            self.notes.append("no bubblewrap: pytest runs unconfined but for rlimits and the timeout")
        program = jail.seccomp_program()
        self.seccomp = program if isinstance(program, bytes) else None
        if isinstance(program, str):
            self.notes.append(program)
        self.root = os.geteuid() == 0
        # One unprivileged uid per sandbox (distinct between executors on a host), owning the work tree per run.
        self.uid = REPO_UID_BASE + os.getpid() % 1_000_000
        if not self.root:
            self.notes.append("no distinct uid: not root, so pytest runs as this user inside a user namespace")

    def _argv(self, work: Path, results: Path, spec: Path, pythonpath: list[str], seccomp_fd: int | None,
              plugins: list[str], pycache: Path | None = None, write_pycache: bool = False) -> list[str]:
        venv = os.path.realpath(sys.prefix)
        python = sys.executable
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "TZ": "UTC",
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "AGENTQ_REPORT": f"{RESULTS_MOUNT}/report.jsonl",
               "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
               "PYTHONPATH": ":".join([*(f"{WORK_MOUNT}/{p}".rstrip("/.") or WORK_MOUNT for p in pythonpath),
                                       PLUGIN_MOUNT])}
        if pycache is not None:
            env["PYTHONPYCACHEPREFIX"] = PYCACHE_MOUNT
            if write_pycache:
                del env["PYTHONDONTWRITEBYTECODE"]
        pytest_cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "agentq_pytest_report",
                      *(arg for name in plugins for arg in ("-p", name)), f"--timeout={self.limits.per_test_s}",
                      f"--rootdir={WORK_MOUNT}", f"@{SPEC_MOUNT}"]
        if self.bwrap is None:
            local_env = dict(env, AGENTQ_REPORT=str(results / "report.jsonl"),
                             PYTHONPATH=":".join([*(str(work / p) for p in pythonpath), str(REPORT_PLUGIN.parent)]))
            if pycache is not None:
                local_env["PYTHONPYCACHEPREFIX"] = str(pycache.resolve())
            return ["env", "-i", *(f"{k}={v}" for k, v in local_env.items()), *pytest_cmd[:-2],
                    f"--rootdir={work}", f"@{spec}"]
        if self.root:
            # bwrap as root (no user namespace: the host's /root stays closed to an unprivileged uid), then
            # setpriv drops to this sandbox's own unprivileged uid with no capabilities, for good.
            users = ["--unshare-pid", "--unshare-ipc", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
            drop = ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", "--inh-caps=-all",
                    "--bounding-set=-all", "--no-new-privs", "--"]
        else:
            users = ["--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL"]
            drop = []
        # /tmp first: the binds below may lie under the host's /tmp (a venv there), and a later tmpfs would hide them.
        argv = [self.bwrap, "--die-with-parent", "--new-session", *users, "--hostname", "sandbox",
                *jail._system_binds(), *jail._interpreter_binds(), "--tmpfs", "/tmp"]
        binds = ["--ro-bind", str(REPORT_PLUGIN), f"{PLUGIN_MOUNT}/agentq_pytest_report.py",
                 "--ro-bind", str(spec), SPEC_MOUNT]
        if venv != os.path.realpath(sys.base_prefix):
            binds += ["--ro-bind", venv, venv, *_link_chain(python, venv)]
        if pycache is not None:  # read-only but for the warm-up: nothing a run compiles outlives it
            binds += ["--bind" if write_pycache else "--ro-bind", str(pycache.resolve()), PYCACHE_MOUNT]
        argv += [*jail._parents(binds), *binds,
                 "--bind", str(work), WORK_MOUNT, "--bind", str(results), RESULTS_MOUNT,
                 "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/", "--chdir", WORK_MOUNT,
                 "--clearenv"]
        for key, value in env.items():
            argv += ["--setenv", key, value]
        if seccomp_fd is not None:
            argv += ["--seccomp", str(seccomp_fd)]
        return [*argv, "--", *drop, *pytest_cmd]

    def _cgroups(self) -> list[Path]:
        """Per-run memory and pids groups (cgroup v1 or v2), or none where the host does not let us."""
        if not self.root:
            return []
        name = f"{os.getpid()}-repo-{next(_RUN_IDS)}"
        made = jail._make_cgroups(name)
        if isinstance(made, str):
            if made not in self.notes:
                self.notes.append(made)
            return []
        for group in made:
            for knob, value in (("memory.limit_in_bytes", self.limits.memory_mb << 20),
                                ("memory.max", self.limits.memory_mb << 20),
                                ("pids.max", self.limits.max_procs)):
                with contextlib.suppress(OSError):
                    (group / knob).write_text(str(value))
        return made

    def run(self, work: Path, node_args: list[str], plugins: tuple[str, ...] = (), pycache: Path | None = None,
            write_pycache: bool = False) -> RunReport:
        """Run pytest on `node_args` (node ids, paths, options) in `work`; the results are read back here.

        `plugins` are loaded with `-p` on the command line: pytest reads early plugin options only there,
        not from the `@file` that carries the node ids. `pycache`: a bytecode cache the run reads (Python's
        PYTHONPYCACHEPREFIX, read-only; see warm_pycache), written only when `write_pycache`."""
        results = Path(tempfile.mkdtemp(prefix="agentq-results-"))
        if self.root:
            owned = [str(work), str(results), *([str(pycache)] if pycache is not None and write_pycache else [])]
            subprocess.run(["chown", "-R", f"{self.uid}:{self.uid}", *owned], check=True)
        spec_dir = Path(tempfile.mkdtemp(prefix="agentq-spec-"))
        spec = spec_dir / "args.txt"
        spec.write_text("\n".join(node_args) + "\n")
        os.chmod(spec_dir, 0o755)
        groups = self._cgroups()
        seccomp_fd = None
        if self.seccomp is not None and self.bwrap is not None:
            seccomp_fd = os.memfd_create("agentq-repo-seccomp", 0)
            os.write(seccomp_fd, self.seccomp)
            os.lseek(seccomp_fd, 0, os.SEEK_SET)
        limits = self.limits

        def confine() -> None:
            for group in groups:
                with contextlib.suppress(OSError):
                    (group / "cgroup.procs").write_text(str(os.getpid()))
            mem = limits.memory_mb << 20
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            cpu = int(limits.timeout_s) + 5
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
            size = limits.file_mb << 20
            resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

        started = time.monotonic()
        status = "finished"
        try:
            proc = subprocess.Popen(
                self._argv(work, results, spec, python_path(work), seccomp_fd,
                           [*needed_plugins(work), *(p for p in plugins if p not in needed_plugins(work))],
                           pycache, write_pycache),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                pass_fds=[seccomp_fd] if seccomp_fd is not None else [], preexec_fn=confine,
                start_new_session=True, cwd=work)
            try:
                _, err = proc.communicate(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                status = "timeout"
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                _, err = proc.communicate()
            report = _read_report(results / "report.jsonl")
            if status == "finished" and report[1] is None:
                status = "crashed"
            return RunReport(outcomes=report[0], exitstatus=report[1], collected=report[2], status=status,
                             duration_s=time.monotonic() - started,
                             stderr_tail=err.decode("utf-8", "replace")[-2000:], collect_errors=report[3],
                             tracebacks=report[4])
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)
            for group in groups:
                empty_and_remove(group)
            shutil.rmtree(results, ignore_errors=True)
            shutil.rmtree(spec_dir, ignore_errors=True)


    def warm_pycache(self, work: Path, pycache: Path, sources: list[str], test_target: list[str]) -> RunReport:
        """Fill a bytecode cache for runs in trees like `work` (the same files at the same mount point).

        Why: a run's interpreter starts with PYTHONDONTWRITEBYTECODE in a fresh tree, so it compiled every
        library module and pytest re-rewrote every test module's asserts on every run: about half of a run's
        CPU time (0.6-1.0 of 0.8-1.6 s, measured on click, jinja2, beautifulsoup4). Sound when sources change:
        the library's modules are compiled here with checked-hash invalidation (Python compares the source's
        hash on import, so a mutated module is compiled afresh, in memory), pytest's rewritten test modules
        carry their source hash too, and a `--collect-only` run in the sandbox writes the rest (the standard
        library and plugins as imported there). Later runs bind the cache read-only. Returns that run's report.
        """
        mount = WORK_MOUNT if self.bwrap is not None else str(work.resolve())
        tag = sys.implementation.cache_tag
        for rel in sources:
            target = pycache / mount.lstrip("/") / Path(rel).parent / f"{Path(rel).stem}.{tag}.pyc"
            with contextlib.suppress(py_compile.PyCompileError, OSError, ValueError):
                py_compile.compile(str(work / rel), cfile=str(target), dfile=f"{mount}/{rel}", doraise=True,
                                   invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
        return self.run(work, ["--collect-only", "--continue-on-collection-errors", *test_target], pycache=pycache,
                        write_pycache=True)


def needed_plugins(tree: Path) -> list[str]:
    """The installed pytest plugins this suite uses (plus pytest-timeout, which every run needs).

    Plugin autoloading is off in the sandbox: the environment's plugins cost seconds of start-up per run
    (hypothesis, anyio, coverage), which dominates a mutant's handful of tests. A plugin is loaded when its
    short name (`pytest-cov` -> `cov`) appears as a word in what pytest reads: its configuration section,
    conftest.py files and the test modules. Not in a tox command line or a dependency list (`pytest-cov` in
    pyproject's dev dependencies), nor in "pragma: no cover": loading pytest-cov for those cost 0.3-2.8 s a run.
    """
    return _plugins_for(str(tree.resolve()))


@functools.lru_cache(maxsize=64)
def _plugins_for(tree: str) -> list[str]:
    root = Path(tree)
    texts = [p for d in ("tests", "test", "testing") for p in (root / d).rglob("*.py")] if root.exists() else []
    texts += [p for p in root.rglob("conftest.py")] + [p for p in root.glob("*/*/test*/*.py")]
    texts += [p for p in root.glob("*/test*/*.py")]
    blob = "\n".join([*(pytest_section(p) for p in root.glob("*") if p.name in CONFIG_FILES and p.suffix != ".py"),
                      *(p.read_text(errors="replace") for p in dict.fromkeys(texts) if p.is_file())])
    plugins = ["pytest_timeout"]
    for ep in entry_points(group="pytest11"):
        dist = (ep.dist.name if ep.dist else ep.name).lower()
        short = re.sub(r"^pytest[-_]", "", dist)
        if ep.name not in plugins and short != "timeout" and re.search(rf"(\b|_){re.escape(short)}(\b|_)", blob):
            plugins.append(ep.name)
    return plugins


def pytest_section(config: Path) -> str:
    """The part of a configuration file pytest reads: all of pytest.ini, else the `[pytest]` (tox.ini),
    `[tool:pytest]` (setup.cfg) or `[tool.pytest...]` (pyproject.toml) section's lines."""
    text = config.read_text(errors="replace") if config.is_file() else ""
    if config.name in ("pytest.ini", ".pytest.ini"):
        return text
    keep, out = False, []
    for line in text.splitlines():
        if line.startswith("["):
            header = line.strip().strip("[]").strip()
            keep = header in ("pytest", "tool:pytest") or header.startswith("tool.pytest")
        elif keep:
            out.append(line)
    return "\n".join(out)


def _link_chain(path: str, bound: str) -> list[str]:
    """`--symlink` arguments recreating the hops from a venv's `python` to the real interpreter outside it."""
    args: list[str] = []
    while os.path.islink(path):
        link = os.readlink(path)
        if not path.startswith(bound + "/"):
            args += ["--symlink", link, path]
        path = os.path.join(os.path.dirname(path), link)
    return args


def _read_report(path: Path) -> tuple[dict[str, tuple[str, str]], int | None, int, list[tuple[str, str]],
                                     dict[str, list[dict]]]:
    """Outcome per node id (a failure in setup/call/teardown wins over a pass), exit status, errors, and the
    first traceback reported per failing node id."""
    outcomes: dict[str, tuple[str, str]] = {}
    tracebacks: dict[str, list[dict]] = {}
    exitstatus, collected, errors = None, 0, []
    rank = {"passed": 0, "xfailed": 0, "skipped": 1, "xpassed": 2, "failed": 3, "error": 3}
    with contextlib.suppress(OSError), path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict):
                continue
            if rec.get("end"):
                exitstatus, collected = rec.get("exitstatus"), int(rec.get("collected") or 0)
                continue
            nodeid, outcome = str(rec.get("nodeid", "")), str(rec.get("outcome", ""))
            if rec.get("when") == "collect":
                errors.append((nodeid, str(rec.get("message", ""))))
                continue
            if outcome not in rank:
                continue
            if isinstance(rec.get("traceback"), list) and nodeid not in tracebacks:
                tracebacks[nodeid] = [e for e in rec["traceback"] if isinstance(e, dict)]
            old = outcomes.get(nodeid)
            if old is None or rank[outcome] > rank[old[0]]:
                outcomes[nodeid] = (outcome, str(rec.get("message", "")))
    return outcomes, exitstatus, collected, errors, tracebacks


def passed(outcome: str) -> bool:
    return outcome in ("passed", "xfailed")


class RepoExecutor:
    """Runs candidate patches against repository tasks: pristine trees under `cache`, sandboxed pytest."""

    def __init__(self, cache: Path, limits: RepoLimits | None = None, allow_weak_isolation: bool = False) -> None:
        self.cache = Path(cache)
        self.sandbox = RepoSandbox(limits, allow_weak_isolation)

    def pristine(self, sdist: Path) -> Path:
        return unpack_pristine(sdist, self.cache)

    def run(self, pristine: Path, patch: str, fail_to_pass: list[str], pass_to_pass: list[str],
            test_target: list[str], base_patch: str = "") -> RepoVerdict:
        """Apply `base_patch` (the bug, trusted) then the candidate `patch`; run F2P + P2P; judge on this side."""
        started = time.monotonic()
        expected = len(fail_to_pass) + len(pass_to_pass)
        common = {"f2p_total": len(fail_to_pass), "p2p_total": len(pass_to_pass), "expected_tests": expected,
                  "isolation": list(self.sandbox.notes)}
        if any(_FORGERY.search(line) for line in added_lines(patch)):
            return RepoVerdict(status="error", patch_status="refused", **common,
                               message="the patch adds code that names the test machinery (pytest, the report "
                                       "plugin or its results path); it was not run")
        with tempfile.TemporaryDirectory(prefix="agentq-repo-") as tmp:
            work = Path(tmp) / "work"
            work.mkdir()
            copy_tree(pristine, work)
            if base_patch.strip():
                if apply_patch(work, base_patch) == "failed":
                    return RepoVerdict(status="error", patch_status="failed", **common,
                                       message="the task's bug patch does not apply to the pristine tree")
                git(work, "add", "-A", "-f")
                git(work, "commit", "-q", "-m", "bug")
            status = apply_patch(work, patch)
            if status == "failed":
                return RepoVerdict(status="error", patch_status="failed", **common,
                                   message="the patch does not apply (git apply, git apply --3way and "
                                           "patch -p1 --fuzz=3 all refused it)", duration_s=time.monotonic() - started)
            restored = restore_tests(work, test_target)
            os.chmod(tmp, 0o755)
            report = self.sandbox.run(work, [*fail_to_pass, *pass_to_pass])
        return judge(report, fail_to_pass, pass_to_pass, status, restored, common, time.monotonic() - started)


def judge(report: RunReport, fail_to_pass: list[str], pass_to_pass: list[str], patch_status: PatchStatus,
          restored: list[str], common: dict, duration: float) -> RepoVerdict:
    tests: list[TestResult] = []
    for nodeid in [*fail_to_pass, *pass_to_pass]:
        outcome, message = report.outcomes.get(nodeid, ("missing", "the test did not run"))
        tests.append(TestResult(name=nodeid, passed=passed(outcome), message="" if passed(outcome) else message))
    f2p = sum(t.passed for t in tests[: len(fail_to_pass)])
    p2p = sum(t.passed for t in tests[len(fail_to_pass):])
    failing = [t for t in tests if not t.passed]
    if report.status == "timeout":
        status, message = "timeout", "the test run exceeded its time limit"
    elif not failing:
        status, message = "passed", ""
    else:
        status = "failed"
        message = f"{failing[0].name}: {failing[0].message}"
        if report.status == "crashed":
            message = f"pytest did not finish: {report.stderr_tail.strip().splitlines()[-1:] or ['']}"[:500]
    return RepoVerdict(status=status, tests=tests, message=message, f2p_passed=f2p, p2p_passed=p2p,
                       patch_status=patch_status, restored=restored, duration_s=duration,
                       stderr_tail=report.stderr_tail[-500:], **common)


class SdistStore:
    """Where a repo task's sdist is found (`<dir>/<sdist>`), checked once against the task's sha256. A task from
    a git source (SWE-bench) has its tree read from `git` (agentq.tasks.swebench.GitTrees: local mirrors, no
    network), and is never run here: its tests need the instance's own environment."""

    def __init__(self, directory: Path, executor: RepoExecutor, git: Any = None) -> None:
        self.directory, self.executor, self.git = Path(directory), executor, git
        self._checked: dict[str, Path] = {}

    def pristine(self, repo: dict) -> Path:
        sdist = repo.get("sdist")
        if not sdist:
            if self.git is None:
                raise ValueError(f"repository {repo.get('git_url')!r}: a git source needs a local mirror "
                                 "(dataset.repoData's git/ folder); none was given")
            return self.git.pristine(repo)
        if sdist not in self._checked:
            path = self.directory / sdist
            if not path.exists():
                raise ValueError(f"{path}: no such sdist (the task's repo.sdist)")
            want = repo.get("sha256")
            if want:
                import hashlib

                got = hashlib.sha256(path.read_bytes()).hexdigest()
                if got != want:
                    raise ValueError(f"{path}: sha256 {got[:12]}... is not the task's {want[:12]}...")
            self._checked[sdist] = self.executor.pristine(path)
        return self._checked[sdist]

    def run_task(self, task: dict, patches: list[str], buggy: bool = True) -> list[RepoVerdict]:
        """Each patch against the task's buggy tree (`buggy=False`: against the pristine tree)."""
        if not task["repo"].get("sdist"):
            raise ValueError(f"task {task['task_id']}: a SWE-bench instance runs only in its instance image, on a "
                             "cluster (sandbox.swebenchUrl: `python -m controller.swebench serve`)")
        pristine = self.pristine(task["repo"])
        base = task["bug_patch"] if buggy else ""
        return [self.executor.run(pristine, p, task["fail_to_pass"], task.get("pass_to_pass", []),
                                  task["test_target"], base_patch=base) for p in patches]
