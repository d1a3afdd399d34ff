"""A round's view of the world: where its artifacts live, which tasks and model it uses, and when a step is done.

Every `agentq <step>` command starts here, whether the embedded runner calls it or a Kubernetes Job
does; the environment says which: `AGENTQ_STORE_PATH` (a mounted PVC), `SANDBOX_URL` (sandbox pods),
`AGENTQ_RESULT_FILE` (the container's termination message, which the operator reads back).

A step is done when its completion marker exists and holds the digest of its inputs. Digests chain:
a step's digest covers its own settings and the digests of the steps it reads from, so changing the
collect settings re-runs everything downstream, and nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentq import steplog
from agentq.cache import cache_root
from agentq.config import STORE_MODEL, ConfigError, RoundFile, StoreSpec, dump_round, load_round
from agentq.io import atomic_write_json, read_jsonl, write_jsonl
from agentq.sandbox import make_executor
from agentq.store import RESERVED, FileStore, LeaseHeld, Store, StoreError, check_key, open_store, sha256_file
from agentq.tasks.schema import AnyTask, read_tasks

if TYPE_CHECKING:
    from agentq.sandbox import LocalExecutor, RemoteExecutor
    from agentq.sandbox.runner import Runner

STEPS = ("collect", "preferences", "train", "merge", "evaluate")
RESULT_LIMIT = 4000  # Kubernetes keeps at most 4096 bytes of a termination message
LEASE_TTL_S = 60.0


def digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Every RoundSpec setting is in exactly one of these three tables (tests/test_round_digests.py enumerates
# the spec's fields and fails on one that is in none): a setting that changes a step's output must re-run it.
STEP_SETTINGS: dict[str, tuple[str, ...]] = {
    "collect": ("collect", "localize", "preferences.alpha", "model.backend", "model.scripted", "model.openai.model",
                "model.max_new_tokens",
                "model.dtype", "model.quantization", "sandbox.timeout_seconds", "sandbox.cpu_seconds",
                "sandbox.memory_mb", "sandbox.allow_weak_isolation"),
    "preferences": ("preferences",),
    "train": ("train",),
    "merge": (),
    "evaluate": ("evaluate", "localize", "collect.seed", "collect.temperature", "collect.strategy", "collect.attempts",
                 "model.backend", "model.scripted",
                 "model.openai.model", "model.openai.round_model",
                 "model.max_new_tokens", "model.dtype", "model.quantization", "sandbox.timeout_seconds",
                 "sandbox.cpu_seconds", "sandbox.memory_mb", "sandbox.allow_weak_isolation"),
}
# Digested through an input's identity instead: the model (model_source) and the task files (tasks).
DIGESTED_AS_INPUTS = ("model.base", "model.gguf_file", "model.from_round", "model.fetch_from", "dataset")
OUTPUT_NEUTRAL: dict[str, str] = {
    "store": "where outputs are kept, not what they hold",
    "placement": "which nodes run the steps",
    "image": "the step image's code is the code under test, not a setting",
    "suspend": "pauses the operator",
    "backoff_limit": "how often a failed Job is retried",
    "delete_artifacts": "what happens on deletion",
    "sandbox.url": "which sandbox runs candidates; the limits that decide verdicts are digested",
    "sandbox.workers": "parallelism only",
    "sandbox.swebench_url": "which service runs SWE-bench patches; their instance images decide the verdicts",
    "model.token_secret": "credentials for the model step's download",
    "model.openai.url": "where the served model (named by model.openai.model) answers",
    "model.openai.round_url": "where the merged model (model.openai.round_model) answers",
    "model.openai.api_key_secret": "credentials for the inference server",
    "model.openai.concurrency": "parallelism only",
    "model.openai.max_retries": "how often a refused request is retried",
    "model.openai.timeout_seconds": "how long a request may take",
    "model.server": "where the model is served; the model itself and the sampling settings are digested",
    "job_template": "labels and annotations of the Kubernetes Jobs",
    "active_deadline_seconds": "how long a Kubernetes Job may run",
    "model.pricing": "prices only turn the recorded token counts into the report's cost lines",
}


def check_shard(shard: int, num_shards: int) -> None:
    """`--shard 5 --num-shards 2` would select no task and succeed doing nothing."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ConfigError(f"--shard {shard} --num-shards {num_shards}: need 0 <= shard < num_shards")


