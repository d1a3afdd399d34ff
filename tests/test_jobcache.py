"""The operator's Job cache: what a reconcile pass reads instead of a LIST must never show a stale or
deleted Job as current (controller/jobcache.py)."""

from __future__ import annotations

from controller.jobcache import JobCache

KEY = ("ns", "r1")


def job(name: str, rv: int, uid: str = "u1", state: str | None = None) -> dict:
    status = {"succeeded": 1} if state == "Succeeded" else {}
    return {"metadata": {"name": name, "uid": uid, "resourceVersion": str(rv)}, "status": status}


class Lister:
    def __init__(self, *items: dict) -> None:
        self.items, self.calls = list(items), 0

    def __call__(self) -> list[dict]:
        self.calls += 1
        return list(self.items)


def test_the_first_read_lists_and_later_reads_come_from_watch_events():
    cache, lister = JobCache(relist_seconds=3600), Lister(job("a", 5))
    assert [j["metadata"]["name"] for j in cache.jobs(KEY, lister)] == ["a"]
    cache.observe(KEY, job("b", 6, uid="u2"), deleted=False)
    cache.observe(KEY, job("a", 7, state="Succeeded"), deleted=False)
    jobs = {j["metadata"]["name"]: j for j in cache.jobs(KEY, lister)}
    assert lister.calls == 1 and set(jobs) == {"a", "b"} and jobs["a"]["status"] == {"succeeded": 1}


def test_events_for_a_round_nobody_reads_are_not_kept():
    cache = JobCache(relist_seconds=3600)
    cache.observe(KEY, job("a", 5), deleted=False)
    assert cache.jobs(KEY, Lister()) == []


def test_an_older_copy_never_replaces_a_newer_one():
    cache = JobCache(relist_seconds=3600)
    cache.jobs(KEY, Lister(job("a", 9, state="Succeeded")))
    cache.observe(KEY, job("a", 4), deleted=False)  # a watch event from before the LIST, delivered late
    assert cache.jobs(KEY, Lister())[0]["status"] == {"succeeded": 1}


def test_a_deleted_job_is_gone_and_a_slower_list_does_not_revive_it():
    cache = JobCache(relist_seconds=0)  # every read lists again
    cache.jobs(KEY, Lister(job("a", 5)))
    cache.observe(KEY, job("a", 6), deleted=True)
    assert cache.jobs(KEY, Lister(job("a", 5))) == []  # the LIST was served before the delete


def test_a_relist_drops_a_job_deleted_while_no_event_came():
    cache = JobCache(relist_seconds=0)
    cache.jobs(KEY, Lister(job("a", 5)))
    assert cache.jobs(KEY, Lister()) == []


def test_a_created_job_is_seen_at_once_and_a_same_named_new_object_replaces_the_old():
    cache = JobCache(relist_seconds=3600)
    cache.jobs(KEY, Lister(job("a", 5, uid="old")))
    cache.created(KEY, job("a", 2, uid="new"))  # another object of the same name: the UID decides
    assert cache.jobs(KEY, Lister())[0]["metadata"]["uid"] == "new"
    cache.forget(KEY)
    assert cache.jobs(KEY, Lister()) == []
