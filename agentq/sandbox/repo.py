"""Repository runs: apply a candidate patch to a pinned library tree and run its own tests in a sandbox.

Warm state: each source distribution is unpacked once into a pristine tree (a git repository at a `base`
commit, with the sdist's metadata as a `.dist-info` so `importlib.metadata.version()` works as if installed);
a run copies that tree without its `.git` (`cp --reflink=auto`), never re-unpacks it and never writes to it.

A run, on the trusted side, before any tool touches the copy (treepatch.py): the patch is parsed and checked,
and refused as the verdict (`patch_status="refused"`) when it holds anything but edits of regular files inside
the tree (no `.git/`, links, renames, mode changes, paths out), touches files outside the library's packages, or
adds code that reaches for the interpreter's internals or the test machinery. Edits of test files and pytest
configuration are dropped (`restored`). The rest is applied here in Python (exact, then with an offset, then
with fuzz); a patch whose hunks match nowhere is its own verdict (`patch_status="failed"`). No `git`, no GNU
`patch`, nothing that reads configuration runs on a tree a candidate wrote to.

Then pytest runs in bubblewrap: its own user, PID, IPC, UTS, cgroup and network namespaces (only loopback,
which bwrap brings up: boltons' socket tests need it), every capability dropped, the jail's seccomp filter, a
read-only root with the work tree as the only writable path besides a private /tmp (its `.git` and the pytest
configuration read-only), RLIMIT_AS/CPU/FSIZE, a per-run memory and pids cgroup where the host allows (root,
cgroup v1 or v2), a wall-clock deadline, and `--die-with-parent` plus the PID namespace so nothing outlives the
run. Trusted code comes first (agentq_pytest_boot.py): pytest, its plugins and the report writer are imported
from read-only site-packages before the tree is on `sys.path`, with a configuration file the trusted side chose
(`-c`). Outcomes come back as node ids in records signed with a per-run key, over a pipe read here with a size
cap and the deadline; stderr is read the same way and only its tail is kept.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import itertools
import json
import os
import py_compile
import re
import resource
import secrets
import select
import shutil
import signal
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

from agentq.sandbox import jail, treepatch
from agentq.sandbox.isolation import empty_and_remove
from agentq.sandbox.treepatch import PatchRefused, RepoPolicy, is_test_path
from agentq.sandbox.verdict import TestResult, Verdict

PatchStatus = Literal["applied", "3way", "fuzzy", "empty", "failed", "refused"]
BOOT = Path(__file__).with_name("agentq_pytest_boot.py")
REPORT_PLUGIN = Path(__file__).with_name("agentq_pytest_report.py")
WORK_MOUNT = "/repo"
PLUGIN_MOUNT = "/opt/agentq-plugin"
SPEC_MOUNT = "/opt/agentq-spec"
PYCACHE_MOUNT = "/opt/agentq-pycache"
CONFIG_FILES = ("conftest.py", "pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml", "noxfile.py")
_RUN_IDS = itertools.count()
REPO_UID_BASE = 2_900_000_000
REPORT_CAP = 16 << 20  # bytes of signed records read from a run; more is a crashed run
STDERR_KEEP = 64 << 10  # the tail of stderr kept in memory
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
                _extract_data(tar, scratch)
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


def _extract_data(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract with tarfile's "data" filter (no absolute paths, nothing outside `dest`, no devices or links out),
    or, on a Python without it (Debian 12's 3.11.2, as in the sandbox image), with the same checks made here."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = os.path.realpath(dest)
    for member in tar.getmembers():
        target = os.path.realpath(os.path.join(root, member.name))
        link = os.path.realpath(os.path.join(os.path.dirname(target), member.linkname)) if member.issym() else \
            os.path.realpath(os.path.join(root, member.linkname)) if member.islnk() else target
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()) or \
                os.path.isabs(member.name) or not (target + "/").startswith(root + "/") or \
                not (link + "/").startswith(root + "/"):
            raise tarfile.TarError(f"unsafe member {member.name!r}")
        member.mode &= 0o755
    tar.extractall(dest)


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


def apply_patch(work: Path, patch: str) -> PatchStatus:
    """Apply a trusted patch (a task's bug) in a work tree: parsed and checked as any patch (regular files inside
    the tree only), applied in Python. "refused" for a patch that is not plain edits, "failed" for one whose
    hunks do not match."""
    try:
        return treepatch.apply_edits(work, treepatch.parse_patch(patch)).status
    except PatchRefused as err:
        return "failed" if "does not match" in str(err) or "no such file" in str(err) else "refused"


def copy_tree(pristine: Path, dest: Path, with_git: bool = True) -> None:
    """A private copy of the pristine tree (reflinks where the filesystem has them: near-free); a run's copy
    leaves out `.git` (`with_git=False`), which nothing in a run needs."""
    entries = [str(p) for p in pristine.iterdir() if with_git or p.name != ".git"]
    dest.mkdir(parents=True, exist_ok=True)
    if entries:
        subprocess.run(["cp", "-a", "--reflink=auto", *entries, f"{dest}/"], check=True)


def pytest_config(tree: Path) -> tuple[str, bytes] | None:
    """The configuration file pytest would read at the tree's root (its name and bytes), where there is one.
    Read before the run, by pytest's own rules, from the tree as the trusted side left it; the run gets this
    copy, read-only, and `-c` naming it, so a file the run or the patch adds (`.pytest.toml`) is never read."""
    from _pytest.config.findpaths import locate_config

    _, inipath, _, _ = locate_config(tree, [tree])
    if inipath is None or inipath.parent != tree or inipath.is_symlink() or not inipath.is_file():
        return None
    return inipath.name, inipath.read_bytes()[: 1 << 20]


def remove_tree(path: Path) -> None:
    """Remove a work tree whatever the run left in it (directories it closed, FIFOs, links): a pass that opens
    up what it could not enter, then passes that remove (a closed directory inside a closed one takes two)."""
    def loosen(_func, failed, _exc) -> None:  # noqa: ANN001 - shutil's onerror signature
        for target in (failed, os.path.dirname(failed)):
            with contextlib.suppress(OSError):
                if not os.path.islink(target):
                    os.chmod(target, 0o700)

    for _ in range(4):
        if not os.path.lexists(path):
            return
        shutil.rmtree(path, onerror=loosen)


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
        # The isolation profiles of jail.py: "root" (a uid of its own, cgroups), "userns" (a non-root pod: a user
        # namespace of its own, RLIMIT_NPROC counted there, the pod's cgroup as the outer bound), "none".
        self.profile = "none" if self.bwrap is None else "root" if self.root else "userns"

    def _argv(self, work: Path, spec_dir: Path, config: str | None, seccomp_fd: int | None,
              pycache: Path | None = None, write_pycache: bool = False) -> list[str]:
        """bwrap (or, weak, nothing) around `python -s -P -B agentq_pytest_boot.py spec.json`; with `pycache`,
        Python reads bytecode from that cache (PYTHONPYCACHEPREFIX), and writes it only when `write_pycache`."""
        venv = os.path.realpath(sys.prefix)
        python = sys.executable
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "TZ": "UTC",
               "PYTHONHASHSEED": "0", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
        flags = ["-s", "-P"] if write_pycache else ["-s", "-P", "-B"]
        if pycache is not None:
            env["PYTHONPYCACHEPREFIX"] = PYCACHE_MOUNT if self.bwrap is not None else str(pycache.resolve())
        if self.bwrap is None:
            boot = [python, *flags, str(BOOT), str(spec_dir / "spec.json")]
            return ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *boot]
        boot = [python, *flags, f"{PLUGIN_MOUNT}/{BOOT.name}", f"{SPEC_MOUNT}/spec.json"]
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
        binds = ["--ro-bind", str(BOOT), f"{PLUGIN_MOUNT}/{BOOT.name}",
                 "--ro-bind", str(REPORT_PLUGIN), f"{PLUGIN_MOUNT}/{REPORT_PLUGIN.name}",
                 "--ro-bind", str(spec_dir), SPEC_MOUNT]
        if venv != os.path.realpath(sys.base_prefix):
            binds += ["--ro-bind", venv, venv, *_link_chain(python, venv)]
        for site in trusted_site():
            if not site.startswith(("/usr/", venv + "/")):
                binds += ["--ro-bind", site, site]
        if pycache is not None:  # read-only but for the warm-up: nothing a run compiles outlives it
            binds += ["--bind" if write_pycache else "--ro-bind", str(pycache.resolve()), PYCACHE_MOUNT]
        argv += [*jail._parents(binds), *binds, "--bind", str(work), WORK_MOUNT]
        if config is not None:  # the trusted copy over the tree's own: read-only for the whole run
            argv += ["--ro-bind", str(spec_dir / config), f"{WORK_MOUNT}/{config}"]
        if (work / ".git").is_dir():
            argv += ["--ro-bind", str(work / ".git"), f"{WORK_MOUNT}/.git"]
        argv += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/", "--chdir", WORK_MOUNT, "--clearenv"]
        for key, value in env.items():
            argv += ["--setenv", key, value]
        if seccomp_fd is not None:
            argv += ["--seccomp", str(seccomp_fd)]
        return [*argv, "--", *drop, *boot]

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

    def _spec(self, work: Path, spec_dir: Path, node_args: list[str], plugins: list[str],
              candidate_files: list[str], fds: tuple[int, int]) -> str | None:
        """Write what the boot script reads (spec.json, the node ids, the configuration copy); the config's name."""
        tree = WORK_MOUNT if self.bwrap is not None else str(work)
        config = pytest_config(work)
        if config is not None:
            (spec_dir / config[0]).write_bytes(config[1])
            config_arg = f"{tree}/{config[0]}" if self.bwrap is not None else str(spec_dir / config[0])
        else:
            (spec_dir / "pytest.ini").write_text("[pytest]\n")
            config_arg = f"{SPEC_MOUNT if self.bwrap is not None else spec_dir}/pytest.ini"
        (spec_dir / "args.txt").write_text("\n".join(node_args) + "\n")
        spec_path = SPEC_MOUNT if self.bwrap is not None else str(spec_dir)
        # The boot script imports the plugins before pytest sees `-p` (so none comes from the tree); pytest then
        # warns that it cannot rewrite their asserts, and a suite with `filterwarnings = error` (click's) would
        # stop on that warning before collecting anything.
        args = ["-q", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestAssertRewriteWarning",
                *(arg for name in plugins for arg in ("-p", name)),
                f"--timeout={self.limits.per_test_s}", f"--rootdir={tree}", f"--confcutdir={tree}", "-c", config_arg,
                f"@{spec_path}/args.txt"]
        roots = [f"{tree}/{p}".rstrip("/.") or tree for p in python_path(work)]
        spec = {"args": args, "plugins": plugins, "roots": roots, "tree": tree, "report_fd": fds[0], "key_fd": fds[1],
                "site": trusted_site(), "candidate_files": [f"{tree}/{f}" for f in candidate_files],
                "max_procs": self.limits.max_procs}
        (spec_dir / "spec.json").write_text(json.dumps(spec))
        os.chmod(spec_dir, 0o755)
        return config[0] if config is not None else None

    def run(self, work: Path, node_args: list[str], plugins: tuple[str, ...] = (),
            candidate_files: list[str] = (), pycache: Path | None = None,  # type: ignore[assignment]
            write_pycache: bool = False) -> RunReport:
        """Run pytest on `node_args` (node ids, paths, options) in `work`; the results are read back here.

        `plugins` are loaded with `-p` (pytest reads early plugin options only on the command line, not from the
        `@file` that carries the node ids). `candidate_files`: the files a candidate patch wrote (relative to the
        tree), whose code the boot script's guard watches. `pycache`: a bytecode cache the run reads (read-only;
        see warm_pycache), written only when `write_pycache`."""
        if self.root:
            entries = [str(p) for p in work.iterdir() if p.name != ".git"]  # .git stays the trusted side's
            if pycache is not None and write_pycache:
                entries.append(str(pycache))
            if entries:
                subprocess.run(["chown", "-R", "-h", f"{self.uid}:{self.uid}", str(work), *entries], check=True)
        spec_dir = Path(tempfile.mkdtemp(prefix="agentq-spec-"))
        report_r, report_w = os.pipe()
        key_r, key_w = os.pipe()
        key = secrets.token_bytes(32)
        os.write(key_w, key)
        os.close(key_w)
        wanted = [*needed_plugins(work), *(p for p in plugins if p not in needed_plugins(work))]
        config = self._spec(work, spec_dir, node_args, wanted, list(candidate_files), (report_w, key_r))
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
        err_r = None
        try:
            err_r, err_w = os.pipe()
            proc = subprocess.Popen(
                self._argv(work, spec_dir, config, seccomp_fd, pycache, write_pycache), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err_w, pass_fds=[fd for fd in (report_w, key_r, seccomp_fd) if fd is not None],
                preexec_fn=confine, start_new_session=True, cwd=work)
            for fd in (err_w, report_w, key_r):
                os.close(fd)
            report_w = key_r = -1
            streams = _drain({report_r: REPORT_CAP, err_r: -STDERR_KEEP}, started + limits.timeout_s)
            status = "timeout" if streams is None else "finished"
            if streams is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                streams = {}
            proc.wait()
            data, err = streams.get(report_r, (b"", False)), streams.get(err_r, (b"", False))
            outcomes, exitstatus, collected, errors, tracebacks = _read_report(data[0], key)
            stderr_tail = err[0].decode("utf-8", "replace")
            if data[1]:
                status, stderr_tail = "crashed", f"{stderr_tail}\nagentq: the run's report exceeded {REPORT_CAP} bytes"
            elif status == "finished" and exitstatus is None:
                status = "crashed"
            return RunReport(outcomes=outcomes, exitstatus=exitstatus, collected=collected, status=status,
                             duration_s=time.monotonic() - started, stderr_tail=stderr_tail[-2000:],
                             collect_errors=errors, tracebacks=tracebacks)
        finally:
            for fd in (report_r, report_w, key_r, err_r, seccomp_fd):
                if fd is not None and fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            for group in groups:
                empty_and_remove(group)
            shutil.rmtree(spec_dir, ignore_errors=True)

    def warm_pycache(self, work: Path, pycache: Path, sources: list[str], test_target: list[str]) -> RunReport:
        """Fill a bytecode cache for runs in trees like `work` (the same files at the same mount point).

        Why: a run's interpreter starts with -B in a fresh tree, so it compiled every library module and pytest
        re-rewrote every test module's asserts on every run: about half of a run's CPU time (0.6-1.0 of 0.8-1.6 s,
        measured on click, jinja2, beautifulsoup4). Sound when sources change: the library's modules are
        compiled here with checked-hash invalidation (Python compares the source's hash on import, so a mutated
        module is compiled afresh, in memory), pytest's rewritten test modules carry their source's size and
        mtime (and a candidate cannot change a test file), and a `--collect-only` run of the pristine tree in
        the sandbox writes the rest (the standard library and plugins as imported there). Later runs bind the
        cache read-only. Returns that run's report.
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


@functools.lru_cache(maxsize=1)
def trusted_site() -> list[str]:
    """Where pytest, pluggy and the installed pytest plugins are imported from (read-only in the sandbox, on
    the boot script's path before the tree's): found here, so an interpreter whose packages come from
    PYTHONPATH (which the sandbox does not pass on) finds them too."""
    import pluggy
    import pytest

    dirs = [str(Path(m.__file__).resolve().parents[1]) for m in (pytest, pluggy)]
    for ep in entry_points(group="pytest11"):
        if ep.dist is not None:
            dirs.append(str(Path(str(ep.dist.locate_file(""))).resolve()))
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _drain(caps: dict[int, int], deadline: float) -> dict[int, tuple[bytes, bool]] | None:
    """Read every pipe in `caps` to its end before `deadline` (None: the deadline came first). A positive cap
    keeps the first bytes and flags more; a negative one keeps only the last that many bytes. Never blocks past
    the deadline and never holds more than the caps, whatever the run writes."""
    kept = {fd: bytearray() for fd in caps}
    over = dict.fromkeys(caps, False)
    open_fds = set(caps)
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select(list(open_fds), [], [], left)
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                open_fds.discard(fd)
                continue
            buf, cap = kept[fd], caps[fd]
            if cap >= 0:
                room = cap - len(buf)
                buf += chunk[: max(room, 0)]
                over[fd] |= len(chunk) > room
            else:
                buf += chunk
                del buf[: max(0, len(buf) + cap)]
    return {fd: (bytes(kept[fd]), over[fd]) for fd in caps}


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


def _read_report(data: bytes, key: bytes) -> tuple[dict[str, tuple[str, str]], int | None, int,
                                                list[tuple[str, str]], dict[str, list[dict]]]:
    """Outcome per node id (a failure in setup/call/teardown wins over a pass), exit status, errors, and the
    first traceback reported per failing node id; from the records whose signature matches this run's key
    (anything else in the pipe is ignored)."""
    outcomes: dict[str, tuple[str, str]] = {}
    tracebacks: dict[str, list[dict]] = {}
    exitstatus, collected, errors = None, 0, []
    rank = {"passed": 0, "xfailed": 0, "skipped": 1, "xpassed": 2, "failed": 3, "error": 3}
    for line in data.split(b"\n"):
        payload, _, mac = line.rpartition(b"\t")
        expected = hmac.new(key, payload, hashlib.sha256).hexdigest().encode()
        if not payload or not hmac.compare_digest(expected, mac):
            continue
        try:
            rec = json.loads(payload.decode("utf-8", "replace"))
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
        """Apply `base_patch` (the bug, trusted) then the candidate `patch`; run F2P + P2P; judge on this side.

        The candidate patch is parsed and held against the repository's policy before its copy of the tree is
        made (treepatch.py); what it may not touch is the verdict, not an error."""
        started = time.monotonic()
        expected = len(fail_to_pass) + len(pass_to_pass)
        common = {"f2p_total": len(fail_to_pass), "p2p_total": len(pass_to_pass), "expected_tests": expected,
                  "isolation": list(self.sandbox.notes), "profile": self.sandbox.profile}

        def refused(why: str) -> RepoVerdict:
            return RepoVerdict(status="error", patch_status="refused", **common, duration_s=time.monotonic() - started,
                               message=f"the patch was refused, not run: {why}")

        try:
            edits = treepatch.parse_patch(patch)
        except PatchRefused as err:
            return refused(str(err))
        restored = [e.path for e in edits if is_test_path(e.path, test_target)]
        edits = [e for e in edits if e.path not in restored]
        policy = RepoPolicy.of(pristine, test_target, fail_to_pass)
        for edit in edits:
            why = policy.why_not(edit.path)
            if why:
                return refused(why)
        with tempfile.TemporaryDirectory(prefix="agentq-repo-") as tmp:
            work = Path(tmp) / "work"
            try:
                copy_tree(pristine, work, with_git=False)
                if base_patch.strip() and apply_patch(work, base_patch) in ("failed", "refused"):
                    return RepoVerdict(status="error", patch_status="failed", **common,
                                       message="the task's bug patch does not apply to the pristine tree")
                try:
                    texts, fuzzy = treepatch.plan(work, edits)
                except PatchRefused as err:
                    return RepoVerdict(status="error", patch_status="failed", **common,
                                       duration_s=time.monotonic() - started,
                                       message=f"the patch does not apply: {err}")
                for rel, text in texts.items():
                    before = (work / rel).read_text(encoding="utf-8", errors="surrogateescape") \
                        if (work / rel).is_file() else ""
                    reaches = treepatch.new_reach(before, text or "")
                    if reaches:
                        return refused(f"{rel} adds code that reaches past the library ({', '.join(reaches[:5])})")
                applied = treepatch.apply_edits(work, edits)
                status: PatchStatus = "empty" if not edits else "fuzzy" if fuzzy else applied.status
                os.chmod(tmp, 0o755)
                report = self.sandbox.run(work, [*fail_to_pass, *pass_to_pass], candidate_files=applied.paths)
            finally:
                if work.exists():
                    remove_tree(work)
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
