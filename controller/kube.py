"""The few API calls the operator makes, on the official client, as plain dicts.

Responses are read raw (`_preload_content=False`) and parsed as JSON: the generated model classes cost far
more CPU than the operator's logic, and the pure planner wants dicts anyway. Every call has a connect and a
read timeout (the client has none by default): a request on a connection that died silently fails within
seconds and is retried, instead of hanging a reconcile thread for good.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from controller import metrics
from controller.crd import CAMPAIGN_PLURAL, GROUP, PLURAL, VERSION
from controller.inference import SERVER_LABEL
from controller.jobs import ROUND_LABEL

TIMEOUT = (5.0, 30.0)  # (connect, read) seconds of every request
# /api/v1/namespaces/ns/pods/x/log -> pods/log; /apis/batch/v1/namespaces/ns/jobs -> jobs
RESOURCE = re.compile(r"/(?:api/v1|apis/[^/]+/[^/]+)(?:/namespaces/[^/]+)?/([^/?]+)(?:/[^/?]+/([^/?]+))?")


def resource_of(url: str) -> str:
    found = RESOURCE.search(url)
    return "/".join(p for p in found.groups() if p) if found else "other"


def with_timeouts(api: client.ApiClient, timeout: tuple[float, float] = TIMEOUT) -> client.ApiClient:
    """`api` with `timeout` on every request that names none, each request counted for /metrics (once: a
    client already wrapped is returned as it is)."""
    if getattr(api, "_agentq_timed", False):
        return api
    request = api.request

    @functools.wraps(request)
    def timed(method: str, url: str, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        metrics.API_REQUESTS.labels(verb=method, resource=resource_of(url)).inc()
        return request(method, url, *args, _request_timeout=_request_timeout or timeout, **kwargs)

    api.request = timed  # type: ignore[method-assign]
    api._agentq_timed = True  # type: ignore[attr-defined]
    return api


def load_config() -> client.ApiClient:
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        config.load_kube_config()
    cfg = client.Configuration.get_default_copy()
    cfg.connection_pool_maxsize = 32  # the reconcile pool's threads share one client
    return client.ApiClient(cfg)


def _raw(resp: Any) -> dict[str, Any]:
    return json.loads(resp.data)


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: changed keys only, nested objects merged
    key by key, a removed key as null, lists replaced whole. A null where `old` has no key is no change (a
    merge patch cannot store a null; absent and null read the same)."""
    patch: dict[str, Any] = {key: None for key in old.keys() - new.keys()}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            if changed := merge_patch(before, value):
                patch[key] = changed
        elif key not in old:
            if value is not None:
                patch[key] = value
        elif before != value:
            patch[key] = value
    return patch


def _done(resp: Any) -> None:
    """Read a response whose body is not needed: urllib3 returns a connection to the pool only once its
    response has been read, and an unreturned one makes the next request open a new TLS connection
    (loading the CA store costs far more CPU than the request; it was most of the operator's CPU)."""
    resp.data  # noqa: B018 - reading is the point


