"""The round Jobs as the operator's Job watch shows them, so a reconcile pass reads them from memory.

Why: a LIST of the round's Jobs on every pass (a dozen passes per round) was a large share of the operator's
CPU, and kopf's Job watch already delivers every change. A round's entry is seeded by one LIST when its
daemon first asks (the watch may not have shown a restarted operator the existing Jobs yet) and listed again
once per resync period, so a missed event costs at most what the resync timer always covered. A DELETED event
removes the Job: a Job gone from the cache is gone, and the durable-outcome logic of the planner applies.

Watch events and a LIST can arrive out of order; an older copy of a Job never replaces a newer one (compared
by resourceVersion, which the API server backs with etcd's revision), so a stage never appears to go back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

Key = tuple[str, str]  # (namespace, round name)
Job = dict[str, Any]


def _newer(candidate: Job, current: Job | None) -> bool:
    """Whether `candidate` may replace `current` (same name): a different object (new UID) always may; the same
    object only when its resourceVersion is not older."""
    if current is None or candidate["metadata"].get("uid") != current["metadata"].get("uid"):
        return True
    new, old = candidate["metadata"].get("resourceVersion", ""), current["metadata"].get("resourceVersion", "")
    if new.isdigit() and old.isdigit():
        return int(new) >= int(old)
    return True


class JobCache:
    """Round -> Job name -> the Job as last seen. Written from the event loop (watch) and from reconcile
    threads (LIST, create), hence the lock."""

    def __init__(self, relist_seconds: float) -> None:
        self.relist_seconds = relist_seconds
        self._lock = threading.Lock()
        self._jobs: dict[Key, dict[str, Job]] = {}
        self._gone: dict[Key, set[str]] = {}  # UIDs a DELETED event removed: a slower LIST must not revive them
        self._listed: dict[Key, float] = {}  # when the round's Jobs were last listed (monotonic)

    def observe(self, key: Key, job: Job, deleted: bool) -> None:
        """A watch event; ignored for rounds nobody reads (their first read lists anyway)."""
        with self._lock:
            jobs = self._jobs.get(key)
            if jobs is None:
                return
            self._put(key, jobs, job, deleted)

    def created(self, key: Key, job: Job) -> None:
        """A Job this operator just created: seen at once, before its watch event arrives."""
        self.observe(key, job, deleted=False)

    def jobs(self, key: Key, list_jobs: Callable[[], list[Job]]) -> list[Job]:
        """The round's Jobs; `list_jobs` (a LIST) seeds the entry and refreshes it once per relist period."""
        before: dict[str, str | None] = {}
        with self._lock:
            due = time.monotonic() - self._listed.get(key, float("-inf")) >= self.relist_seconds
            if due:  # open the entry first: watch events that arrive while the LIST is under way are kept
                before = {name: job["metadata"].get("uid") for name, job in self._jobs.setdefault(key, {}).items()}
        if due:
            started = time.monotonic()
            listed = list_jobs()
            with self._lock:
                jobs = self._jobs.setdefault(key, {})
                names = {job["metadata"]["name"] for job in listed}
                for name, uid in before.items():
                    # Seen before the LIST began and not in it: deleted meanwhile (its event may still come).
                    if name not in names and name in jobs and jobs[name]["metadata"].get("uid") == uid:
                        del jobs[name]
                for job in listed:
                    self._put(key, jobs, job, deleted=False)
                self._listed[key] = started
        with self._lock:
            return list(self._jobs.get(key, {}).values())

    def forget(self, key: Key) -> None:
        with self._lock:
            self._jobs.pop(key, None)
            self._gone.pop(key, None)
            self._listed.pop(key, None)

    def _put(self, key: Key, jobs: dict[str, Job], job: Job, deleted: bool) -> None:
        meta = job["metadata"]
        name, uid = meta["name"], meta.get("uid")
        gone = self._gone.setdefault(key, set())
        if deleted:
            gone.add(uid)
            if name in jobs and jobs[name]["metadata"].get("uid") == uid:
                del jobs[name]
        elif uid not in gone and _newer(job, jobs.get(name)):
            jobs[name] = job
