"""The repository-task corpus built on Kubernetes: one pod per library shard, merged in the store, resumable.

Every pod runs the command a laptop runs, `agentq tasks build --source repos`, with `--shard I --num-shards N`:
shard I builds every N-th library into its own progress file beside `--out` (agentq/tasks/repos.py), all on one
PersistentVolumeClaim that also holds the sdists. When every shard has finished, one more pod runs the same
command without `--shard`: it reads every shard's progress, runs only what no shard finished, and writes the
corpus, its train/test split and the summary (its last line, the JSON summary, becomes the pod's termination
message). A shard that was killed resumes from its progress file when its pod is retried (`backoffLimit`), and
re-running the whole fan-out runs nothing twice.

The shards are one Indexed Job (`completionMode: Indexed`, Kubernetes 1.21+; the pod's index reaches the
command as `$(JOB_COMPLETION_INDEX)`), or N plain Jobs for servers before that (`indexed=False`). Builders are
pure (dict in, dict out); `main` drives them (`python -m controller.corpus build ...`).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from typing import Any

DATA_MOUNT = "/data"
CORPUS_LABEL = "agentq.dev/corpus"
SHARD_LABEL = "agentq.dev/corpus-shard"


def build_command(out: str, data_dir: str, shard: str | None, num_shards: int, extra: list[str]) -> list[str]:
    """The pod's command: the build, its summary (last stdout line) also written as the termination message."""
    argv = ["agentq", "tasks", "build", "--source", "repos", "--data-dir", data_dir, "--out", out,
            "--cache", f"{out.rsplit('.', 1)[0]}.trees", "--json", *extra]
    if shard is not None:
        argv += ["--shard", shard, "--num-shards", str(num_shards)]
    quoted = " ".join(a if a == "$(JOB_COMPLETION_INDEX)" else shlex.quote(a) for a in argv)
    return ["/bin/sh", "-c", f"set -o pipefail; {quoted} | tee /tmp/summary.jsonl && "
                             "tail -n 1 /tmp/summary.jsonl > /dev/termination-log"]


def _name(prefix: str, suffix: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")
    return f"{slug[: 63 - len(suffix) - 1]}-{suffix}"


def _job(name: str, namespace: str, image: str, pvc: str, command: list[str], labels: dict[str, str],
         cpu: str, memory: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    container = {"name": "build", "image": image, "command": command, "workingDir": DATA_MOUNT,
                 "volumeMounts": [{"name": "data", "mountPath": DATA_MOUNT}],
                 "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}},
                 "terminationMessagePolicy": "FallbackToLogsOnError"}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"backoffLimit": 3, **(spec or {}),
                 "template": {"metadata": {"labels": labels},
                              "spec": {"restartPolicy": "Never", "containers": [container],
                                       "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": pvc}}],
                                       "automountServiceAccountToken": False, "enableServiceLinks": False}}},
    }


