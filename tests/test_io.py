"""Crash-safe writes: a torn last line is repaired, a bad line is named, a docs section is replaced in place."""

import pytest

from agentq.io import append_jsonl, read_jsonl, repair_jsonl, replace_markdown_section


def test_append_and_repair_a_torn_tail(tmp_path):
    path = tmp_path / "shard.jsonl"
    append_jsonl(path, {"task_id": "a"})
    append_jsonl(path, {"task_id": "b"})
    with open(path, "ab") as fh:
        fh.write(b'{"task_id": "c", "nodes": [')  # a writer killed mid-line
    assert repair_jsonl(path) > 0
    assert [r["task_id"] for r in read_jsonl(path)] == ["a", "b"]
    assert repair_jsonl(path) == 0


def test_written_files_are_readable_by_other_users(tmp_path):
    from agentq.io import atomic_write_text

    atomic_write_text(tmp_path / "a.json", "{}")
    append_jsonl(tmp_path / "b.jsonl", {})
    assert {oct((tmp_path / n).stat().st_mode & 0o777) for n in ("a.json", "b.jsonl")} == {"0o644"}


def test_bad_line_is_named(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2: not valid JSON"):
        list(read_jsonl(path))
    path.write_text('[1, 2]\n')
    with pytest.raises(ValueError, match=r"x.jsonl:1: expected a JSON object, got list"):
        list(read_jsonl(path))


def test_replace_markdown_section_keeps_the_others(tmp_path):
    path = tmp_path / "benchmarks.md"
    replace_markdown_section(path, "Generation", "## Generation\n\nold\n")
    replace_markdown_section(path, "DPO step", "## DPO step\n\ndpo\n")
    replace_markdown_section(path, "Generation", "## Generation\n\nnew\n")
    text = path.read_text()
    assert text.startswith("# Benchmarks\n") and "old" not in text
    assert text.count("## Generation") == 1 and "new" in text and "## DPO step\n\ndpo" in text
