"""Kernel-level confinement for the processes a fork server starts, inside what bubblewrap set up (jail.py).

Each fork server has its own pair of unprivileged uids (chosen by the executor, unique among live
workers), one for candidates and one for test processes, and cgroups (memory, pids, cpu) that hold each
candidate's whole tree. Per run it adds what must be fresh for each candidate: a PID namespace whose init
is trusted, IPC and mount namespaces, tmpfs scratch and a new /proc; the candidate then drops every
capability for good. Run without bubblewrap (weak isolation allowed), the older set-up below applies
(private /tmp, empty network namespace, uids from the server's pid), and what is missing is listed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import sys
import time
from pathlib import Path

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
CANDIDATE_UID_BASE = 1_500_000_000
TESTS_UID_BASE = 1_600_000_000
CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))
CGROUP_PARENT = "agentq-sandbox"
CPU_PERIOD_US = 100_000

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> bool:
    return _libc.prctl(option, value, 0, 0, 0) == 0


def unshare_network() -> str | None:
    """Move this process into a fresh, empty network namespace (no interfaces up, not even loopback)."""
    if _libc.unshare(CLONE_NEWNET) != 0:
        return f"network not isolated: unshare(CLONE_NEWNET) failed ({os.strerror(ctypes.get_errno())})"
    return None


def private_tmp(size_mb: int) -> str | None:
    """Give this server and its children their own size-capped tmpfs on every world-writable scratch dir.

    Candidates then cannot leave files where other processes look, cannot fill the real disk, and run
    directories live in memory (creating and removing them on the ext4 root costs milliseconds per run).
    """
    if _libc.unshare(CLONE_NEWNS) != 0:
        return f"shared /tmp: unshare(CLONE_NEWNS) failed ({os.strerror(ctypes.get_errno())})"
    if _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return f"shared /tmp: making mounts private failed ({os.strerror(ctypes.get_errno())})"
    options = f"size={size_mb}m,mode=1777".encode()
    for path in SCRATCH_DIRS:
        if os.path.isdir(path) and _libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options):
            return f"shared {path}: mounting a private tmpfs failed ({os.strerror(ctypes.get_errno())})"
    return None


def _closed_ancestor(path: str) -> str | None:
    """The topmost directory on the way to `path` that other users cannot enter (like /root), if any."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        ancestor = "/" + "/".join(parts[:i])
        if os.path.isdir(ancestor) and not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


def expose_interpreter() -> str | None:
    """Let the unprivileged uids read the interpreter's own files when they sit under a closed directory.

    A pyenv Python lives under /root (mode 700): a candidate's `import hashlib` would fail as uid 1.5e9.
    In the server's private mount namespace the closed directory is covered with an empty tmpfs and only
    the interpreter's directories are bound back into it, so the rest of it stays invisible.
    """
    wanted = sorted({os.path.realpath(p) for p in (*sys.path, sys.base_prefix, sys.prefix) if os.path.isdir(p)})
    roots = [p for p in wanted if not any(p.startswith(q + "/") for q in wanted)]
    plan = [(p, b) for p in roots if (b := _closed_ancestor(p)) is not None]
    if not plan:
        return None
    fds = [(p, os.open(p, os.O_PATH)) for p, _ in plan]
    try:
        blockers = sorted({b for _, b in plan})
        for blocker in [b for b in blockers if not any(b.startswith(o + "/") for o in blockers)]:
            if _libc.mount(b"tmpfs", blocker.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=755"):
                return f"interpreter may be unreadable to candidates: cannot cover {blocker}"
        for path, fd in fds:
            os.makedirs(path, mode=0o755, exist_ok=True)
            if _libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, MS_BIND | MS_REC, None):
                return f"interpreter may be unreadable to candidates: cannot bind {path}"
    finally:
        for _, fd in fds:
            os.close(fd)
    return None


