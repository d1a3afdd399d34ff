"""The localisation benchmark runs end to end on a small slice and writes its docs section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.script_module import load_script

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "repos").is_dir(), reason="needs ../shared/data/repos")


def load_bench():
    return load_script("benchmarks/localization.py", "localization_bench")


def test_benchmark_measures_every_stage_against_bm25_on_held_out_libraries(tmp_path, capsys):
    bench = load_bench()
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Localization\n\nold table\n\n## Learning\n\nkeep me\n")
    rc = bench.main(["--no-dense", "--libraries", "toolz,sqlparse,cachetools", "--per-library", "8",
                     "--repos", str(DATA / "repos"), "--cache", str(tmp_path / "cache"), "--write-docs", str(docs),
                     "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # synthetic tasks: no test prior (an oracle there) and nothing fitted (learned parts are fitted on real tasks)
    assert [r["stage"] for r in result["rows"]] == ["BM25 only", "+ PPR"]
    assert result["libraries"] == ["cachetools", "sqlparse", "toolz"]
    detail = result["coverage_detail"]["+ PPR"]
    assert sorted(detail["by_library"]) == result["libraries"] and len(detail["by_fold"]) == 3
    assert all(f["calibration_tasks"] > 0 and 0 <= f["coverage"] <= 1 for f in detail["by_fold"])
    for row in result["rows"]:
        assert row["tasks"] == result["tasks"] > 0  # every fold's test tasks, each counted once
        assert 0 <= row["recall@1"] <= row["recall@5"] <= 1 and row["set_size"] >= 1
    assert result["rows"][0]["recall@1_vs_bm25"] == 1.0
    text = docs.read_text()
    assert "old table" not in text and "keep me" in text and "| + PPR |" in text and "no reranker" in text


def test_too_few_libraries_is_one_clear_line(tmp_path, capsys):
    bench = load_bench()
    rc = bench.main(["--no-dense", "--libraries", "toolz", "--per-library", "2", "--repos", str(DATA / "repos"),
                     "--cache", str(tmp_path)])
    assert rc == 2
    assert "fewer than 3 libraries" in capsys.readouterr().err


def test_bad_task_files_are_one_clear_line(tmp_path, capsys):
    bench = load_bench()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert bench.main(["--tasks", str(bad), "--repos", str(DATA / "repos"), "--cache", str(tmp_path)]) == 2
    assert f"{bad}:1: not valid JSON" in capsys.readouterr().err
    lines = [{"kind": "repo", "task_id": f"t{i}", "group": f"g{i}", "repo": {"sdist": "nope-1.0.tar.gz"},
              "bug_patch": "", "fail_to_pass": ["x"], "issue": "i"} for i in range(3)]
    bad.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert bench.main(["--tasks", str(bad), "--repos", str(DATA / "repos"), "--cache", str(tmp_path),
                       "--no-dense"]) == 2
    assert "task t0: sdist nope-1.0.tar.gz is not in" in capsys.readouterr().err
