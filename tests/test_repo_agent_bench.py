"""benchmarks/repo_agent.py measures every prompt against its token budget (and searches honestly on request)."""

from __future__ import annotations

import json

from agentq.tasks.schema import RepoTask, write_tasks
from tests.script_module import load_script
from tests.test_repo_tasks import MINILIB, MINITESTS, make_sdist, repo_record


def test_every_prompt_is_measured_against_the_budget(tmp_path, capsys):
    make_sdist(tmp_path / "data" / "repos", "minilib", {"minilib/__init__.py": MINILIB,
                                                         "tests/test_minilib.py": MINITESTS})
    tasks = tmp_path / "tasks.jsonl"
    write_tasks(tasks, [RepoTask.model_validate(repo_record(issue="clamp(-1, 0, 5) returns -1 " * 40))])
    bench = load_script("benchmarks/repo_agent.py", "repo_agent_bench")
    assert bench.main(["--tasks", str(tasks), "--data-dir", str(tmp_path / "data"), "--limit", "1", "--seeds", "1",
                       "--strategies", "reflection", "--attempts", "2", "--honest", "--prompt-tokens", "1024",
                       "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    row = result["strategies"]["reflection"]
    assert result["honest"] and row["sandbox_runs"] == 0  # an honest search runs no hidden test
    assert row["prompts"] == 2 and row["within_budget"] == 1.0 and 0 < row["prompt_tokens_max"] <= 1024
    assert row["unbounded_tokens_max"] > 0
