"""`agentq` unwinds on SIGTERM (a deleted pod, a drained node): in a container the step is PID 1, which the
kernel spares from signals it has no handler for, so without one a deleted step pod ran on, holding its step
lock while the Job's next pod started and was refused (seen on the real cluster of `make e2e`)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import argparse, os, signal, sys, time
from agentq import cli

def step(args):
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        print("ran on")
    finally:
        print("released", flush=True)

class Parser:
    def parse_args(self, argv):
        return argparse.Namespace(command="tasks", func=step)

cli.build_parser = Parser
sys.exit(cli.main([]))
"""


def test_sigterm_unwinds_the_command_and_exits_143():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 143, done.stderr
    assert done.stdout.split() == ["released"]  # finally blocks ran; the sleep did not go on
    assert "agentq: terminated; re-run the same command to resume" in done.stderr