class Lease:
    """A store lease held for one step while it runs, renewed in the background (S3: two machines without a
    shared filesystem). A holder that died stops renewing; after LEASE_TTL_S the next run takes it over, and a
    run finding a lease waits up to twice that long before it refuses."""

    def __init__(self, store: Store, key: str, ttl_s: float | None = None, wait_s: float | None = None):
        self.store, self.key = store, key
        self.ttl_s = ttl_s or LEASE_TTL_S
        self.owner = f"{socket.gethostname()}:{os.getpid()}"  # per process: a resumed run in it takes it back
        deadline = time.monotonic() + (2 * self.ttl_s if wait_s is None else wait_s)
        while True:
            try:
                self.token = store.acquire_lease(key, self.owner, self.ttl_s)
                break
            except LeaseHeld:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(5.0, self.ttl_s / 4))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.token is not None:
            self._thread = threading.Thread(target=self._renew, daemon=True, name=f"lease {key}")
            self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.token = self.store.renew_lease(self.key, self.owner, self.token or "", self.ttl_s)
            except StoreError as err:
                steplog.log("lease renewal failed", level="warning", message=f"agentq: warning: {err}")
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.token is not None:
            with contextlib.suppress(StoreError):
                self.store.release_lease(self.key, self.token)


_HELD_LOCKS: dict[Path, int] = {}


def lock_step(folder: Path, step: str, what: str) -> None:
    """Hold `folder/<step>.lock` (flock: the kernel drops it when the process dies, however it dies).

    A process may take its own lock again (a resumed run in the same process); another process is refused.
    """
    path = folder / f"{step}.lock"
    if path in _HELD_LOCKS:
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise ConfigError(f"{what}: step {step!r} is already running on this machine (pid {holder}, lock {path}); "
                          "wait for it to finish or stop it, then run again") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD_LOCKS[path] = fd


def unlock_step(folder: Path, step: str) -> None:
    fd = _HELD_LOCKS.pop(folder / f"{step}.lock", None)
    if fd is not None:
        os.close(fd)


def spec_value(spec: Any, path: str) -> Any:
    """The setting at a dotted path; None below an optional section that is unset (model.openai)."""
    value = spec
    for part in path.split("."):
        value = getattr(value, part) if value is not None else None
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def _is_key(value: str) -> bool:
    try:
        check_key(value)
    except StoreError:
        return False
    return True


def _relative_to(spec: StoreSpec, base: Path) -> StoreSpec:
    """A relative store path means relative to the round file, like the dataset paths."""
    if spec.path is None or Path(spec.path).is_absolute():
        return spec
    return spec.model_copy(update={"path": str((base / spec.path).resolve())})


