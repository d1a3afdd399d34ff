"""Issue 23, failures 2 and 7: nothing of one run reaches the next candidate on the same worker.

Each attack is a pair of candidates run one after the other on a single warm worker: a sibling that leaves
something behind (a failing run whose messages quote the expected value, packets over loopback) and a thief
whose tests pass only if it finds it. Before the fix the fork server forked each candidate from a frame that
still held the previous run's result, and every run of a worker shared one network namespace.
"""

from __future__ import annotations

import pytest

from agentq.sandbox import Limits, LocalExecutor

HIDDEN = "from solution import *\n\ndef test_hidden():\n    assert f(7) == 424242\n"
WRONG = "def f(x):\n    return 0\n"
# Looks for `f(7) == <answer>` everywhere a forked child can look: every object the collector tracks, every
# frame up its stack, and the raw heap (freed blocks keep their bytes).
THIEF = r'''
import ctypes, gc, re, sys

PATTERN = re.compile(r"f\(7\) == (\d+)")


def _search(text):
    match = PATTERN.search(text)
    return int(match[1]) if match else None


def _from_objects():
    for obj in gc.get_objects():
        for text in ([obj] if isinstance(obj, str) else obj.values() if isinstance(obj, dict) else
                     obj if isinstance(obj, list) else []):
            if isinstance(text, str) and (found := _search(text)) is not None:
                return found
    return None


def _from_frames():
    frame = sys._getframe()
    while frame is not None:
        for value in frame.f_locals.values():
            found = _search(repr(value)[:1_000_000])
            if found is not None:
                return found
        frame = frame.f_back
    return None


def _from_heap():
    with open("/proc/self/maps") as fh:
        regions = [line.split() for line in fh]
    for fields in regions:
        if "rw" not in fields[1] or len(fields) > 5 and fields[5].startswith("/"):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        try:
            blob = ctypes.string_at(start, min(end - start, 64 << 20))
        except Exception:
            continue
        match = re.search(rb"f\(7\) == (\d+)", blob)
        if match:
            return int(match[1])
    return None


def f(x):
    for look in (_from_objects, _from_frames, _from_heap):
        found = look()
        if found is not None:
            return found
    return -1
'''


@pytest.fixture(scope="module")
def one_worker():
    with LocalExecutor(workers=1, limits=Limits(timeout_s=20, memory_mb=1024)) as executor:
        yield executor


def test_a_candidate_finds_nothing_of_the_previous_run_in_its_memory(one_worker):
    # The thief's search works: what is in its own memory, it finds (so the next check can fail).
    planted = one_worker.run(THIEF + "\nPLANTED = 'f(7) == ' + str(4242 * 100 + 42)\n", HIDDEN)
    assert planted.passed, planted
    wrong = one_worker.run(WRONG, HIDDEN)
    assert wrong.status == "failed" and "424242" in wrong.message  # the message the thief is after
    stolen = one_worker.run(THIEF, HIDDEN)
    assert stolen.status == "failed", stolen


NET_SENDER = """
import socket

def f():
    sent = 0
    for _ in range(37):
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"x", ("127.0.0.1", 9))
            s.close()
            sent += 1
        except OSError:
            pass
    return sent
"""
NET_RECEIVER = """
import os

def f():
    with open("/proc/net/dev") as fh:
        for line in fh:
            name, _, counters = line.partition(":")
            if name.strip() == "lo":
                return int(counters.split()[9])  # packets sent over loopback so far
    return 0
"""


def test_a_candidate_sees_no_network_state_of_earlier_runs(one_worker):
    one_worker.run(NET_SENDER, "from solution import *\n\ndef test_f():\n    assert f() >= 0\n")
    verdict = one_worker.run(NET_RECEIVER, "from solution import *\n\ndef test_f():\n    got = f()\n"
                                           "    assert got >= 37, got\n")
    assert verdict.status == "failed" and verdict.message.startswith("test_f: AssertionError: 0 at"), verdict


def test_each_run_has_its_own_network_namespace(one_worker):
    code = "import os\n\ndef f():\n    return os.stat('/proc/self/ns/net').st_ino\n"
    tests = "from solution import *\n\ndef test_f():\n    assert False, f()\n"
    first, second = one_worker.run(code, tests), one_worker.run(code, tests)
    inodes = [v.message.split("AssertionError: ")[1].split(" at")[0] for v in (first, second)]
    assert inodes[0].isdigit() and inodes[0] != inodes[1], (first.message, second.message)
