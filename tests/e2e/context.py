"""What a scenario gets: the running cluster with the chart installed, and waits that follow the API's watch
(no fixed sleeps) with generous timeouts, raising with what a person needs to see when they run out."""

from __future__ import annotations

import collections
import datetime
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import Cluster

HERE = Path(__file__).resolve().parent
GROUP, VERSION = "agentq.dev", "v1alpha1"
ROUND_LABEL = "agentq.dev/round"
TERMINAL = ("Succeeded", "Failed")
ROUND_TIMEOUT_S = 2400  # a round on a loaded 2-core machine takes minutes; this only bounds a hang


class ScenarioFailed(AssertionError):
    """A scenario's expectation did not hold; the message says which and what was seen."""


def parse_time(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


@dataclass
class Context:
    cluster: Cluster
    namespace: str
    release: str
    images: dict[str, str]
    store: Path  # the artifact volume's directory on the node (the hostPath PersistentVolume)
    shared: dict[str, Any] = field(default_factory=dict)  # facts one scenario leaves for a later one

    def __post_init__(self) -> None:
        import urllib3
        from kubernetes import client, config

        urllib3.disable_warnings()
        self.api_client = config.new_client_from_config(self.cluster.state.kubeconfig)
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)

    # ---- objects ------------------------------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None, timeout: float = 120) -> str:
        return self.cluster.kubectl(*args, check=check, stdin=stdin, timeout=timeout).stdout

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "-n", self.namespace, "-f", "-", stdin=yaml.safe_dump(manifest))

    def round_manifest(self, name: str, **spec: Any) -> dict[str, Any]:
        """tests/e2e/round.yaml under another name, with `spec` fields replaced (one level deep merged)."""
        manifest = yaml.safe_load((HERE / "round.yaml").read_text())
        manifest["metadata"]["name"] = name
        for key, value in spec.items():
            base = manifest["spec"].get(key)
            manifest["spec"][key] = {**base, **value} if isinstance(base, dict) and isinstance(value, dict) else value
        return manifest

    def small_round(self, name: str, **spec: Any) -> dict[str, Any]:
        """The same steps on fewer tasks and rollouts: for scenarios about faults, not about learning."""
        small = {"dataset": {"limit": 2}, "collect": {"shards": 1, "rollouts": 2},
                 "evaluate": {"modes": ["zero_shot", "full_rewrite"], "rollouts": 1}, "train": {"maxSteps": 1}}
        return self.round_manifest(name, **{**small, **spec})

    def get_round(self, name: str, plural: str = "agentqrounds") -> dict[str, Any]:
        return json.loads(self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name, _preload_content=False).data)

    def pods(self, selector: str) -> list[dict[str, Any]]:
        return json.loads(self.core.list_namespaced_pod(self.namespace, label_selector=selector,
                                                        _preload_content=False).data)["items"]

    def jobs(self, selector: str) -> list[dict[str, Any]]:
        return json.loads(self.batch.list_namespaced_job(self.namespace, label_selector=selector,
                                                         _preload_content=False).data)["items"]

    def component_pod(self, component: str) -> dict[str, Any]:
        """The live pod of one of the chart's Deployments (operator, sandbox, dashboard)."""
        live = [p for p in self.pods(f"app.kubernetes.io/component={component}")
                if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running"]
        if len(live) != 1:
            raise ScenarioFailed(f"expected one running {component} pod, found {len(live)}")
        return live[0]

    # ---- waiting ------------------------------------------------------------------------------------------

    def watch(self, list_fn: Callable[..., Any], what: str, done: Callable[[list[dict]], Any],
              timeout: float, **list_args: Any) -> Any:
        """List, then follow the watch, until `done(items)` returns something truthy (which is returned)."""
        from kubernetes import watch

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = json.loads(list_fn(**list_args, _preload_content=False).data)
            items = {i["metadata"]["name"]: i for i in listed["items"]}
            result = done(list(items.values()))
            if result:
                return result
            remaining = max(1, int(deadline - time.monotonic()))
            try:
                for event in watch.Watch().stream(list_fn, **list_args, timeout_seconds=min(remaining, 60),
                                                  resource_version=listed["metadata"]["resourceVersion"]):
                    obj = event["raw_object"]
                    if event["type"] == "DELETED":
                        items.pop(obj["metadata"]["name"], None)
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        items[obj["metadata"]["name"]] = obj
                    result = done(list(items.values()))
                    if result:
                        return result
            except Exception:  # noqa: BLE001 - an expired watch: list again
                time.sleep(0.5)
        raise ScenarioFailed(f"timed out after {timeout:.0f}s waiting for {what}")

    def wait_round(self, name: str, plural: str = "agentqrounds", timeout: float = ROUND_TIMEOUT_S,
                   until: Callable[[dict], bool] | None = None) -> dict[str, Any]:
        """The round (or campaign) once it reached a terminal phase (or `until` holds); a Failed one raises."""
        def check(items: list[dict]) -> dict | None:
            for item in items:
                if item["metadata"]["name"] != name:
                    continue
                if until is not None:
                    return item if until(item) else None
                if (item.get("status") or {}).get("phase") in TERMINAL:
                    return item
            return None

        item = self.watch(self.custom.list_namespaced_custom_object, f"{plural}/{name}", check, timeout,
                          group=GROUP, version=VERSION, namespace=self.namespace, plural=plural,
                          field_selector=f"metadata.name={name}")
        status = item.get("status") or {}
        if until is None and status.get("phase") != "Succeeded":
            problems = [f"{c['type']}={c['status']}: {c.get('reason')}: {c.get('message')}"
                        for c in status.get("conditions") or [] if c.get("status") == "True"]
            raise ScenarioFailed(f"{plural}/{name} ended {status.get('phase')}: {'; '.join(problems)}")
        return item

    def wait_pods(self, selector: str, what: str, done: Callable[[list[dict]], Any], timeout: float = 600) -> Any:
        return self.watch(self.core.list_namespaced_pod, what, done, timeout, namespace=self.namespace,
                          label_selector=selector)

    def wait_rollout(self, deployment: str, timeout: float = 600) -> None:
        self.kubectl("rollout", "status", f"deployment/{deployment}", "-n", self.namespace,
                     f"--timeout={int(timeout)}s", timeout=timeout + 30)

    # ---- what ran -----------------------------------------------------------------------------------------

    def round_jobs(self, name: str) -> list[dict[str, Any]]:
        return self.jobs(f"{ROUND_LABEL}={name}")

    def step_pods(self, name: str) -> list[dict[str, Any]]:
        return self.pods(f"{ROUND_LABEL}={name}")

    def pod_seconds(self, pod: dict[str, Any]) -> float | None:
        """How long the step's container ran, from the kubelet's own start and finish times."""
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (status.get("state") or {}).get("terminated")
            if term and term.get("startedAt") and term.get("finishedAt"):
                return (parse_time(term["finishedAt"]) - parse_time(term["startedAt"])).total_seconds()
        return None

    def unit_of(self, obj: dict[str, Any]) -> str:
        return obj["metadata"]["labels"]["agentq.dev/unit"]

    def no_twins(self, name: str) -> dict[str, int]:
        """Jobs per unit of the round, when every unit has one Job and every Job one pod; else it raises."""
        per_unit = collections.Counter(self.unit_of(j) for j in self.round_jobs(name))
        twins = {unit: n for unit, n in per_unit.items() if n > 1}
        if twins:
            raise ScenarioFailed(f"round {name}: steps with more than one Job (twins): {twins}")
        per_job = collections.Counter(p["metadata"]["labels"]["job-name"] for p in self.step_pods(name))
        if any(n > 1 for n in per_job.values()):
            raise ScenarioFailed(f"round {name}: Jobs with more than one pod: {dict(per_job)}")
        return dict(per_unit)