class RoundWorkspace:
    def __init__(self, round_file: RoundFile, source: str, store: Store | None = None, *,
                 save_spec: bool = True) -> None:
        self.round = round_file
        self.source = source
        steplog.bind(round=round_file.name)
        self.store = store or open_store(_relative_to(round_file.spec.store, Path(source).parent))
        self.prefix = f"rounds/{round_file.name}"
        self._leases: dict[str, Lease] = {}
        # Steps build outputs here, then publish them through the store (atomic, with a digest).
        self.work = Path(os.environ.get("AGENTQ_WORK_DIR", cache_root() / "work" / round_file.name))
        if save_spec:  # the store keeps the spec each step actually ran with
            self.store.put_text(f"{self.prefix}/spec.yaml", dump_round(round_file))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RoundWorkspace:
        return cls(load_round(args.round), str(args.round))

    @property
    def name(self) -> str:
        return self.round.name

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}"

    def settings(self, step: str) -> dict[str, Any]:
        """The settings `step`'s output depends on (STEP_SETTINGS), for its digest."""
        return {path: spec_value(self.round.spec, path) for path in STEP_SETTINGS[step]}

    def describe(self, relative: str) -> str:
        return f"{self.store.url}/{self.key(relative)}"

    def work_path(self, relative: str) -> Path:
        path = self.work / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def fetch(self, relative: str) -> Path:
        """The round's artifact as a local file in the work dir; absent from the store -> absent locally."""
        path = self.work_path(relative)
        if self.store.exists(self.key(relative)):
            self.store.get_file(self.key(relative), path)
        else:
            path.unlink(missing_ok=True)
        return path

    def publish(self, relative: str) -> None:
        self.store.put_file(self.key(relative), self.work_path(relative))

    def get_json(self, key: str) -> Any:
        return self.store.get_json(key) if self.store.exists(key) else None

    def model_dir(self, relative: str) -> Path:
        """A directory artifact (adapter/, merged/) as a local path the ML libraries can load."""
        return self.store.local_dir(self.key(relative))

    # ---- inputs -------------------------------------------------------------------------------------------

    def resolve_data_path(self, value: str) -> Path:
        """Task files: absolute, else in the artifact store, else beside the round file, else the cwd."""
        path = Path(value)
        if path.is_absolute():
            candidates = [path]
        else:
            candidates = []
            if _is_key(value) and self.store.exists(value):
                local = self.work / "data" / value
                self.store.get_file(value, local)
                candidates.append(local)
            candidates += [Path(self.source).parent / path, Path.cwd() / path]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        tried = ", ".join(str(c) for c in candidates) or value
        raise ConfigError(f"{self.source}: spec.dataset: task file {value!r} not found (tried {tried})")

    def tasks(self, split: str) -> tuple[list[AnyTask], str]:
        """The dataset's `train` or `test` tasks, function or repo (limited by spec.dataset.limit), and the
        file's digest (a repo task names its sdist's sha256, so the digest covers the repository too)."""
        dataset = self.round.spec.dataset
        path = self.resolve_data_path(getattr(dataset, split))
        tasks = read_tasks(path, kinds=("function", "repo"))
        if dataset.limit is not None:
            tasks = tasks[: dataset.limit]
        if not tasks:
            raise ConfigError(f"{self.source}: spec.dataset.{split}: {path} holds no tasks")
        return tasks, digest(sha256_file(path), dataset.limit)

    def model_source(self) -> tuple[str, str]:
        """(what to load, its identity for digests): the base model (from the store when it is `store:<key>`),
        or an earlier round's merged model."""
        model = self.round.spec.model
        if model.from_round:
            prefix = f"rounds/{model.from_round}"
            marker = self.get_json(f"{prefix}/steps/merge.json")
            if marker is None:
                raise ConfigError(
                    f"{self.source}: spec.model.fromRound: round {model.from_round!r} has no merged model yet "
                    f"(expected {self.store.url}/{prefix}/merged)"
                )
            return str(self.store.local_dir(f"{prefix}/merged")), marker["digest"]
        if model.base.startswith(STORE_MODEL):
            key = model.base.removeprefix(STORE_MODEL)
            if not self.store.exists(f"{key}/config.json"):
                raise ConfigError(f"{self.source}: spec.model.base: no model at {self.store.url}/{key} (set "
                                  f"spec.model.fetchFrom, or run `agentq model fetch --round {self.source}`)")
            return str(self.store.local_dir(key)), digest(model.base, model.gguf_file, model.fetch_from)
        return model.base, digest(model.base, model.gguf_file)

    def executor(self) -> LocalExecutor | RemoteExecutor:
        """The sandbox for this step: SANDBOX_URL (set on the operator's collect/evaluate Jobs, pointing at the
        sandbox pods) wins over spec.sandbox.url; with neither, candidates run in a local executor."""
        spec = self.round.spec.sandbox
        url = os.environ.get("SANDBOX_URL") or spec.url
        return make_executor(spec.model_copy(update={"url": url}))

    def repo_data(self) -> Path | None:
        """The folder whose repos/ holds the repo tasks' sdists: spec.dataset.repoData, else ../shared/data;
        relative paths beside the round file, else the cwd. None when there is none (function rounds)."""
        value = self.round.spec.dataset.repo_data or "../shared/data"
        path = Path(value)
        candidates = [path] if path.is_absolute() else [Path(self.source).parent / path, Path.cwd() / path]
        found = next((c for c in candidates if (c / "repos").is_dir()), None)
        if found is None and self.round.spec.dataset.repo_data:
            raise ConfigError(f"{self.source}: spec.dataset.repoData: no repos/ folder under {value!r} (tried "
                              f"{', '.join(str(c) for c in candidates)})")
        return found

    @contextlib.contextmanager
    def runner(self) -> Iterator[Runner]:
        """What the search and evaluation judge through: the sandbox for function tasks (`executor`) and,
        where a repo data folder exists, the repository executor over its sdists (pristine trees cached). With a
        remote sandbox, repository runs go to it too (`/run_repo`); the sdists here then only make the buggy
        trees that answers are read against."""
        from agentq.sandbox.client import RemoteExecutor
        from agentq.sandbox.repo import RepoExecutor, SdistStore
        from agentq.sandbox.runner import Runner
        from agentq.tasks.swebench import GitTrees

        sandbox = self.round.spec.sandbox
        data = self.repo_data()
        repos = None if data is None else SdistStore(
            data / "repos", RepoExecutor(cache_root() / "repos", allow_weak_isolation=sandbox.allow_weak_isolation),
            git=GitTrees(data / "git", cache_root() / "git"))
        swebench = RemoteExecutor(sandbox.swebench_url) if sandbox.swebench_url else None
        with self.executor() as executor:
            remote = executor if isinstance(executor, RemoteExecutor) else None
            # Remote repo runs are one request each: at most as many at once as a server pod has workers, well
            # inside its request cap (twice that), so a busy batch is not refused and retried into a failure.
            workers = int(remote.health().get("workers") or 1) if remote else sandbox.workers or os.cpu_count() or 1
            yield Runner(executor, repos=repos, workers=workers, remote_repos=remote, git_repos=swebench)

    # ---- completion markers -------------------------------------------------------------------------------

    def marker(self, step: str) -> dict[str, Any] | None:
        return self.get_json(self.key(f"steps/{step}.json"))

    def finished(self, step: str, inputs_digest: str, done_line: str = "") -> dict[str, Any] | None:
        """The result of a step that already ran with these inputs (reported again for the operator), or None.

        Takes the step's lock first (held until `finish`), so a second run of the same step refuses. A marker
        counts only while the outputs it recorded are still the ones it saw written.
        """
        for folder in self._lock_folders():
            lock_step(folder, step, f"round {self.name}")
        if step not in self._leases:
            try:
                self._leases[step] = Lease(self.store, self.key(f"locks/{step}.lease"))
            except LeaseHeld as err:
                self._unlock(step)
                raise ConfigError(f"round {self.name}: step {step!r} is running elsewhere: {err}; wait for it to "
                                  "finish or stop it (a dead run's lease expires by itself)") from None
        marker = self.marker(step)
        if marker is None or marker.get("digest") != inputs_digest:
            return None
        for relative, sha in (marker.get("outputs") or {}).items():
            if self.store.sha256(self.key(relative)) != sha:
                steplog.log("output changed", output=relative, message=f"{step}: {self.describe(relative)} "
                            "changed since the step finished; running it again")
                return None
        if done_line:
            steplog.log("already complete", result=marker["result"], message=f"{done_line}: already complete")
        self._unlock(step)
        self.report_result(marker["result"])
        return marker["result"]

    def finish(self, step: str, inputs_digest: str, result: dict[str, Any], line: str = "",
               outputs: list[str] | None = None) -> dict[str, Any]:
        """Record the step as done for these inputs (and the checksums of `outputs`), say so, and leave the
        result for the operator."""
        marker: dict[str, Any] = {"digest": inputs_digest, "finished_at": time.time(), "result": result}
        if outputs:
            marker["outputs"] = {relative: self.store.sha256(self.key(relative)) for relative in outputs}
        self.store.put_json(self.key(f"steps/{step}.json"), marker)
        self._unlock(step)
        steplog.log("finished", result=result, **({"message": line} if line else {}))
        self.report_result(result)
        return result

    def weak_isolation(self) -> list[str]:
        """What the sandbox could not enforce for this round's collect and evaluate shards (from their markers)."""
        spec = self.round.spec
        steps = [f"collect-shard-{i}-of-{spec.collect.shards}" for i in range(spec.collect.shards)]
        steps += [f"evaluate-shard-{i}-of-{spec.evaluate.shards}" for i in range(spec.evaluate.shards)]
        notes = [((self.marker(s) or {}).get("result") or {}).get("weakIsolation") for s in steps]
        return sorted({n for note in notes if note for n in note.split("; ")})

    def _lock_folders(self) -> list[Path]:
        """The local work directory, and on a shared directory store (a PVC mounted by several pods or
        machines) the store itself: flock there is seen by every client of the volume (NFSv4 included)."""
        folders = [self.work / "locks"]
        if isinstance(self.store, FileStore):
            folders.append(self.store.root / RESERVED / "locks" / self.name)
        return folders

    def _unlock(self, step: str) -> None:
        for folder in self._lock_folders():
            unlock_step(folder, step)
        lease = self._leases.pop(step, None)
        if lease is not None:
            lease.release()

    def partial(self, relative: str, inputs_digest: str) -> str:
        """Where a step builds `relative` for these inputs until it finishes: the finished output of other
        settings stays untouched until this one is complete (a revert then finds it intact)."""
        return f"{relative}.partial-{inputs_digest}"

    def complete(self, relative: str, local: Path, inputs_digest: str) -> None:
        """Publish a finished output over the previous one and drop its partial for these inputs. The partials of
        other settings stay: a run of settings A interrupted, a run of B completed, then A again resumes where it
        was (it used to find its partial deleted and redo everything)."""
        self.store.put_file(self.key(relative), local)
        self.store.delete_prefix(self.key(self.partial(relative, inputs_digest)))

    def step_digest(self, step: str) -> str:
        """Digest a step's marker must hold; raises, naming the command to run, when it has not finished."""
        marker = self.marker(step)
        if marker is None:
            match = re.fullmatch(r"collect-shard-(\d+)-of-(\d+)", step)
            command = (f"agentq collect --round {self.source} --shard {match[1]} --num-shards {match[2]}" if match
                       else f"agentq {step} --round {self.source}")
            raise ConfigError(f"round {self.name}: step {step!r} has not finished; run `{command}` first")
        return marker["digest"]

    # ---- step outputs -------------------------------------------------------------------------------------

    def shard_key(self, shard: int, num_shards: int) -> str:
        return f"trajectories/shard-{shard}-of-{num_shards}.jsonl"

    def read_trajectories(self) -> Iterator[dict[str, Any]]:
        n = self.round.spec.collect.shards
        for i in range(n):
            key = self.key(self.shard_key(i, n))
            if not self.store.exists(key):
                raise ConfigError(f"round {self.name}: collect shard {i} of {n} has no output at "
                                  f"{self.store.url}/{key}; run `agentq collect --shard {i} --num-shards {n}`")
            yield from read_jsonl(self.fetch(self.shard_key(i, n)))

    def write_preferences(self, pairs: list[dict], stats: dict[str, Any]) -> None:
        write_jsonl(self.work_path("preferences.jsonl"), pairs)
        atomic_write_json(self.work_path("preferences.stats.json"), stats)
        self.publish("preferences.stats.json")
        self.publish("preferences.jsonl")

    def report_result(self, result: dict[str, Any]) -> None:
        """Leave a small JSON result where the operator reads it (a Job's termination message)."""
        path = os.environ.get("AGENTQ_RESULT_FILE")
        if not path:
            return
        text = json.dumps(result, sort_keys=True)
        if len(text) > RESULT_LIMIT:
            text = json.dumps({"truncated": True})
        try:
            Path(path).write_text(text)
        except OSError as err:
            steplog.log("result file unwritable", level="warning", path=path,
                        message=f"agentq: cannot write result file {path}: {err.strerror}")
