"""The bubblewrap sandbox each fork server (and so every candidate it forks) lives in.

Why bubblewrap around a warm fork server, rather than around each candidate: starting `bwrap` and a fresh
interpreter costs 30-80 ms here, ten times a whole warm run, and would lose the executor its throughput. So
`bwrap` builds, once per worker, what is expensive and must be right: a minimal read-only root (the
interpreter's standard library and the sandbox package only; no task data, no artifacts, no home, no /work),
its own PID, IPC, UTS, network and mount namespaces, no capabilities beyond what the trusted server needs,
`--die-with-parent`, and a seccomp filter compiled with libseccomp. Per run, the server only adds what must
be fresh (isolation.py): a PID, IPC and mount namespace for the candidate, a new tmpfs scratch directory
and /proc, a cgroup for the whole tree.

Two isolation profiles count as full isolation; every verdict names the one it ran under:

* "root": workers get cgroups (memory, pids and cpu, bound into the sandbox) and two uids each that no other
  process uses (candidate and tests).
* "userns" (a non-root pod: one uid, a read-only cgroupfs): bubblewrap maps the one uid into a user namespace
  of the worker's own; the candidate runs in its own PID, mount, network, IPC and UTS namespaces under seccomp,
  no_new_privs, no capabilities, read-only binds and rlimits (RLIMIT_NPROC binds there: it counts per user
  namespace); the tests run in the worker's test process, outside the candidate's PID namespace (the lead's
  decision of 21:40 in /work/NEWS.md), so the candidate can neither see nor signal it, and neither trace
  (seccomp, no capabilities) nor read it through /proc (not dumpable); the test process ends the run when the
  candidate's processes together hold more than its memory limit; the pod's own cgroup is the outer memory and
  pids bound.

Only a sandbox that bubblewrap cannot start at all is weak isolation (allow_weak_isolation, "none").
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import socket
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from agentq.config import ConfigError
from agentq.sandbox.isolation import empty_and_remove

PKG_MOUNT = "/opt/agentq"
CGROUP_MOUNT = "/run/agentq-cgroup"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_CONTROLLERS = ("pids", "memory", "cpu")
# cgroup v1 counts CPU time in a controller of its own (v2's cpu controller has it in cpu.stat); optional, as
# without it the time budget falls back to the wall clock.
V1_METER = "cpuacct"
CGROUP_PARENT = "agentq-sandbox"
CANDIDATE_UID_BASE = 1_000_000_000
TESTS_UID_BASE = 2_200_000_000
_SLOTS = itertools.count()
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../agentq


class IsolationUnavailable(ConfigError):
    """Full isolation cannot be had here and weak isolation was not allowed (a setting the user must change)."""


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


@dataclass
class Jail:
    """How to start one worker: the command prefix, its uids, its cgroups and what is weakened."""

    argv: list[str]
    env: dict[str, str]
    profile: str = "root"  # "root" or "userns" (see the module docstring)
    cgroups: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pass_fds: list[int] = field(default_factory=list)  # for bwrap; closed here once it has started

    def started(self) -> None:
        for fd in self.pass_fds:
            os.close(fd)
        self.pass_fds = []

    def close(self) -> None:
        """Kill whatever is left in the worker's cgroups and remove them."""
        for group in self.cgroups:
            empty_and_remove(group)


def _remove_stale(parent: Path) -> None:
    """Groups of executors that died without closing (named `<executor pid>-<slot>`)."""
    with contextlib.suppress(OSError):
        for group in parent.iterdir():
            owner = group.name.partition("-")[0]
            if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
                empty_and_remove(group)


def _make_cgroups(name: str, root: Path = CGROUP_ROOT) -> list[Path] | str:
    """The worker's groups (cgroup v1: one per controller, and cpuacct where there is one; v2: one with all
    three), or why there are none."""
    if os.geteuid() != 0:
        return "no cgroup: not root, so memory is limited per process only and processes are not counted"
    if (root / "cgroup.controllers").exists():
        return _make_cgroup_v2(name, root)
    made: list[Path] = []
    root_v1 = root
    meter = (V1_METER,) if (root_v1 / V1_METER / "cpuacct.usage").exists() else ()
    for controller in (*CGROUP_CONTROLLERS, *meter):
        parent = root_v1 / controller / CGROUP_PARENT
        try:
            parent.mkdir(exist_ok=True)
            _remove_stale(parent)
            group = parent / name
            group.mkdir(exist_ok=True)
            made.append(group)
        except OSError as err:
            for group in made:
                empty_and_remove(group)
            return f"no cgroup: cannot create {parent / name} ({err.strerror})"
    return made