def shard_jobs(corpus: str, namespace: str, image: str, pvc: str, out: str, data_dir: str, shards: int,
               extra: list[str] = (), indexed: bool = True, parallelism: int | None = None, cpu: str = "2",
               memory: str = "4Gi") -> list[dict[str, Any]]:
    """The fan-out: one Indexed Job with `shards` completions, or `shards` Jobs (servers before 1.21)."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    labels = {CORPUS_LABEL: corpus, "app.kubernetes.io/managed-by": "agentq"}
    if indexed:
        command = build_command(out, data_dir, "$(JOB_COMPLETION_INDEX)", shards, list(extra))
        return [_job(_name(corpus, "shards"), namespace, image, pvc, command, labels, cpu, memory,
                     {"completionMode": "Indexed", "completions": shards, "parallelism": parallelism or shards,
                      "backoffLimit": 3 * shards})]
    return [_job(_name(corpus, f"shard-{i}"), namespace, image, pvc,
                 build_command(out, data_dir, str(i), shards, list(extra)), {**labels, SHARD_LABEL: str(i)},
                 cpu, memory) for i in range(shards)]


def merge_job(corpus: str, namespace: str, image: str, pvc: str, out: str, data_dir: str, extra: list[str] = (),
              cpu: str = "2", memory: str = "4Gi") -> dict[str, Any]:
    """The merge: the same command without --shard, once every shard finished."""
    labels = {CORPUS_LABEL: corpus, "app.kubernetes.io/managed-by": "agentq"}
    return _job(_name(corpus, "merge"), namespace, image, pvc, build_command(out, data_dir, None, 1, list(extra)),
                labels, cpu, memory)


def _wait(batch: Any, core: Any, namespace: str, name: str, poll_s: float, timeout_s: float) -> dict[str, Any]:
    """A Job until it completes (its last pod's termination message, parsed) or fails (an error naming it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = batch.read_namespaced_job_status(name, namespace).status
        conditions = {c.type: c for c in status.conditions or [] if c.status == "True"}
        if "Failed" in conditions:
            raise RuntimeError(f"Job {namespace}/{name} failed: {conditions['Failed'].message}")
        if "Complete" in conditions:
            pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
            for pod in pods:
                for cs in pod.status.container_statuses or []:
                    done = cs.state.terminated if cs.state else None
                    if done is not None and done.exit_code == 0 and done.message:
                        try:
                            return json.loads(done.message.strip().splitlines()[-1])
                        except ValueError:
                            continue
            return {}
        time.sleep(poll_s)
    raise TimeoutError(f"Job {namespace}/{name} did not finish within {timeout_s:.0f} s")


def run(api: Any, corpus: str, namespace: str, image: str, pvc: str, out: str, data_dir: str, shards: int,
        extra: list[str] = (), indexed: bool = True, poll_s: float = 5.0, timeout_s: float = 48 * 3600) -> dict:
    """Create the shards (an existing Job of the same name is reused: a re-run resumes), wait for them, then the
    merge; returns the merge's summary."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)

    def create(job: dict[str, Any]) -> str:
        try:
            batch.create_namespaced_job(namespace, job)
        except ApiException as err:
            if err.status != 409:  # 409: made by an earlier run of this fan-out, which this one resumes
                raise
        return job["metadata"]["name"]

    for name in [create(job) for job in shard_jobs(corpus, namespace, image, pvc, out, data_dir, shards, extra,
                                                   indexed)]:
        _wait(batch, core, namespace, name, poll_s, timeout_s)
    merge = create(merge_job(corpus, namespace, image, pvc, out, data_dir, extra))
    return _wait(batch, core, namespace, merge, poll_s, timeout_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.corpus",
                                     description="Build the repository-task corpus as a Kubernetes fan-out")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="shards, then the merge; prints the merge's JSON summary")
    b.add_argument("--name", default="repos", help="the corpus's name (Job names and labels)")
    b.add_argument("--namespace", required=True)
    b.add_argument("--image", required=True, help="an image with agentq and the repository test environment")
    b.add_argument("--pvc", required=True, help=f"the claim mounted at {DATA_MOUNT}: sdists in, corpus out")
    b.add_argument("--data-dir", default=f"{DATA_MOUNT}/data", help="holds repos/ (inside the claim)")
    b.add_argument("--out", default=f"{DATA_MOUNT}/corpus/repos.jsonl")
    b.add_argument("--shards", type=int, default=15)
    b.add_argument("--no-indexed", action="store_true", help="one Job per shard (Kubernetes before 1.21)")
    b.add_argument("build_args", nargs=argparse.REMAINDER, help="after --: more `agentq tasks build` options")
    args = parser.parse_args(argv)
    from controller.kube import load_config

    extra = [a for a in args.build_args if a != "--"]
    summary = run(load_config(), args.name, args.namespace, args.image, args.pvc, args.out, args.data_dir,
                  args.shards, extra, indexed=not args.no_indexed)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
