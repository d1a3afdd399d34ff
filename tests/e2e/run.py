"""`make e2e`: the real single-node cluster up, the images built and imported, the chart installed with
`helm install` (Helm's default flags: server-side apply on Helm 4), the scenarios run in order, the cluster
torn down, and one JSON object printed last with the timings and every check.

    PYTHONPATH=tests .venv/bin/python -m e2e.run [--keep] [--reuse] [--only NAME ...] [--list]

--keep leaves the cluster up; --reuse runs on it again (images rebuilt and imported only where they changed,
the release upgraded, earlier rounds deleted): the quick loop while writing a scenario.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from e2e import images
from e2e.cluster import Cluster, ClusterBusy, ClusterUnavailable, State
from e2e.context import Context
from e2e.scenarios import load

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "agentq-system"
RELEASE = "agentq"
VALUES = REPO / "charts" / "agentq" / "ci" / "e2e-values.yaml"
TASKS = REPO / "images" / "mock-model" / "tasks"
STORAGE_CLASS = "agentq-local"


def log(message: str) -> None:
    print(f"\n== e2e: {message}", file=sys.stderr, flush=True)


def artifacts_volume(cluster: Cluster) -> Path:
    """The artifact store: a directory on the node offered as a ReadWriteMany hostPath PersistentVolume of the
    class the chart's claim asks for, holding the round's task files (relative task paths are store keys)."""
    store = Path(cluster.state.artifacts)
    (store / "tasks").mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        shutil.copy(TASKS / f"{split}.jsonl", store / "tasks" / f"{split}.jsonl")
    for path in (store, store / "tasks"):
        path.chmod(0o777)  # the step pods write as uid 10001; a hostPath volume ignores fsGroup
    cluster.kubectl("apply", "-f", "-", check=True, stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "agentq-artifacts-e2e"},
        "spec": {"capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteMany"],
                 "storageClassName": STORAGE_CLASS, "persistentVolumeReclaimPolicy": "Retain",
                 "hostPath": {"path": str(store), "type": "Directory"}}}))
    return store


def install(cluster: Cluster, built: dict[str, str], upgrade: bool = False) -> dict[str, Any]:
    """helm install with the e2e values and the images' tags (Helm's default flags otherwise: on Helm 4 that is
    server-side apply), then the Deployments rolled out and `helm test`. `upgrade`: the release of an earlier
    run on a reused cluster, upgraded to these images."""
    sets = []
    for name in ("controller", "sandbox", "infer", "train"):
        repository, tag = built[name].rsplit(":", 1)
        # --set-string: a content-hash tag of digits only ("848959910359") would be a number to --set
        sets += ["--set-string", f"images.{name}.repository={repository}", "--set-string", f"images.{name}.tag={tag}"]
    verb = ["upgrade"] if upgrade else ["install", "--create-namespace"]
    done = cluster.helm(*verb, RELEASE, str(REPO / "charts" / "agentq"), "--namespace", NAMESPACE,
                        "-f", str(VALUES), *sets)
    if done.returncode != 0:
        raise RuntimeError(f"helm {verb[0]} failed:\n{done.stdout}{done.stderr}")
    for deployment in ("operator", "sandbox", "dashboard"):
        cluster.kubectl("rollout", "status", f"deployment/{RELEASE}-{deployment}", "-n", NAMESPACE,
                        "--timeout=900s", check=True, timeout=960)
    test = cluster.helm("test", RELEASE, "--namespace", NAMESPACE, "--timeout", "10m", timeout=700)
    if test.returncode != 0:
        raise RuntimeError(f"helm test failed:\n{test.stdout}{test.stderr}")
    return {"helm": cluster.helm("version", "--short").stdout.strip(), "helm_test": "passed"}


def forget_earlier_runs(cluster: Cluster, store: Path) -> None:
    """On a reused cluster: the rounds and campaigns of an earlier run, and their artifacts, gone, so every
    scenario starts from nothing."""
    cluster.kubectl("delete", "agentqcampaigns,agentqrounds", "--all", "-n", NAMESPACE, "--timeout=300s", check=True,
                    timeout=330)
    shutil.rmtree(store / "rounds", ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the cluster up (scripts/cluster.sh down later)")
    parser.add_argument("--reuse", action="store_true",
                        help="use the cluster an earlier --keep left running (helm upgrade instead of install)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these scenarios")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    scenarios = load()
    if args.list:
        for s in scenarios:
            print(f"{s.order:>4} {s.name:<20} {s.doc}")
        return 0
    if args.only:
        unknown = set(args.only) - {s.name for s in scenarios}
        if unknown:
            parser.error(f"unknown scenario(s) {sorted(unknown)}")
        scenarios = [s for s in scenarios if s.name in args.only]

    result: dict[str, Any] = {"ok": False, "timings": {}, "checks": {}, "scenarios": {}, "images": []}
    timings = result["timings"]
    start = time.monotonic()
    earlier = State.load() if args.reuse else None
    cluster = Cluster(earlier) if earlier and earlier.kubeconfig else Cluster()
    reused = cluster.state.kubeconfig != ""
    try:
        if reused:
            log(f"reusing the running cluster ({cluster.state.kubeconfig})")
        else:
            log("cluster up")
            cluster.up()
            timings["cluster_up_s"] = cluster.state.timings["up_s"]
        log("images: build (cached by content) and import into containerd")
        t = time.monotonic()
        built = images.build_all()
        timings["images_build_s"] = round(time.monotonic() - t, 1)
        timings["images_import_s"] = images.load(cluster, built)
        timings["images_s"] = round(time.monotonic() - t, 1)
        result["images"] = [{"name": b.name, "ref": b.ref, "size_mb": b.size_mb, "build_s": b.build_s,
                             "cached": b.cached} for b in built]
        log("helm upgrade (reused cluster)" if reused else "helm install")
        t = time.monotonic()
        store = artifacts_volume(cluster)
        if reused:
            forget_earlier_runs(cluster, store)
        result["checks"]["install"] = install(cluster, {b.name: b.ref for b in built}, upgrade=reused)
        timings["install_s"] = round(time.monotonic() - t, 1)
        ctx = Context(cluster, NAMESPACE, RELEASE, {b.name: b.ref for b in built}, store)
        for s in scenarios:
            log(f"scenario {s.name}: {s.doc}")
            t = time.monotonic()
            try:
                outcome = {"ok": True, **s.run(ctx)}
            except Exception as err:  # noqa: BLE001 - one failed scenario must not hide the others' results
                outcome = {"ok": False, "error": f"{type(err).__name__}: {err}"}
                traceback.print_exc()
                print(cluster.diagnostics(), file=sys.stderr)
                print(operator_log(cluster), file=sys.stderr)
            outcome["seconds"] = round(time.monotonic() - t, 1)
            result["scenarios"][s.name] = outcome
            log(f"scenario {s.name}: {'passed' if outcome['ok'] else 'FAILED'} in {outcome['seconds']}s")
        round_outcome = result["scenarios"].get("round", {})
        if round_outcome.get("ok"):
            timings["round_wall_s"] = round_outcome["wall_s"]
            timings["step_pod_s"] = round_outcome["step_pod_s"]
        result["checks"].update({name: o["ok"] for name, o in result["scenarios"].items()})
        result["ok"] = bool(scenarios) and all(o["ok"] for o in result["scenarios"].values())
    except (ClusterUnavailable, ClusterBusy) as err:
        result["error"] = str(err)
        print(f"e2e: {err}", file=sys.stderr)
    except Exception as err:  # noqa: BLE001 - reported in the JSON, with the cluster's state for the log
        result["error"] = f"{type(err).__name__}: {err}"
        traceback.print_exc()
        if cluster.state.kubeconfig:
            print(cluster.diagnostics(), file=sys.stderr)
            print(operator_log(cluster), file=sys.stderr)
    finally:
        if (args.keep or reused) and cluster.state.pids:
            log(f"cluster kept: export KUBECONFIG={cluster.state.kubeconfig}; scripts/cluster.sh down when done")
        elif cluster.state.pids:
            log("cluster down")
            t = time.monotonic()
            cluster.down()
            timings["cluster_down_s"] = round(time.monotonic() - t, 1)
        timings["total_s"] = round(time.monotonic() - start, 1)
        result["load_avg"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(result))
    return 0 if result["ok"] else 1


def operator_log(cluster: Cluster) -> str:
    done = cluster.kubectl("logs", "-n", NAMESPACE, f"deployment/{RELEASE}-operator", "--tail=100")
    return f"--- operator log (last 100 lines)\n{done.stdout}{done.stderr}"


if __name__ == "__main__":
    sys.exit(main())
