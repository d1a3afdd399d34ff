"""scripts/lock.py loaded as a module for the tests that check the lock and the image pins (scripts/ is
not a package)."""

from __future__ import annotations

from tests.script_module import load_script

lock = load_script("scripts/lock.py", "agentq_lock_script")