def become_subreaper() -> None:
    """Orphaned grandchildren are re-parented to us, so we can reap them instead of leaving zombies."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def reap_orphans() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_uid(uid: int) -> None:
    """kill(-1) from a helper running as `uid` reaches exactly that uid's processes, wherever they hide."""
    helper = os.fork()
    if helper == 0:
        try:
            os.setresuid(uid, uid, uid)
            for _ in range(100):
                os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        os._exit(0)
    os.waitpid(helper, 0)


def set_limits(limits: dict[str, float], nproc: int | None) -> None:
    """rlimits of a run's process; `nproc` None: RLIMIT_NPROC is set later (a thread is still to be started)."""
    cpu = int(limits["cpu_s"])
    mem = int(limits["memory_mb"]) << 20
    fsize = int(limits["file_mb"]) << 20
    for res, value in (
        (resource.RLIMIT_AS, mem),
        (resource.RLIMIT_FSIZE, fsize),
        (resource.RLIMIT_NPROC, nproc),
        (resource.RLIMIT_CORE, 0),
    ):
        if value is not None:
            resource.setrlimit(res, (value, value))
    # Soft limit: SIGXCPU, reported as a CPU-time timeout. With hard == soft the kernel sends SIGKILL on the
    # same tick instead; the hard limit a second later only stops a candidate that ignores SIGXCPU.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))


def _remove_stale_groups(parent: Path) -> None:
    """Groups of servers that were killed outright: kill what they left running, then remove them."""
    for group in parent.iterdir():
        if not group.name.isdigit() or os.path.exists(f"/proc/{group.name}"):
            continue
        empty_and_remove(group)


def empty_and_remove(group: Path) -> None:
    """Kill every process in a cgroup until it stays empty (a fork bomb refills it), then remove the group."""
    for _ in range(100):
        try:
            pids = (group / "cgroup.procs").read_text().split()
        except OSError:
            break
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.002)
    with contextlib.suppress(OSError):
        group.rmdir()


def _read(path: str) -> bytes:
    """A small file's bytes with plain system calls: per run, pathlib's and io's objects cost more (touching them
    copies their pages in every forked child) than the read itself."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _write(path: str, value: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value)
    finally:
        os.close(fd)


def _write_if_changed(files: list[str], value: str) -> None:
    for path in files:
        if _read(path).strip() != value.encode():
            _write(path, value.encode())


def _cpu_meter(groups: list[Path]) -> Path | None:
    """The file that counts the CPU time of a worker's cgroup tree: cpuacct.usage (v1) or cpu.stat (v2)."""
    for group in groups:
        if (group / "cpuacct.usage").exists():
            return group / "cpuacct.usage"
    for group in groups:
        if (group / "cpu.stat").exists() and "usage_usec" in (group / "cpu.stat").read_text():
            return group / "cpu.stat"
    return None