def _make_cgroup_v2(name: str, root: Path) -> list[Path] | str:
    """cgroup v2: <root>/agentq-sandbox/<name> with the pids, memory and cpu controllers delegated down to it.

    Fails (and says why) where the hierarchy is not ours to change, as in most containers, whose cgroup holds
    processes and so cannot hand controllers to children."""
    parent = root / CGROUP_PARENT
    wanted = " ".join(f"+{c}" for c in CGROUP_CONTROLLERS)
    try:
        available = set((root / "cgroup.controllers").read_text().split())
        missing = set(CGROUP_CONTROLLERS) - available
        if missing:
            return f"no cgroup: cgroup v2 at {root} lacks the {', '.join(sorted(missing))} controller(s)"
        (root / "cgroup.subtree_control").write_text(wanted)
        parent.mkdir(exist_ok=True)
        (parent / "cgroup.subtree_control").write_text(wanted)
        _remove_stale(parent)
        group = parent / name
        group.mkdir(exist_ok=True)
    except OSError as err:
        return f"no cgroup: cannot set up {parent / name} on cgroup v2 ({err.strerror})"
    return [group]


def _interpreter_binds() -> list[str]:
    """Read-only binds for the interpreter and its standard library, nothing else from its prefix."""
    exe = os.path.realpath(sys.executable)
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix, "installed_base": sys.base_prefix,
            "installed_platbase": sys.base_exec_prefix}  # the interpreter's own, not a virtualenv's
    stdlib = os.path.realpath(sysconfig.get_path("stdlib", vars=base))
    platstdlib = os.path.realpath(sysconfig.get_path("platstdlib", vars=base))
    args = ["--ro-bind", exe, exe]
    for lib in dict.fromkeys([stdlib, platstdlib]):
        args += ["--ro-bind", lib, lib]
        site = os.path.join(lib, "site-packages")
        if os.path.isdir(site):
            args += ["--tmpfs", site]  # third-party packages are not the standard library
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY")
    if libdir and ldlib and os.path.exists(os.path.join(libdir, ldlib)) and not libdir.startswith("/usr/"):
        real = os.path.realpath(os.path.join(libdir, ldlib))
        args += ["--ro-bind", real, real, "--symlink", real, os.path.join(libdir, ldlib)]
    return _parents(args) + args


def _parents(args: list[str]) -> list[str]:
    """World-searchable directories above each bind target (bwrap would make /root 0700, like the host's)."""
    targets = [args[i + 2] for i, a in enumerate(args) if a in ("--ro-bind", "--symlink")]
    dirs = sorted({str(p) for t in targets for p in Path(t).parents if str(p) != "/" and not str(p).startswith("/usr")})
    out: list[str] = []
    for d in dirs:
        out += ["--perms", "0755", "--dir", d]
    return out


def _system_binds() -> list[str]:
    """Shared libraries and the usual programs: /usr read-only, the merged-/usr links as on the host."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = f"/{top}"
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def _package_binds() -> list[str]:
    """Only agentq/__init__.py and agentq/sandbox/: the rest of the package is not the server's business."""
    dest = f"{PKG_MOUNT}/agentq"
    return [
        "--ro-bind", str(_PACKAGE_DIR / "__init__.py"), f"{dest}/__init__.py",
        "--ro-bind", str(_PACKAGE_DIR / "sandbox"), f"{dest}/sandbox",
    ]


# Syscalls nothing in the sandbox needs and every candidate could use to reach more kernel than it should:
# tracing and cross-process memory, keyrings, BPF, perf, userfaultfd, io_uring, module and kexec loading.
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "keyctl", "add_key", "request_key", "bpf",
    "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "open_by_handle_at", "name_to_handle_at",
    "acct", "swapon", "swapoff", "reboot", "syslog", "quotactl", "lookup_dcookie",
)
CLONE_NEWUSER = 0x10000000


def seccomp_program(network: bool = True) -> bytes | str:
    """The seccomp filter (compiled BPF, made with libseccomp) that bwrap puts on the sandbox, or why none.

    Besides DENIED_SYSCALLS it refuses new user namespaces (the server never needs one once bwrap has set up,
    and inside one a candidate would hold every capability against much of the kernel) and answers clone3
    with ENOSYS, as container runtimes do, since its flags cannot be inspected: libc falls back to clone.

    `network=False` (the function-run workers) refuses every socket but AF_UNIX. Nothing in a worker needs
    another (its channels are socket pairs), and a candidate that cannot open one cannot change any state of
    the worker's network namespace (loopback counters, ports in TIME_WAIT, routes, netlink) for a later run
    to read: what a network namespace per run would give, without the few milliseconds of kernel time (RCU
    grace periods included) its creation and teardown cost every run (docs/benchmarks.md).
    """
    try:
        import pyseccomp as seccomp

        rules = seccomp.SyscallFilter(seccomp.ALLOW)
        for name in DENIED_SYSCALLS:
            with contextlib.suppress(Exception):  # a syscall this architecture does not have
                rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
        for name in ("unshare", "clone"):
            rules.add_rule(seccomp.ERRNO(errno.EPERM), name,
                           seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER))
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        if not network:
            rules.add_rule(seccomp.ERRNO(errno.EPERM), "socket", seccomp.Arg(0, seccomp.NE, socket.AF_UNIX))
        with tempfile.TemporaryFile() as fh:
            rules.export_bpf(fh)
            fh.seek(0)
            return fh.read()
    except Exception as err:  # noqa: BLE001 - pyseccomp or libseccomp missing or refusing: say so
        return f"no seccomp filter: libseccomp via pyseccomp is unavailable ({type(err).__name__}: {err})"


