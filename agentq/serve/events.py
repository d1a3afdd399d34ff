"""The per-round event stream: numbered events, replay after a sequence number, runs, trees and final events.

Events are derived from the round's state as the reader sees it (status.json and markers on a store, the
resource status on a cluster), polled: there is no message bus to subscribe to, and a poll of one small
object a few times a second per watched round costs little. Each round keeps its log in memory:

* `snapshot` opens a run (the first event, and again whenever the state names another `run`: the round was
  run again, so its old end is history and the page starts over without a reload);
* `update` is the new state plus what changed (phase and step transitions, progress inside a step);
* `trees` lists the search trees collect finished since the last event (read from the partial files as
  they grow, so they arrive within a poll interval of being written);
* `final` follows the state that reached Succeeded, Failed or Interrupted. The log keeps watching after it:
  a round resumed later opens a new run.

A client that reconnects with `after_seq` gets what it missed. Sequence numbers restart with the process:
a client whose after_seq is past the log's end (the service restarted) is sent the log from its first event
again, which it recognises by `seq <= after_seq`.

Logs exist only for rounds that exist (the first poll reads the round before a log is kept), and at most
`max_logs` are kept, the least recently watched dropped first, so requests for made-up names cost nothing
that lasts. The log is guarded by a thread lock rather than bound to an event loop, so any number of
WebSocket handlers (and test clients, each with its own loop) can share it.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from agentq.serve.reader import TERMINAL

Snapshot = Callable[[str], dict[str, Any]]
Trees = Callable[[str], list[dict[str, Any]]]


def _changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[dict[str, Any]]:
    if old is None:
        return []
    out = []
    if old.get("phase") != new.get("phase"):
        out.append({"what": "phase", "from": old.get("phase"), "to": new.get("phase")})
    before = {s["name"]: s.get("state") for s in old.get("steps", [])}
    for step in new.get("steps", []):
        if before.get(step["name"]) != step.get("state"):
            out.append({"what": "step", "step": step["name"], "from": before.get(step["name"]),
                        "to": step.get("state")})
    if old.get("progress") != new.get("progress"):
        out.append({"what": "progress"})
    return out


class RoundLog:
    """Events of one round; `poll` appends what changed since the last poll."""

    def __init__(self, name: str, keep: int) -> None:
        self.name = name
        self.keep = keep
        self.events: list[dict[str, Any]] = []
        self.seq = 0
        self.last: dict[str, Any] | None = None
        self.fingerprint = ""
        self.polled_at = 0.0
        self.final = False
        self.seen: set[str] = set()  # task ids of the trees already announced in this run
        self.lock = threading.Lock()

    def _append(self, kind: str, data: Any, changes: list[dict[str, Any]]) -> None:
        self.seq += 1
        self.events.append({"seq": self.seq, "type": kind, "round": self.name, "time": time.time(),
                            "changes": changes, "data": data})
        del self.events[: max(0, len(self.events) - self.keep)]

    def poll(self, snapshot: Snapshot, trees: Trees, min_interval: float) -> None:
        with self.lock:
            if time.monotonic() - self.polled_at < min_interval:
                return
            self.polled_at = time.monotonic()
            state = snapshot(self.name)
            rows = trees(self.name)
            fingerprint = json.dumps({k: v for k, v in state.items() if k != "updatedTime"}, sort_keys=True,
                                     default=str)
            previous = self.last
            if previous is None or previous.get("run") != state.get("run"):
                changes = [] if previous is None else [{"what": "run", "from": previous.get("run"),
                                                        "to": state.get("run")}]
                self._append("snapshot", state, changes)
                self.seen, self.final = {str(r.get("task_id")) for r in rows}, False
            else:
                added = [r for r in rows if str(r.get("task_id")) not in self.seen]
                if added:
                    self._append("trees", {"added": added, "collected": len(rows)}, [])
                    self.seen |= {str(r.get("task_id")) for r in added}
                if fingerprint != self.fingerprint:
                    self._append("update", state, _changes(previous, state))
            terminal = state.get("phase") in TERMINAL
            if terminal and not self.final:
                self._append("final", state, [])
            self.final = terminal
            self.last, self.fingerprint = state, fingerprint

    def after(self, seq: int) -> list[dict[str, Any]]:
        with self.lock:
            if seq >= self.seq + 1 or seq < 0:  # past the end: this process restarted since the client's last event
                seq = 0
            return [e for e in self.events if e["seq"] > seq]


class EventHub:
    """Round logs by name: made on the first watch of a round that exists, at most `max_logs` of them."""

    def __init__(self, snapshot: Snapshot, trees: Trees, interval: float = 0.25, keep: int = 1000,
                 max_logs: int = 256) -> None:
        self.snapshot = snapshot
        self.trees = trees
        self.interval = interval
        self.keep = keep
        self.max_logs = max_logs
        self._logs: OrderedDict[str, RoundLog] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._logs)

    def open(self, name: str) -> RoundLog:
        """The round's log, polled; raises the reader's NotFound (and keeps nothing) for a round that does not
        exist."""
        with self._lock:
            log = self._logs.get(name)
            if log is not None:
                self._logs.move_to_end(name)
        if log is None:
            log = RoundLog(name, self.keep)
            log.poll(self.snapshot, self.trees, 0.0)  # raises before the log is kept
            with self._lock:
                log = self._logs.setdefault(name, log)
                self._logs.move_to_end(name)
                while len(self._logs) > self.max_logs:
                    self._logs.popitem(last=False)
        return self.refresh(log)

    def refresh(self, log: RoundLog) -> RoundLog:
        log.poll(self.snapshot, self.trees, self.interval / 2)
        return log
