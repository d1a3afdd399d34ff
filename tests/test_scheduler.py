"""The search scheduler: many trees in flight write exactly the trees of the one-at-a-time path, in fewer calls."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentq.cli import main
from agentq.config import ScriptedSpec
from agentq.io import read_jsonl
from agentq.policy.scripted import ScriptedPolicy
from agentq.sandbox.executor import LocalExecutor
from agentq.sandbox.limits import Limits
from agentq.search.mcts import Search, SearchParams
from agentq.search.scheduler import Scheduler
from agentq.tasks.humanevalfix import load_humanevalfix
from agentq.tasks.schema import write_tasks

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PARAMS = SearchParams(k=2, rollouts=3, depth=2, stop_on_pass=False, seed=7)


class CountingPolicy(ScriptedPolicy):
    """The scripted mock, counting its backend calls and the sequences they asked for."""

    def __init__(self) -> None:
        super().__init__(ScriptedSpec())
        self.calls = self.sequences = 0

    def generate_batch(self, requests):
        self.calls += 1
        self.sequences += sum(r.n for r in requests)
        return super().generate_batch(requests)


@pytest.fixture(scope="module")
def tasks():
    return load_humanevalfix(DATA)[:20]


@pytest.fixture(scope="module")
def executor():
    with LocalExecutor(workers=2, limits=Limits(timeout_s=5)) as ex:
        yield ex


def without_clock(record: dict) -> dict:
    """A tree without what the clock decides (its wall time, each run's duration and CPU time)."""
    clock = {"duration_s", "cpu_s"}
    nodes = [{**n, "verdict": n["verdict"] and {k: v for k, v in n["verdict"].items() if k not in clock}}
             for n in record["nodes"]]
    return {**record, "nodes": nodes, "stats": {k: v for k, v in record["stats"].items() if k != "wall_s"}}


def test_scheduler_writes_the_sequential_trees_for_20_tasks_in_fewer_generate_calls(tasks, executor):
    policy = CountingPolicy()
    alone = [Search(t, policy, executor, PARAMS).run().record() for t in tasks]
    sequential_calls, policy.calls, policy.sequences = policy.calls, 0, 0
    scheduler = Scheduler(in_flight=20)
    together = {s.task.id: s.record() for s in scheduler.run(Search(t, policy, executor, PARAMS) for t in tasks)}
    assert [without_clock(together[r["task_id"]]) for r in alone] == [without_clock(r) for r in alone]
    expansions = sum(r["stats"]["rollouts"] for r in alone)
    assert expansions == len(tasks) * PARAMS.rollouts
    # One call per expansion and one per critique when alone; all trees' pending ones share a call together.
    assert sequential_calls == 2 * expansions
    assert policy.calls < expansions
    assert policy.calls == scheduler.stats.generate_calls and policy.sequences / policy.calls > 2 * PARAMS.k
    assert scheduler.stats.run_calls < expansions


def test_at_most_in_flight_trees_are_open_so_a_kill_loses_only_those(tasks, executor):
    policy, pulled = CountingPolicy(), []

    def searches():
        for task in tasks[:9]:
            pulled.append(task.id)
            yield Search(task, policy, executor, PARAMS)

    finished = 0
    for _ in Scheduler(in_flight=3).run(searches()):
        finished += 1
        assert len(pulled) - finished <= 3  # trees opened and not yet handed back
    assert finished == 9 and len(pulled) == 9


def test_collect_shard_is_the_same_file_with_one_or_many_trees_in_flight(tmp_path, tasks):
    write_tasks(tmp_path / "train.jsonl", tasks[:8])
    shards = []
    for in_flight in (1, 8):
        (tmp_path / f"r{in_flight}.yaml").write_text(
            f"apiVersion: agentq.dev/v1alpha1\nkind: AgentQRound\nmetadata: {{name: r{in_flight}}}\nspec:\n"
            "  model: {base: tiny, backend: scripted}\n"
            "  dataset: {train: train.jsonl, test: train.jsonl}\n"
            f"  collect: {{shards: 1, k: 2, rollouts: 3, depth: 2, treesInFlight: {in_flight}}}\n"
            "  store: {path: store}\n"
        )
        assert main(["collect", "--round", str(tmp_path / f"r{in_flight}.yaml"), "--shard", "0",
                     "--num-shards", "1"]) == 0
        shard = tmp_path / "store" / "rounds" / f"r{in_flight}" / "trajectories" / "shard-0-of-1.jsonl"
        shards.append([without_clock(r) for r in read_jsonl(shard)])
    assert [r["task_id"] for r in shards[1]] == [t.id for t in tasks[:8]]
    assert [{k: v for k, v in r.items() if k != "inputs_digest"} for r in shards[0]] == \
        [{k: v for k, v in r.items() if k != "inputs_digest"} for r in shards[1]]