def mapped_uids(uid_map: str) -> tuple[int, int]:
    """(first, count) of the largest uid range of this user namespace (`/proc/self/uid_map`'s text)."""
    extents = [(int(f[0]), int(f[2])) for f in (line.split() for line in uid_map.splitlines()) if len(f) == 3]
    return max(extents, key=lambda e: e[1], default=(0, 0))


def pick_uids(uid_map: str, pid: int, slot: int) -> tuple[int, int]:
    """Two uids, candidate and tests, that no other live worker uses and that exist in this namespace.

    On a host (the whole 32-bit range mapped) they come from the executor's pid and a per-process slot; in a
    user-namespaced pod (typically 65536 ids) from the upper half of what is mapped.
    """
    first, count = mapped_uids(uid_map)
    offset = (pid % 4_000_000) * 256 + slot % 256
    if count >= 1 << 31:
        return CANDIDATE_UID_BASE + offset, TESTS_UID_BASE + offset
    quarter = count // 4
    if quarter < 1:
        raise IsolationUnavailable(f"too few uids in this user namespace ({count}) for distinct sandbox users")
    return first + 2 * quarter + offset % quarter, first + 3 * quarter + offset % quarter


def _uids() -> tuple[int, int]:
    with open("/proc/self/uid_map") as fh:
        return pick_uids(fh.read(), os.getpid(), next(_SLOTS))


def make_jail() -> Jail:
    """The bwrap command that starts one fork server, or IsolationUnavailable's reason as a note."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise IsolationUnavailable("bubblewrap (bwrap) is not installed")
    root = os.geteuid() == 0
    notes: list[str] = []
    argv = [
        bwrap, "--die-with-parent", "--new-session",
        "--unshare-pid", "--unshare-ipc", "--unshare-net", "--unshare-uts",
        "--hostname", "sandbox", "--chdir", "/",
        *_system_binds(), *_interpreter_binds(), *_package_binds(),
        "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev", "--tmpfs", "/tmp",
    ]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": PKG_MOUNT,
           "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    cgroups: list[Path] = []
    if root:
        cand_uid, tests_uid = _uids()
        made = _make_cgroups(f"{os.getpid()}-{cand_uid - CANDIDATE_UID_BASE}")
        if isinstance(made, str):
            notes.append(made)
        else:
            cgroups = made
            for group in made:  # v1: pids, memory, cpu(, cpuacct); v2: one group, mounted as "cgroup"
                argv += ["--bind", str(group), f"{CGROUP_MOUNT}/{group.parent.parent.name}"]
        if not (cgroups and (CGROUP_ROOT / "cgroup.controllers").exists()):
            # Hide the host's cgroup paths, except on cgroup v2, where a process may move others only
            # within its own cgroup namespace (the server must move each run's candidate into the worker's group).
            argv += ["--unshare-cgroup-try"]
        argv += ["--cap-add", "ALL"]  # the trusted server switches uids, mounts and joins cgroups per run
    else:  # the "userns" profile: one uid, no cgroup of our own (see the module docstring)
        cand_uid = tests_uid = 0
        argv += ["--unshare-user", "--uid", "0", "--gid", "0", "--cap-add", "ALL", "--unshare-cgroup-try"]
    argv += ["--remount-ro", "/"]
    pass_fds: list[int] = []
    program = seccomp_program(network=False)
    if isinstance(program, str):
        notes.append(program)
    else:
        fd = os.memfd_create("agentq-seccomp", 0)
        os.write(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
        pass_fds.append(fd)
        argv += ["--seccomp", str(fd)]
    env["AGENTQ_SANDBOX_UIDS"] = f"{cand_uid},{tests_uid}"
    env["AGENTQ_SANDBOX_CGROUPS"] = ",".join(f"{CGROUP_MOUNT}/{g.parent.parent.name}" for g in cgroups)
    return Jail(argv=[*argv, "--"], env=env, profile="root" if root else "userns", cgroups=cgroups, notes=notes,
                pass_fds=pass_fds)
