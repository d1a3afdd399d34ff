"""This machine's cache (built models, S3 downloads, step work dirs) and directories built into it atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """$AGENTQ_CACHE, else ~/.cache/agentq; everything AgentQ keeps on local disk lives below it."""
    return Path(os.environ.get("AGENTQ_CACHE") or Path.home() / ".cache" / "agentq")


def build_dir_atomically(target: Path, build: Callable[[Path], object]) -> bool:
    """Run build(tmp) in a temporary sibling of target and rename it into place.

    A reader never sees a half-written directory. Returns False, discarding this build, when another
    process renamed its own copy into place first.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            return False
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cached_build(name: str, build: Callable[[Path], object]) -> Path:
    """cache_root()/name, built on first use; parallel first uses race harmlessly."""
    target = cache_root() / name
    if not target.is_dir():
        build_dir_atomically(target, build)
    return target
