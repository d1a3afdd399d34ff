"""The per-round event stream: numbered events, replay after a sequence number, and a final event.

Events are derived from the round's state as the reader sees it (status.json and markers on a store, the
resource status on a cluster), polled: there is no message bus to subscribe to, and a poll of one small
object per second per watched round costs nothing. Each round keeps its log in memory; the first event is
always a full snapshot, each later one is the new state plus what changed, and the last is `final` once
the round is Succeeded, Failed or Interrupted. A client that reconnects with `after_seq` gets what it missed.
Sequence numbers restart with the process: a client whose after_seq is past the log's end (the service
restarted) is sent the log from its first snapshot again, which it recognises by `seq <= after_seq`.

The log is guarded by a thread lock rather than bound to an event loop, so any number of WebSocket
handlers (and test clients, each with its own loop) can share it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from agentq.serve.reader import TERMINAL

Snapshot = Callable[[str], dict[str, Any]]


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
    return out


class RoundLog:
    """Events of one round; `poll` appends one when the round's state differs from the last one seen."""

    def __init__(self, name: str, keep: int) -> None:
        self.name = name
        self.keep = keep
        self.events: list[dict[str, Any]] = []
        self.seq = 0
        self.last: dict[str, Any] | None = None
        self.fingerprint = ""
        self.polled_at = 0.0
        self.final = False
        self.lock = threading.Lock()

    def _append(self, kind: str, state: dict[str, Any], changes: list[dict[str, Any]]) -> None:
        self.seq += 1
        self.events.append({"seq": self.seq, "type": kind, "round": self.name, "time": time.time(),
                            "changes": changes, "data": state})
        del self.events[: max(0, len(self.events) - self.keep)]

    def poll(self, snapshot: Snapshot, min_interval: float) -> None:
        with self.lock:
            if self.final or time.monotonic() - self.polled_at < min_interval:
                return
            self.polled_at = time.monotonic()
            state = snapshot(self.name)
            fingerprint = json.dumps({k: v for k, v in state.items() if k != "updatedTime"}, sort_keys=True,
                                     default=str)
            if fingerprint == self.fingerprint:
                return
            terminal = state.get("phase") in TERMINAL
            kind = "snapshot" if self.last is None else "update"
            self._append(kind, state, _changes(self.last, state))
            if terminal:
                self._append("final", state, [])
                self.final = True
            self.last, self.fingerprint = state, fingerprint

    def after(self, seq: int) -> list[dict[str, Any]]:
        with self.lock:
            if seq >= self.seq + 1 or seq < 0:  # past the end: this process restarted since the client's last event
                seq = 0
            return [e for e in self.events if e["seq"] > seq]


class EventHub:
    """Round logs by name, created on first watch."""

    def __init__(self, snapshot: Snapshot, interval: float = 1.0, keep: int = 1000) -> None:
        self.snapshot = snapshot
        self.interval = interval
        self.keep = keep
        self._logs: dict[str, RoundLog] = {}
        self._lock = threading.Lock()

    def log(self, name: str) -> RoundLog:
        with self._lock:
            return self._logs.setdefault(name, RoundLog(name, self.keep))

    def poll(self, name: str) -> RoundLog:
        log = self.log(name)
        log.poll(self.snapshot, self.interval / 2)
        return log
