"""Running a test driver as another user: the sandbox pods' uid, an interpreter that user can run, an environment
that finds this checkout. The executor's workers inherit its uid, so the unprivileged case needs its own process."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
POD_UID = 10001  # the uid the sandbox pods run as (charts/agentq: securityContext.runAsUser)


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    site = sysconfig.get_paths()["purelib"]
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": f"{REPO}:{site}", "LANG": "C.UTF-8", **(extra or {})}


def python_for(uid: int) -> list[str]:
    """An interpreter of this version that `uid` can run (a pyenv one under /root is closed to others)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for exe in (os.path.realpath(sys.executable), f"/usr/bin/python{version}"):
        try:
            probe = subprocess.run([exe, "-c", "import pydantic"], user=uid, env=env(), capture_output=True)
        except OSError:
            continue
        if probe.returncode == 0:
            return [exe]
    pytest.fail(f"no Python {version} that uid {uid} can run with this checkout's packages: cannot test "
                "the unprivileged case here")


def scratch_for(uid: int) -> Path:
    """A temporary directory `uid` owns (its TMPDIR for the run)."""
    folder = Path(tempfile.mkdtemp(prefix="agentq-uid-"))
    os.chown(folder, uid, uid)
    return folder
