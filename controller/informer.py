"""List+watch caches of the objects rounds own (Jobs and their pods, spec ConfigMaps, inference-server
Deployments and Services), as controller-runtime's informers keep them: a reconcile pass reads what it owns
from memory and converges it, without a LIST or GET per pass.

Why not kopf's watches: kopf watches a resource cluster-wide with no server-side label selector and runs its
whole per-object machinery for every event (every Job and Deployment of the cluster); that was most of the
operator's CPU per round. Each informer here asks the API server only for objects with the operator's label,
parses the raw JSON lines and does nothing but store the object and call one callback.

A watch that breaks (API server restart, dropped connection, an expired resourceVersion) is re-established
within a second or two with a bounded backoff, after a fresh LIST that also reports the objects deleted while
nobody watched, so nothing depends on having seen every event. Objects a pass wrote itself (a created Job) go
into the store at once; an older copy never replaces a newer one (resourceVersion order) and a deleted object
is never revived by a slower copy.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from controller.crd import GROUP, PLURAL, VERSION

log = logging.getLogger("agentq.operator.informer")
Obj = dict[str, Any]
Handler = Callable[[str, Obj], None]  # (ADDED | MODIFIED | DELETED, object), called from the informer's thread
WATCH_SECONDS = 240  # the API server ends each watch after this; a silent dead connection is noticed by the
READ_TIMEOUT = WATCH_SECONDS + 30  # client's read timeout at the latest
RETRY_MAX_SECONDS = 2.0
# The object's own resourceVersion: the first in a watch line, since metadata comes before spec and status.
OBJECT_VERSION = re.compile(r'"resourceVersion":"(\d+)"')


def retry_delay(failures: int) -> float:
    """0.1, 0.2, 0.4 ... capped at 2 s: a dropped connection or a restarting API server costs seconds, not a minute."""
    return min(0.1 * 2 ** max(failures - 1, 0), RETRY_MAX_SECONDS)


def _rv(obj: Obj) -> int | None:
    value = obj["metadata"].get("resourceVersion", "")
    return int(value) if value.isdigit() else None


class Store:
    """Objects of one kind by (namespace, name), indexed by the value of `index_label`. Written by the watch
    thread and by reconcile threads (objects they created), hence the lock."""

    def __init__(self, index_label: str) -> None:
        self.index_label = index_label
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], Obj] = {}
        self._index: dict[tuple[str, str], dict[str, Obj]] = {}  # (namespace, label value) -> name -> object
        self._gone: set[str] = set()  # UIDs seen deleted: a slower copy must not bring them back
        self._own: set[str] = set()  # versions this process wrote itself: their watch events are echoes

    def put(self, obj: Obj, own: bool = False) -> bool:
        """Store `obj` unless the store holds a newer (or the same) copy of the same object or saw it deleted;
        whether it changed what the store shows. `own`: an object this process just wrote (the API server's
        answer), whose watch event will need no parsing."""
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        with self._lock:
            if own:
                if len(self._own) > 100_000:  # echoes that raced their answer are never claimed: bound them
                    self._own.clear()
                self._own.add(meta.get("resourceVersion", ""))
            if meta.get("uid") in self._gone:
                return False
            current = self._objects.get(key)
            if current is not None and current["metadata"].get("uid") == meta.get("uid"):
                new, old = _rv(obj), _rv(current)
                if new is not None and old is not None and new <= old:
                    return False
            self._unindex(key)
            self._objects[key] = obj
            value = (meta.get("labels") or {}).get(self.index_label)
            if value is not None:
                self._index.setdefault((key[0], value), {})[key[1]] = obj
            return True

    def echo(self, version: str) -> bool:
        """Whether `version` is one this process wrote (claimed once)."""
        with self._lock:
            if version in self._own:
                self._own.discard(version)
                return True
            return False

    def _unindex(self, key: tuple[str, str]) -> None:
        current = self._objects.pop(key, None)
        if current is not None:
            value = (current["metadata"].get("labels") or {}).get(self.index_label)
            self._index.get((key[0], value), {}).pop(key[1], None)

    def delete(self, obj: Obj) -> None:
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        with self._lock:
            self._gone.add(meta.get("uid", ""))
            current = self._objects.get(key)
            if current is not None and current["metadata"].get("uid") == meta.get("uid"):
                self._unindex(key)

    def replace(self, objs: list[Obj], list_rv: int | None, namespace: str | None) -> tuple[list[Obj], list[Obj]]:
        """A fresh LIST (of `namespace`, or of all): stores its objects. Returns those it no longer shows
        (deleted while the watch was down) and those new or changed. An object newer than the LIST (created
        meanwhile) is kept."""
        listed = {(o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objs}
        gone = []
        with self._lock:
            for key, obj in list(self._objects.items()):
                if namespace is not None and key[0] != namespace:
                    continue
                rv = _rv(obj)
                if key not in listed and (list_rv is None or rv is None or rv <= list_rv):
                    self._unindex(key)
                    gone.append(obj)
        return gone, [obj for obj in objs if self.put(obj)]

    def get(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._objects.get((namespace, name))

    def indexed(self, namespace: str, value: str) -> list[Obj]:
        """Objects of `namespace` whose index label is `value` (a round's Jobs, its servers)."""
        with self._lock:
            return list(self._index.get((namespace, value), {}).values())


@dataclass(frozen=True)
class Kind:
    """How to list and watch one resource: the client method for all namespaces and for one."""

    name: str
    everywhere: Callable[[client.ApiClient], Callable[..., Any]]
    namespaced: Callable[[client.ApiClient], Callable[..., Any]]


JOBS = Kind("jobs", lambda api: client.BatchV1Api(api).list_job_for_all_namespaces,
            lambda api: client.BatchV1Api(api).list_namespaced_job)
CONFIGMAPS = Kind("configmaps", lambda api: client.CoreV1Api(api).list_config_map_for_all_namespaces,
                  lambda api: client.CoreV1Api(api).list_namespaced_config_map)
DEPLOYMENTS = Kind("deployments", lambda api: client.AppsV1Api(api).list_deployment_for_all_namespaces,
                   lambda api: client.AppsV1Api(api).list_namespaced_deployment)
ROUNDS = Kind("agentqrounds",
              lambda api: functools.partial(client.CustomObjectsApi(api).list_cluster_custom_object,
                                            GROUP, VERSION, PLURAL),
              lambda api: lambda namespace, **kw: client.CustomObjectsApi(api).list_namespaced_custom_object(
                  GROUP, VERSION, namespace, PLURAL, **kw))
SERVICES = Kind("services", lambda api: client.CoreV1Api(api).list_service_for_all_namespaces,
                lambda api: client.CoreV1Api(api).list_namespaced_service)
PODS = Kind("pods", lambda api: client.CoreV1Api(api).list_pod_for_all_namespaces,
            lambda api: client.CoreV1Api(api).list_namespaced_pod)


class Informer(threading.Thread):
    """One kind, one label selector, one namespace (or all): LIST, then WATCH from the list's version, forever."""

    def __init__(self, api: client.ApiClient, kind: Kind, selector: str, namespace: str | None, store: Store,
                 on_event: Handler, on_error: Callable[[str], None]) -> None:
        super().__init__(daemon=True, name=f"informer-{kind.name}-{namespace or 'all'}")
        self.api, self.kind, self.selector, self.namespace = api, kind, selector, namespace
        self.store, self.on_event, self.on_error = store, on_event, on_error
        self.synced = threading.Event()
        self.stopping = threading.Event()

    def _call(self, **kwargs: Any) -> Any:
        if self.namespace is None:
            return self.kind.everywhere(self.api)(label_selector=self.selector, _preload_content=False, **kwargs)
        return self.kind.namespaced(self.api)(self.namespace, label_selector=self.selector,
                                              _preload_content=False, **kwargs)

    def _list(self) -> str:
        resp = self._call(_request_timeout=(5, 60))
        data = json.loads(resp.data)
        version = data["metadata"].get("resourceVersion", "")
        for obj in data["items"]:
            obj["metadata"].setdefault("namespace", self.namespace or "")
        gone, changed = self.store.replace(data["items"], int(version) if version.isdigit() else None, self.namespace)
        for obj in gone:
            self.on_event("DELETED", obj)
        for obj in changed:
            self.on_event("MODIFIED", obj)
        self.synced.set()
        return version

    def _watch(self, version: str) -> None:
        resp = self._call(watch=True, resource_version=version, allow_watch_bookmarks=True,
                          timeout_seconds=WATCH_SECONDS, _request_timeout=(5, READ_TIMEOUT))
        try:
            for line in iter_resp_lines(resp):
                if self.stopping.is_set():
                    return
                if not line.strip():
                    continue
                version = OBJECT_VERSION.search(line)
                if version and self.store.echo(version.group(1)):
                    continue  # what we wrote ourselves, stored from the API server's answer already
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":  # 410 Gone: the version is too old to watch from; list again
                    raise ApiException(status=obj.get("code", 500), reason=obj.get("message", "watch error"))
                if kind == "BOOKMARK" or "metadata" not in obj:
                    continue
                if kind == "DELETED":
                    self.store.delete(obj)
                elif not self.store.put(obj):
                    continue
                self.on_event(kind, obj)
        finally:  # as the client's own watch does: a stream left half read must not go back to the pool open
            resp.close()
            resp.release_conn()

    def run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                version = self._list()
                failures = 0
                while not self.stopping.is_set():
                    self._watch(version)  # ends after WATCH_SECONDS: watch again from a fresh LIST
                    version = self._list()
            except Exception as err:  # noqa: BLE001 - connection refused/reset, timeouts, 410, 5xx: retry
                failures += 1
                self.on_error(getattr(err, "status", None) and str(err.status) or "connection")
                delay = retry_delay(failures)
                log.warning("watch of %s (%s) failed: %s; again in %.1fs", self.kind.name,
                            self.namespace or "all namespaces", str(err).splitlines()[0][:200], delay)
                self.stopping.wait(delay)


class Informers:
    """The informers of one kind: one for all namespaces (an operator watching the whole cluster), or one per
    namespace started when a round there first needs it (an operator limited to some namespaces, whose RBAC
    may be namespaced)."""

    def __init__(self, api: client.ApiClient, kind: Kind, selector: str, index_label: str, clusterwide: bool,
                 on_event: Handler, on_error: Callable[[str], None]) -> None:
        self.api, self.kind, self.selector, self.clusterwide = api, kind, selector, clusterwide
        self.store = Store(index_label)
        self.on_event, self.on_error = on_event, on_error
        self._lock = threading.Lock()
        self._running: dict[str | None, Informer] = {}

    def ready(self, namespace: str, timeout: float = 30.0) -> bool:
        """Start the informer that covers `namespace` if need be; whether its first LIST is in the store."""
        where = None if self.clusterwide else namespace
        with self._lock:
            informer = self._running.get(where)
            if informer is None:
                informer = self._running[where] = Informer(self.api, self.kind, self.selector, where, self.store,
                                                           self.on_event, self.on_error)
                informer.start()
        return informer.synced.wait(timeout)

    def stop(self) -> None:
        with self._lock:
            for informer in self._running.values():
                informer.stopping.set()
            self._running.clear()


def wait_ready(informers: list[Informers], namespace: str, timeout: float = 30.0) -> None:
    """Every kind listed in `namespace`: before that, a pass would take a missing object for a deleted one."""
    deadline = time.monotonic() + timeout
    for group in informers:
        if not group.ready(namespace, max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"the {group.kind.name} of namespace {namespace} are not listed yet")
