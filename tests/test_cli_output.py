"""What `make run` prints is for a person: the libraries' per-load bars and FutureWarnings are kept out of
the steps' output (agentq's own bar per step and the summaries stay)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

LIBRARY_NOISE = ("Loading weights", "de-quantizing GGUF", "Writing model shards")
LOAD_AND_SAVE = ("from agentq.policy.models import materialize_model; "
                 "import sys; materialize_model('smollm2-135m', sys.argv[1])")


def _run(code: str, tmp_path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in {"TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS",
                                                               "TRANSFORMERS_VERBOSITY"}}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_model_loads_print_no_library_bars_under_the_cli(tmp_path):
    loud = _run(LOAD_AND_SAVE, tmp_path / "loud")
    assert all(noise in loud for noise in LIBRARY_NOISE), "the libraries no longer draw these bars: update the test"
    quiet = _run(f"from agentq.cli import quiet_library_output; quiet_library_output(); {LOAD_AND_SAVE}",
                 tmp_path / "quiet")
    assert not [noise for noise in LIBRARY_NOISE if noise in quiet], quiet[-2000:]


def test_own_step_bars_still_show(capsys):
    """agentq's bars pass `disable` themselves, so tqdm's environment default does not hide them."""
    code = ("from agentq.cli import quiet_library_output; quiet_library_output(); from tqdm import tqdm; "
            "list(tqdm(range(3), desc='collect shard 0/1', disable=False)); list(tqdm(range(3), desc='library'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "collect shard 0/1" in done.stderr and "library" not in done.stderr