class Confinement:
    """Per-fork-server identities and process accounting; `notes` lists what could not be enforced.

    Inside bubblewrap (jail.py) the executor chose the uids and bound the cgroups in, and passes both in the
    environment; run directly (weak isolation allowed, no bwrap), the server derives them from its pid.
    """

    def __init__(self) -> None:
        self.notes: list[str] = []
        pid = os.getpid()
        given = os.environ.get("AGENTQ_SANDBOX_UIDS")
        if given:
            self.candidate_uid, self.tests_uid = (int(u) for u in given.split(","))
            self.root = self.candidate_uid != self.tests_uid
            self.cgroups = [Path(p) for p in os.environ.get("AGENTQ_SANDBOX_CGROUPS", "").split(",") if p]
        else:
            self.root = os.geteuid() == 0 and self._can_switch_uid(CANDIDATE_UID_BASE + pid)
            self.candidate_uid = CANDIDATE_UID_BASE + pid if self.root else os.getuid()
            self.tests_uid = TESTS_UID_BASE + pid if self.root else os.getuid()
            if not self.root:
                self.notes.append("no uid switch: not root (or no such uid here), candidates run as the server's user")
            group = self._make_cgroup(pid)
            self.cgroups = [group] if group is not None else []
            if group is None:
                self.notes.append("no pids cgroup: processes a candidate detaches are found by uid instead")
        self.cpu_meter = _cpu_meter(self.cgroups)
        self._limit_files()

    def open_meter(self) -> None:
        """Keep the CPU meter open, so a process that then gives up its uid (the test process) can still read it."""
        if self.cpu_meter is not None:
            self._meter_fd = os.open(self.cpu_meter, os.O_RDONLY)

    def cpu_used(self) -> float | None:
        """CPU seconds used so far by every process that ever ran in the worker's cgroup (the runs'
        candidates; their inits and the tests never join), or None where no cgroup meters it."""
        if self.cpu_meter is None:
            return None
        fd = getattr(self, "_meter_fd", None)
        text = os.pread(fd, 4096, 0).decode() if fd is not None else self.cpu_meter.read_text()
        if self.cpu_meter.name == "cpuacct.usage":  # cgroup v1: nanoseconds
            return int(text) / 1e9
        for line in text.splitlines():  # cgroup v2 cpu.stat: "usage_usec N"
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        return None

    @staticmethod
    def _can_switch_uid(uid: int) -> bool:
        if os.geteuid() != 0:
            return False
        child = os.fork()
        if child == 0:
            try:
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            except OSError:
                os._exit(1)
            os._exit(0)
        return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0

    def _make_cgroup(self, pid: int) -> Path | None:
        if not self.root:
            return None
        for root in CGROUP_ROOTS:
            if not (root / "cgroup.procs").exists():
                continue
            try:
                (root / CGROUP_PARENT).mkdir(exist_ok=True)
                _remove_stale_groups(root / CGROUP_PARENT)
                group = root / CGROUP_PARENT / str(pid)
                group.mkdir(exist_ok=True)
                if not (group / "pids.max").exists():
                    group.rmdir()
                    continue
                return group
            except OSError:
                continue
        return None

    def _limit_files(self) -> None:
        """Once, in the fork server: one core for the whole tree however many processes (it never changes), and
        which limit files this host has (each run is forked anew, so nothing a run learns would be kept)."""
        self._procs_files = [str(g / "cgroup.procs") for g in self.cgroups]
        self._pids_files = [str(g / "pids.max") for g in self.cgroups if (g / "pids.max").exists()]
        self._memory_files = []  # (file, its memsw partner on v1, or None)
        for group in self.cgroups:
            quota = group / "cpu.cfs_quota_us"
            if quota.exists():
                (group / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                quota.write_text(str(CPU_PERIOD_US))
            if (group / "cpu.max").exists():  # the same on cgroup v2
                (group / "cpu.max").write_text(f"{CPU_PERIOD_US} {CPU_PERIOD_US}")
            if (group / "memory.max").exists():  # cgroup v2
                if (group / "memory.swap.max").exists():
                    (group / "memory.swap.max").write_text("0")
                self._memory_files.append((str(group / "memory.max"), None))
            if (group / "memory.limit_in_bytes").exists():
                memsw = group / "memory.memsw.limit_in_bytes"
                self._memory_files.append((str(group / "memory.limit_in_bytes"),
                                           str(memsw) if memsw.exists() else None))
                with contextlib.suppress(OSError):
                    (group / "memory.swappiness").write_text("0")

    @property
    def limits_memory(self) -> bool:
        """Whether a cgroup holds the candidate's whole tree to its memory limit."""
        return bool(self._memory_files)

    def prepare_run(self, limits: dict[str, float]) -> None:
        """In the candidate's process, before it joins the cgroups: the limits for its whole tree, written only
        where they differ from what an earlier run left (a write costs more than a read)."""
        _write_if_changed(self._pids_files, str(int(limits["max_procs"])))
        memory = str(int(limits["memory_mb"]) << 20).encode()
        for limit, memsw in self._memory_files:
            if _read(limit).strip() == memory:
                continue
            # memsw (memory + swap, where the kernel accounts it) must stay >= the memory limit, so the order of
            # the two writes depends on the direction; EBUSY while the last run's pages linger.
            files = [limit, memsw] if memsw is not None else [limit]
            for order in (files, files[::-1]):
                with contextlib.suppress(OSError):
                    for f in order:
                        _write(f, memory)
                    break

    def join(self) -> None:
        """In the candidate, before anything of it runs: it and every process it starts join the cgroups."""
        for path in self._procs_files:
            _write(path, b"0")

    def enter(self, limits: dict[str, float], uid: int, nproc: int | None) -> None:
        """In a freshly forked child: apply rlimits, drop to `uid` for good and every capability with it."""
        set_limits(limits, nproc)
        drop_privileges(uid)

    def kill_candidates(self) -> None:
        """Where a run has no PID namespace of its own: kill whatever the cgroups list, else (root, outside
        bubblewrap) every process of the candidate's uid."""
        if self.cgroups:
            self._kill_cgroups()
        elif self.root and self.candidate_uid != self.tests_uid and not os.environ.get("AGENTQ_SANDBOX_UIDS"):
            kill_uid(self.candidate_uid)

    def _kill_cgroups(self) -> None:
        for group in self.cgroups:
            procs = group / "cgroup.procs"
            for _ in range(200):
                pids = procs.read_text().split()
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)
                reap_orphans()  # a zombie stays listed until its parent (we, as subreaper) reaps it
                time.sleep(0.0005)

    def close(self) -> None:
        if self.cgroups:
            self._kill_cgroups()
            if not os.environ.get("AGENTQ_SANDBOX_UIDS"):  # groups the executor made are its to remove
                for group in self.cgroups:
                    with contextlib.suppress(OSError):
                        group.rmdir()


