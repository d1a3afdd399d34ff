"""The informers' store (controller/informer.py): what a reconcile pass reads instead of a LIST must never show a
stale or deleted object as current, and a LIST after a broken watch must report what vanished meanwhile."""

from __future__ import annotations

from controller.informer import OBJECT_VERSION, Store, retry_delay


def job(name: str, rv: int, uid: str = "u1", round_name: str = "r1", ns: str = "ns") -> dict:
    return {"metadata": {"name": name, "namespace": ns, "uid": uid, "resourceVersion": str(rv),
                         "labels": {"agentq.dev/round": round_name}}}


def names(objs: list[dict]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objs)


def test_an_older_copy_never_replaces_a_newer_one_and_the_index_follows():
    store = Store("agentq.dev/round")
    assert store.put(job("a", 7))
    assert not store.put(job("a", 5)) and not store.put(job("a", 7))  # a late LIST item, the same version
    assert store.get("ns", "a")["metadata"]["resourceVersion"] == "7"
    assert store.put(job("a", 9, round_name="r2"))  # relabelled: it moves in the index
    assert names(store.indexed("ns", "r1")) == [] and names(store.indexed("ns", "r2")) == ["a"]
    assert store.put(job("a", 3, uid="u2"))  # a new object of that name (deleted and made again) always wins
    assert store.get("ns", "a")["metadata"]["uid"] == "u2"


def test_a_deleted_object_is_not_revived_by_a_slower_copy():
    store = Store("agentq.dev/round")
    store.put(job("a", 5))
    store.delete(job("a", 6))
    assert store.get("ns", "a") is None and store.indexed("ns", "r1") == []
    assert not store.put(job("a", 5))  # the create's answer arriving after the DELETED event


def test_a_relist_reports_what_vanished_and_keeps_what_is_newer_than_it():
    store = Store("agentq.dev/round")
    store.put(job("gone", 5, uid="u-gone"))
    store.put(job("kept", 5, uid="u-kept"))
    store.put(job("fresh", 20, uid="u-fresh"))  # created after the LIST below was served
    store.put(job("other-ns", 5, uid="u-o", ns="elsewhere"))
    gone, changed = store.replace([job("kept", 8, uid="u-kept")], 10, "ns")
    assert names(gone) == ["gone"] and names(changed) == ["kept"]
    assert names(store.indexed("ns", "r1")) == ["fresh", "kept"]
    assert store.get("elsewhere", "other-ns") is not None  # a namespace's LIST leaves the others alone


def test_the_echo_of_our_own_write_is_recognised_without_parsing_it():
    store = Store("agentq.dev/round")
    store.put(job("a", 42), own=True)
    line = '{"type":"MODIFIED","object":{"kind":"Job","metadata":{"name":"a","uid":"u1","resourceVersion":"42"}}}'
    assert store.echo(OBJECT_VERSION.search(line).group(1))
    assert not store.echo("42")  # claimed once
    assert not store.echo("43")


def test_a_broken_watch_is_retried_within_two_seconds():
    assert [retry_delay(n) for n in (1, 2, 3)] == [0.1, 0.2, 0.4]
    assert max(retry_delay(n) for n in range(1, 50)) == 2.0


def test_a_request_to_a_server_that_never_answers_fails_within_seconds():
    """The client has no timeout by default: a connection that died silently would hang a reconcile thread."""
    import socket
    import threading
    import time

    import pytest
    from kubernetes import client

    from controller.handlers import CONNECTION_ERRORS
    from controller.kube import Kube

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: [accepted.append(silent.accept()[0]) for _ in range(8)], daemon=True).start()
    config = client.Configuration()
    config.host = f"http://127.0.0.1:{silent.getsockname()[1]}"
    kube = Kube(client.ApiClient(config), timeout=(1.0, 0.5))
    started = time.monotonic()
    with pytest.raises(CONNECTION_ERRORS):
        kube.get_round("ns", "r1")
    assert time.monotonic() - started < 10
    silent.close()
    for conn in accepted:
        conn.close()
