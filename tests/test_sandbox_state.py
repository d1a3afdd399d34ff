"""Issue 23, failures 2 and 7: nothing of one run reaches the next candidate on the same worker.

Each attack is a pair of candidates run one after the other on a single warm worker: a sibling that leaves
something behind (a failing run whose messages quote the expected value, packets over loopback) and a thief
whose tests pass only if it finds it. Before the fix the fork server forked each candidate from a frame that
still held the previous run's result, and every run of a worker shared one network namespace in which any
candidate could send packets (now none can open a socket but AF_UNIX).
"""

from __future__ import annotations

import pytest
from hostile_driver import HIDDEN, NET_RECEIVER, NET_SENDER, THIEF, WRONG

from agentq.sandbox import Limits, LocalExecutor


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




def test_a_candidate_sees_no_network_state_of_earlier_runs(one_worker):
    one_worker.run(NET_SENDER, "from solution import *\n\ndef test_f():\n    assert f() >= 0\n")
    verdict = one_worker.run(NET_RECEIVER, "from solution import *\n\ndef test_f():\n    got = f()\n"
                                           "    assert got >= 37, got\n")
    assert verdict.status == "failed" and verdict.message.startswith("test_f: AssertionError: 0 at"), verdict


def test_no_candidate_can_open_a_network_socket_so_none_changes_network_state(one_worker):
    """The equivalent of a network namespace per run, at no cost per run (jail.seccomp_program)."""
    code = "import socket\n\ndef f(family):\n    try:\n        socket.socket(family, socket.SOCK_DGRAM).close()\n" \
           "    except PermissionError:\n        return 'refused'\n    return 'opened'\n"
    tests = "import socket\nfrom solution import *\n\ndef test_f():\n" \
            "    assert [f(socket.AF_INET), f(socket.AF_INET6), f(socket.AF_NETLINK), f(socket.AF_UNIX)] == " \
            "['refused', 'refused', 'refused', 'opened']\n"
    verdict = one_worker.run(code, tests)
    assert verdict.passed, verdict


def test_the_test_process_forgets_a_runs_exception_classes(one_worker):
    """The tests of every run on a worker run in one test process (forkserver.py), which stands in for each
    candidate's exception class with a class of that name and the candidate's base: a name must not keep the base
    an earlier candidate gave it, or one candidate would decide how the next one's errors are caught."""
    tests = ("from solution import *\n\ndef test_f():\n    try:\n        f()\n    except {base}:\n        return\n"
             "    assert False, 'not caught'\n")
    for base in ("KeyError", "ValueError"):
        code = f"class Weird({base}):\n    pass\n\ndef f():\n    raise Weird('x')\n"
        verdict = one_worker.run(code, tests.format(base=base))
        assert verdict.passed, (base, verdict)
