"""The corpus fan-out on Kubernetes (controller/corpus.py): the Indexed Job's pods run the same `agentq tasks build`
command with their index as the shard, the merge runs it without one; checked against Kubernetes' schema, the
command's shard split run for real, and the driver against a real API server (the kubelet played)."""

from __future__ import annotations

import json
import threading

import kubernetes_validate
import pytest

from controller import corpus


def test_the_fan_out_is_one_indexed_job_running_the_build_command_per_shard():
    [job] = corpus.shard_jobs("repos", "ns", "agentq:1", "data", "/data/corpus/repos.jsonl", "/data/data", 15,
                              ["--per-library", "400"])
    kubernetes_validate.validate(job, "1.33", strict=True)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 15, 15)
    script = spec["template"]["spec"]["containers"][0]["command"][-1]
    assert "agentq tasks build --source repos --data-dir /data/data --out /data/corpus/repos.jsonl" in script
    assert "--shard $(JOB_COMPLETION_INDEX) --num-shards 15" in script and "--per-library 400" in script
    assert "> /dev/termination-log" in script
    merge = corpus.merge_job("repos", "ns", "agentq:1", "data", "/data/corpus/repos.jsonl", "/data/data")
    kubernetes_validate.validate(merge, "1.33", strict=True)
    assert "--shard" not in merge["spec"]["template"]["spec"]["containers"][0]["command"][-1]


def test_servers_before_indexed_jobs_get_one_job_per_shard():
    jobs = corpus.shard_jobs("repos", "ns", "agentq:1", "data", "/data/o.jsonl", "/data/d", 3, indexed=False)
    assert [j["metadata"]["name"] for j in jobs] == ["repos-shard-0", "repos-shard-1", "repos-shard-2"]
    for i, job in enumerate(jobs):
        kubernetes_validate.validate(job, "1.25", strict=True)
        assert f"--shard {i} --num-shards 3" in job["spec"]["template"]["spec"]["containers"][0]["command"][-1]


def test_shards_split_the_libraries_and_every_library_is_in_one():
    from pathlib import Path

    from agentq.tasks.repos import mine

    sdists = [Path(f"lib{i}-1.0.tar.gz") for i in range(15)]
    shards = [mine(sdists, i, 4) for i in range(4)]
    assert sorted(p for shard in shards for p in shard) == sorted(sdists)
    assert all(not set(a) & set(b) for i, a in enumerate(shards) for b in shards[i + 1:])


@pytest.mark.cluster
def test_the_driver_waits_for_the_shards_then_merges_and_returns_the_summary(tmp_path):
    import testenv
    from kubernetes import client

    from tests.test_swebench import api_server

    cluster = api_server(tmp_path)
    try:
        api = cluster.api()
        client.CoreV1Api(api).create_namespace({"metadata": {"name": "c"}})
        batch = client.BatchV1Api(api)
        summary = {"source": "repos", "tasks": 2001}

        def kubelet() -> None:
            for name, message in (("repos-shard-0", "{}"), ("repos-shard-1", "{}"),
                                  ("repos-merge", json.dumps(summary))):
                for _ in range(400):
                    if name in {j.metadata.name for j in batch.list_namespaced_job("c").items}:
                        break
                    threading.Event().wait(0.05)
                testenv.finish_job(api, "c", name, succeeded=True, message=message)

        played = threading.Thread(target=kubelet)
        played.start()
        got = corpus.run(api, "repos", "c", "agentq:1", "data", "/data/o.jsonl", "/data/d", 2, indexed=False,
                         poll_s=0.05, timeout_s=60)
        played.join()
        assert got == summary
        # a second run resumes: the Jobs exist, nothing is created twice, the summary is read back
        assert corpus.run(api, "repos", "c", "agentq:1", "data", "/data/o.jsonl", "/data/d", 2, indexed=False,
                          poll_s=0.05, timeout_s=10) == summary
    finally:
        cluster.stop()