# --- per-run namespaces -------------------------------------------------------------------------------
# bubblewrap built the worker's sandbox once; these add, per run, only what must be fresh for each candidate.

CLONE_NEWPID = 0x20000000
CLONE_NEWIPC = 0x08000000
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_KEEP_CAPS_LOCKED, SECBIT_NO_CAP_AMBIENT_RAISE and their locks
SECUREBITS_LOCKED_DOWN = 0x1 | 0x2 | 0x4 | 0x8 | 0x20 | 0x40 | 0x80
CAP_LAST = 63


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")


def not_dumpable() -> None:
    """Processes of the same uid (the candidate, without root) can no longer open our /proc fds or memory."""
    _prctl(PR_SET_DUMPABLE, 0)


def new_pid_namespace() -> None:
    """The next child is pid 1 of a new PID namespace (undone by `restore_pid_namespace`)."""
    _check(_libc.unshare(CLONE_NEWPID) == 0, "unshare(CLONE_NEWPID)")


CLONE_VM = 0x100
CLONE_FILES = 0x400
_libc.clone.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
_libc.clone.restype = ctypes.c_int
_INIT_STACK = ctypes.create_string_buffer(1 << 16)  # one run's init at a time: reaped before the next starts


def spawn_namespace_init() -> int:
    """pid 1 of the PID namespace `new_pid_namespace` made, so that the candidate forked next is pid 2 and, like
    any program, can signal itself (the kernel drops the signals a namespace's init has no handler for).

    It is libc's pause() in a clone of this process that shares its memory and descriptor table (CLONE_VM,
    CLONE_FILES): nothing to copy, fault in or tear down, where a forked Python init cost a run about 1.3 ms of
    CPU, and no copies of the run's pipes and sockets that would keep their other ends from seeing them close.
    It never returns, runs no code of ours and has no signal handler (the caller ignores SIGINT, the one Python
    installs), so no signal from inside the namespace reaches it; killing it ends the namespace and every process
    of the run with it. It reaps nothing: what a candidate orphans stays a zombie until the run ends. The memory
    it shares is the template's, which never holds a job, a test or a result, and is not dumpable: nothing of
    the run can read it, or take its descriptors, through /proc or pidfd_getfd (the hostile suite tries)."""
    top = (ctypes.addressof(_INIT_STACK) + len(_INIT_STACK)) & ~15
    # CLONE_FILES: it shares this process's descriptors rather than keeping copies (of the run's pipes and sockets,
    # whose other ends would then never see them close).
    flags = CLONE_VM | CLONE_FILES | signal.SIGCHLD
    pid = _libc.clone(ctypes.cast(_libc.pause, ctypes.c_void_p), top, flags, None)
    _check(pid > 0, "clone(CLONE_VM) of the run's init")
    return pid


