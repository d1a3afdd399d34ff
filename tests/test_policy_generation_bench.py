"""The generation benchmark runs end to end on the tiny model and writes its docs section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.script_module import load_script

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_bench():
    return load_script("benchmarks/generation.py", "generation_bench")


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "humanevalfix").is_dir(), reason="needs ../shared/data/humanevalfix")
def test_benchmark_writes_a_table_with_measured_and_skipped_rows(tmp_path, capsys):
    bench = load_bench()
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Generation\n\nold table\n\n## DPO step\n\nkeep me\n")
    rc = bench.main(["--models", "tiny", "--variants", "hf-fp32,vllm-bf16", "--prompts", "2", "--k", "2",
                     "--max-new-tokens", "3", "--data-dir", str(DATA), "--write-docs", str(docs), "--json"])
    assert rc == 0
    text = docs.read_text()
    assert "old table" not in text and "## DPO step\n\nkeep me" in text
    assert text.count("## Generation") == 1
    assert "| tiny | hf fp32 | 2 x 2 | " in text and "| tiny | hf fp32 | 1 x 1 | " in text
    assert "skipped: vllm not installed" in text or "skipped: needs CUDA" in text
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sampled = next(r for r in rows if r["batch"] == "2 x 2" and "tok_per_s" in r)
    assert 0 < sampled["tokens"] <= 2 * 2 * 3 and sampled["ratio"] == 1.0 and sampled["tok_per_s"] > 0
