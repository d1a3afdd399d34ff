"""The test environment's own contract: a binary missing from it is reported by name (the cluster tests turn
that into a failure in CI and under `make test`, never a silent skip)."""

from __future__ import annotations

import pytest
import testenv
from testenv import BINARIES, EnvMissing, bin_dir


def test_a_test_environment_without_the_controller_manager_counts_as_missing(tmp_path, monkeypatch):
    for binary in BINARIES:
        if binary != "kube-controller-manager":
            (tmp_path / binary).touch()
    monkeypatch.setenv("AGENTQ_TESTENV_BIN", str(tmp_path))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setattr(testenv, "DEFAULT_CACHE", tmp_path)
    with pytest.raises(EnvMissing, match="kube-controller-manager"):
        bin_dir()
    (tmp_path / "kube-controller-manager").touch()
    assert bin_dir() == tmp_path
