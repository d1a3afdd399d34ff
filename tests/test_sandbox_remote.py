"""RemoteExecutor against a real `agentq sandbox serve` server on 127.0.0.1: same verdicts as local."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from agentq.config import SandboxSpec
from agentq.sandbox import Limits, LocalExecutor, RemoteExecutor, SandboxUnavailable, make_executor
from agentq.sandbox.server import SandboxServer

LIMITS = Limits(timeout_s=1.5)
TESTS = "from solution import *\n\ndef test_a():\n    assert f(2) == 4\n\ndef test_b():\n    assert f(-1) == 1\n"
CASES = [
    "def f(x):\n    return x * x\n",  # passed
    "def f(x):\n    return x * 2\n",  # failed (one of two)
    "def f(x)\n    return x\n",  # error: does not compile
    "def f(x):\n    while True:\n        pass\n",  # timeout
    "def f(x):\n    return bytearray(8 << 30)\n",  # memory
    "import os, signal\ndef f(x):\n    os.kill(os.getpid(), signal.SIGKILL)\n",  # killed
    "import sys\nsys.exit(0)\n",  # error at import
]


@pytest.fixture(scope="module")
def server():
    with LocalExecutor(workers=2, limits=LIMITS) as executor:
        httpd = SandboxServer(("127.0.0.1", 0), executor)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}", executor
        httpd.shutdown()
        httpd.server_close()


def _comparable(verdict):
    return verdict.model_dump(exclude={"duration_s"})


def test_remote_verdicts_equal_local_ones(server):
    url, local = server
    remote = RemoteExecutor(url, limits=LIMITS)
    local_verdicts = local.run_many([(code, TESTS) for code in CASES])
    statuses = [v.status for v in local_verdicts]
    assert statuses == ["passed", "failed", "error", "timeout", "memory", "killed", "error"]
    remote_many = remote.run_many([(code, TESTS) for code in CASES])
    assert [_comparable(v) for v in remote_many] == [_comparable(v) for v in local_verdicts]
    assert _comparable(remote.run(CASES[1], TESTS)) == _comparable(local_verdicts[1])


def test_health_and_bad_requests(server):
    url, _ = server
    with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
        assert json.load(response) == {"ok": True, "workers": 2}
    request = urllib.request.Request(url + "/run", data=b'{"code": 1}', method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=5)
    assert err.value.code == 400 and "code" in err.value.read().decode()
    with pytest.raises(ValueError, match="HTTP 400.*timeout_s"):
        RemoteExecutor(url).run("x = 1", TESTS, limits=Limits.model_construct(timeout_s=-1, memory_mb=64))


def test_unreachable_sandbox_fails_clearly_after_retries():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens here
    start = time.monotonic()
    with pytest.raises(SandboxUnavailable, match=rf"sandbox at http://127.0.0.1:{port} unreachable after 3 tries"):
        RemoteExecutor(f"http://127.0.0.1:{port}", retries=3, backoff_s=0.05).run("x = 1", TESTS)
    assert 0.15 <= time.monotonic() - start < 10  # 0.05 + 0.1 of backoff between the three tries


def test_make_executor_follows_the_spec(server):
    url, _ = server
    remote = make_executor(SandboxSpec(url=url, timeout_seconds=1.5))
    assert isinstance(remote, RemoteExecutor) and remote.run(CASES[0], TESTS).passed
    with make_executor(SandboxSpec(workers=1, timeout_seconds=2, memory_mb=256)) as local:
        assert isinstance(local, LocalExecutor) and local.limits.memory_mb == 256 and local.workers == 1


def test_cli_serve_starts_and_answers():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentq.cli", "sandbox", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert "serving on http://127.0.0.1" in proc.stdout.readline()
        assert RemoteExecutor(f"http://127.0.0.1:{port}", limits=LIMITS).run(CASES[0], TESTS).passed
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