class Kube:
    def __init__(self, api: client.ApiClient | None = None, timeout: tuple[float, float] = TIMEOUT) -> None:
        self.api = with_timeouts(api or load_config(), timeout)
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def get_round(self, namespace: str, name: str, plural: str = PLURAL) -> dict[str, Any] | None:
        """A round (or, with plural=CAMPAIGN_PLURAL, a campaign); None when it does not exist."""
        try:
            return _raw(self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name,
                                                                 _preload_content=False))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def get_campaign(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get_round(namespace, name, CAMPAIGN_PLURAL)

    def write_status(self, body: dict[str, Any], status: dict[str, Any], plural: str = PLURAL
                     ) -> dict[str, Any] | None:
        """Turn the round's (or campaign's) status into `status` with one merge PATCH of what changed, on
        condition that the object is still at the resourceVersion the plan was made from: a concurrent change
        answers 409 and the caller simply reconciles again from fresh observations. Returns the object as
        written, None when nothing changed. Only the changes travel, not the whole spec and status a PUT would
        send."""
        meta = body["metadata"]
        changes = merge_patch(body.get("status") or {}, status)
        if not changes:
            return None
        patch = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": changes}
        resp = self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, meta["namespace"], plural,
                                                                 meta["name"], patch, _preload_content=False)
        return _raw(resp)

    def list_rounds(self, namespace: str | None, label_selector: str = "", plural: str = PLURAL
                    ) -> list[dict[str, Any]]:
        """AgentQRounds (or campaigns) of one namespace, or of every namespace with None (the dashboard's view)."""
        if namespace:
            resp = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural,
                                                             label_selector=label_selector, _preload_content=False)
        else:
            resp = self.custom.list_cluster_custom_object(GROUP, VERSION, plural, label_selector=label_selector,
                                                          _preload_content=False)
        return _raw(resp)["items"]

    def create_round(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The created round, or None when one of that name already exists (a repeated create)."""
        try:
            return _raw(self.custom.create_namespaced_custom_object(GROUP, VERSION, body["metadata"]["namespace"],
                                                                    PLURAL, body, _preload_content=False))
        except ApiException as err:
            if err.status == 409:
                return None
            raise

    def list_jobs(self, namespace: str, round_name: str) -> list[dict[str, Any]]:
        resp = self.batch.list_namespaced_job(namespace, label_selector=f"{ROUND_LABEL}={round_name}",
                                              _preload_content=False)
        return _raw(resp)["items"]

    def create_job(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """The created Job, or None when one of that name already exists (a retried or repeated create)."""
        try:
            return _raw(self.batch.create_namespaced_job(job["metadata"]["namespace"], job,
                                                         _preload_content=False))
        except ApiException as err:
            if err.status == 409:
                return None
            raise

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """The Job as patched (a strategic merge patch: `None` removes an annotation)."""
        return _raw(self.batch.patch_namespaced_job(name, namespace, patch, _preload_content=False))

    def failed_creates(self, namespace: str) -> list[dict[str, Any]]:
        """The namespace's FailedCreate events of Jobs: the Job controller's only record of a pod the API server
        refused (a ResourceQuota, an admission webhook, a policy); the Job's own status says nothing in 1.20."""
        resp = self.core.list_namespaced_event(namespace, field_selector="involvedObject.kind=Job,reason=FailedCreate",
                                               _preload_content=False)
        return _raw(resp)["items"]

    def post_event(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """A Kubernetes Event about `obj`, for what happens outside any handler (an informer's callback)."""
        meta = obj["metadata"]
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {"metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                 "involvedObject": {"apiVersion": obj.get("apiVersion", "batch/v1"), "kind": obj.get("kind", "Job"),
                                    "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
                 "type": kind, "reason": reason, "message": message[:1000], "count": 1,
                 "firstTimestamp": stamp, "lastTimestamp": stamp, "source": {"component": "agentq-operator"}}
        _done(self.core.create_namespaced_event(meta["namespace"], event, _preload_content=False))

    def apply_configmap(self, cm: dict[str, Any]) -> dict[str, Any]:
        """Create, or replace when it exists; the ConfigMap as written."""
        meta = cm["metadata"]
        try:
            return _raw(self.core.create_namespaced_config_map(meta["namespace"], cm, _preload_content=False))
        except ApiException as err:
            if err.status != 409:
                raise
        return _raw(self.core.replace_namespaced_config_map(meta["name"], meta["namespace"], cm,
                                                            _preload_content=False))

    def delete_round_objects(self, namespace: str, round_name: str, configmap: str) -> int:
        """Jobs (and, through Background propagation, their pods) plus the spec ConfigMap. Explicit, not
        left to ownerReferences alone: a cluster without a garbage collector would keep them forever."""
        jobs = self.list_jobs(namespace, round_name)
        for job in jobs:
            try:
                _done(self.batch.delete_namespaced_job(job["metadata"]["name"], namespace,
                                                       propagation_policy="Background", _preload_content=False))
            except ApiException as err:
                if err.status != 404:
                    raise
        try:
            _done(self.core.delete_namespaced_config_map(configmap, namespace, _preload_content=False))
        except ApiException as err:
            if err.status != 404:
                raise
        return len(jobs)

    def list_servers(self, namespace: str, round_name: str) -> list[str]:
        """The names of the round's inference servers (controller/inference.py): Deployments and Services."""
        selector = f"{ROUND_LABEL}={round_name},{SERVER_LABEL}"
        names = set()
        for list_objects in (self.apps.list_namespaced_deployment, self.core.list_namespaced_service):
            resp = list_objects(namespace, label_selector=selector, _preload_content=False)
            names |= {item["metadata"]["name"] for item in _raw(resp)["items"]}
        return sorted(names)

    def create_server_object(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Create a server's Deployment or Service; None when it already exists (a repeated create)."""
        namespace = manifest["metadata"]["namespace"]
        create = self.apps.create_namespaced_deployment if manifest["kind"] == "Deployment" \
            else self.core.create_namespaced_service
        try:
            return _raw(create(namespace, manifest, _preload_content=False))
        except ApiException as err:
            if err.status == 409:
                return None
            raise

    def delete_server(self, namespace: str, name: str) -> None:
        """A server's Deployment (its pods with it) and Service; already gone is fine."""
        for delete in (self.apps.delete_namespaced_deployment, self.core.delete_namespaced_service):
            try:
                delete(name, namespace, propagation_policy="Background", _preload_content=False)
            except ApiException as err:
                if err.status != 404:
                    raise

    def service_account_exists(self, namespace: str, name: str) -> bool:
        try:
            _done(self.core.read_namespaced_service_account(name, namespace, _preload_content=False))
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    def job_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        resp = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}",
                                             _preload_content=False)
        return _raw(resp)["items"]

    def pod_log_tail(self, namespace: str, pod: str, lines: int) -> str | None:
        """None when the log cannot be read (the node is gone, or no kubelet at all in a test cluster)."""
        try:
            return self.core.read_namespaced_pod_log(pod, namespace, tail_lines=lines, _preload_content=False
                                                     ).data.decode(errors="replace")
        except ApiException:
            return None