def restore_pid_namespace(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWPID) == 0, "setns(pid)")


def private_mounts() -> None:
    """Once, in the fork server: nothing a run mounts in its own mount namespace propagates back here."""
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0, "making mounts private")


def fresh_run_mounts(uid: int, scratch_mb: int) -> None:
    """In the candidate's process, before its code runs: own IPC and mount namespaces, a new /proc (of the run's PID
    namespace), and empty tmpfs scratch dirs.

    SysV objects die with the IPC namespace, files with the tmpfs, when the run's last process ends: nothing one
    candidate leaves there is visible to the next. (The network: jail.seccomp_program, network=False.)
    """
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWIPC) == 0, "unshare(CLONE_NEWNS|CLONE_NEWIPC)")
    options = f"size={scratch_mb}m,mode=0700,uid={uid},gid={uid}".encode()
    for path in (b"/tmp", b"/dev/shm"):
        _check(_libc.mount(b"tmpfs", path, b"tmpfs", MS_NOSUID | MS_NODEV, options) == 0, f"tmpfs on {path!r}")
    ok = _libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | 8, None) == 0  # 8: MS_NOEXEC
    _check(ok, "mounting /proc")


def _nspid(entry: str) -> list[bytes]:
    """The process's pid in each PID namespace from this one down ("NSpid:" of its status, readable by anyone)."""
    with open(f"/proc/{entry}/status", "rb") as fh:
        for line in fh:
            if line.startswith(b"NSpid:"):
                return line.split()[1:]
    return []


def run_memory() -> int:
    """Bytes of memory held by the candidate's processes: every process of a PID namespace below this process's
    own but that namespace's init (a worker runs one run at a time), from this namespace's /proc. Proportional
    set sizes, so pages a fork shares with its parent count once, not once per process. A process that made
    itself undumpable hides its smaps: its whole resident size counts then (statm, readable by anyone), which
    can only overstate it."""
    total, page, depth = 0, os.sysconf("SC_PAGE_SIZE"), len(_nspid("self"))
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            nspid = _nspid(entry)
        except OSError:
            continue
        if len(nspid) <= depth or nspid[-1] == b"1":
            continue
        try:
            with open(f"/proc/{entry}/smaps_rollup", "rb") as fh:
                total += next(int(line.split()[1]) << 10 for line in fh if line.startswith(b"Pss:"))
        except (OSError, StopIteration, IndexError, ValueError):
            try:
                with open(f"/proc/{entry}/statm", "rb") as fh:
                    total += int(fh.read().split()[1]) * page
            except (OSError, IndexError, ValueError):
                continue
    return total


_bounding_dropped = False
# Made once, in the template: creating a ctypes type or instance in each forked child costs it time and the
# copy-on-write faults of every object that touches.
_CAP_HEADER = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
_NO_CAPS = (_CapData * 2)()


def drop_bounding_set() -> None:
    """Empty the capability bounding set, which only limits what an exec could gain: a process keeps its own
    capabilities, and every child it forks inherits the empty set (so none pays 64 prctl calls per run)."""
    global _bounding_dropped
    for cap in range(CAP_LAST + 1):
        _prctl(PR_CAPBSET_DROP, cap)
    _bounding_dropped = True


def drop_privileges(uid: int) -> None:
    """Become `uid` with no capability, none in the bounding set and none regained by exec."""
    if os.geteuid() == 0 and uid != 0:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
    if not _bounding_dropped:
        drop_bounding_set()
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    _prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_DOWN)
    if os.geteuid() != uid:
        os.setresuid(uid, uid, uid)
    _check(_libc.capset(ctypes.byref(_CAP_HEADER), _NO_CAPS) == 0, "capset")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
