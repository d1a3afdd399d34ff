"""scripts/lock.py loaded as a module for the tests that check the lock and the image pins (scripts/ is
not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("agentq_lock_script", Path(__file__).resolve().parents[1] /
                                               "scripts" / "lock.py")
lock = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = lock
_spec.loader.exec_module(lock)
