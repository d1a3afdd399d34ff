"""The lock (requirements.lock, written by scripts/lock.py) is what every environment installs: these tests
fail when pyproject.toml moved on without it, or when it stops pinning everything exactly."""

from __future__ import annotations

import copy

from lockfile import lock


def test_lock_was_refreshed_after_the_last_pyproject_change():
    assert lock.recorded_digest() == lock.digest(lock.pyproject()), \
        "pyproject.toml changed since requirements.lock was written: run make lock"


def test_digest_follows_the_dependencies_only():
    project = lock.pyproject()
    moved = copy.deepcopy(project)
    moved["project"]["dependencies"].append("rich==14.0.0")
    assert lock.digest(moved) != lock.digest(project)
    extra = copy.deepcopy(project)
    extra["project"]["optional-dependencies"]["dev"][-1] += ",<99"
    assert lock.digest(extra) != lock.digest(project)
    cosmetic = copy.deepcopy(project)
    cosmetic["tool"]["ruff"]["line-length"] = 99
    assert lock.digest(cosmetic) == lock.digest(project)


def test_recorded_digest_reads_only_the_first_line(tmp_path):
    path = tmp_path / "requirements.lock"
    path.write_text(f"{lock.DIGEST_PREFIX}abc\nx==1\n")
    assert lock.recorded_digest(path) == "abc"
    path.write_text(f"x==1\n{lock.DIGEST_PREFIX}abc\n")
    assert lock.recorded_digest(path) is None


def test_every_locked_package_is_pinned_exactly_with_hashes():
    entries = lock.LOCK.read_text().split("\n")
    requirements = [line for line in entries if line and not line.startswith((" ", "#"))]
    assert len(requirements) == len(lock.read_pins(lock.LOCK)) > 50
    for line in requirements:
        assert "==" in line and line.endswith("\\"), f"requirements.lock: {line!r} is not an exact pin with hashes"
    assert lock.LOCK.read_text().count("--hash=sha256:") >= len(requirements)


def test_lock_holds_cpu_torch_and_no_cuda_wheels():
    pinned = lock.read_pins(lock.LOCK)
    assert pinned["torch"].endswith("+cpu")
    cuda = sorted(n for n in pinned if n.startswith(("nvidia-", "cuda-")) or n in {"triton", "bitsandbytes"})
    assert not cuda, f"requirements.lock pulls CUDA packages onto CPU machines: {cuda}"


def test_every_dev_extra_and_core_dependency_is_locked():
    from packaging.requirements import Requirement

    project = lock.pyproject()["project"]
    pinned = lock.read_pins(lock.LOCK)
    wanted = list(project["dependencies"])
    for extra in lock.DEV_EXTRAS:
        wanted += project["optional-dependencies"][extra]
    for requirement in map(Requirement, wanted):
        name = lock.normalise(requirement.name)
        assert name in pinned, f"requirements.lock lacks {requirement} (pyproject)"
        assert requirement.specifier.contains(pinned[name], prereleases=True), \
            f"requirements.lock pins {name}=={pinned[name]}, which breaks pyproject's {requirement}"
