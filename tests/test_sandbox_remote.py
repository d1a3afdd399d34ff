"""RemoteExecutor against a real `agentq sandbox serve` server on 127.0.0.1: same verdicts as local."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from agentq.config import SandboxSpec
from agentq.sandbox import Limits, LocalExecutor, RemoteExecutor, SandboxUnavailable, make_executor
from agentq.sandbox.server import SandboxServer

LIMITS = Limits(timeout_s=1.5)
JSON = {"Content-Type": "application/json"}
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
    return verdict.model_dump(exclude={"duration_s", "cpu_s"})


def test_remote_verdicts_equal_local_ones(server):
    url, local = server
    remote = RemoteExecutor(url, limits=LIMITS)
    local_verdicts = local.run_many([(code, TESTS) for code in CASES])
    statuses = [v.status for v in local_verdicts]
    assert statuses == ["passed", "failed", "error", "timeout", "memory", "killed", "error"]
    remote_many = remote.run_many([(code, TESTS) for code in CASES])
    assert [_comparable(v) for v in remote_many] == [_comparable(v) for v in local_verdicts]
    assert _comparable(remote.run(CASES[1], TESTS)) == _comparable(local_verdicts[1])


def test_an_items_own_time_budget_travels_to_the_server(server):
    """The loop's budget is tiny so that even a loaded machine gives it that much CPU within the 1.5 s wall
    clock the server allows; the item without limits of its own keeps the request's."""
    url, _ = server
    budget = LIMITS.model_copy(update={"time_budget_s": 0.02})
    verdicts = RemoteExecutor(url, limits=LIMITS).run_many([(CASES[3], TESTS, budget), (CASES[3], TESTS)])
    assert verdicts[0].status == "timeout" and "time budget of 0.02s" in verdicts[0].message, verdicts[0]
    assert verdicts[1].status == "timeout" and "timed out after 1.5s" in verdicts[1].message, verdicts[1]


def test_health_and_bad_requests(server):
    url, _ = server
    with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
        assert json.load(response) == {"ok": True, "workers": 2, "isolation": [], "repos": False}
    request = urllib.request.Request(url + "/run", data=b'{"code": 1}', method="POST", headers=JSON)
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
    assert remote.isolation == []  # the server's /healthz: nothing weakened here
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


# --- hardening: who may run code, and how much -------------------------------------------------------------


@pytest.fixture()
def guarded():
    """A server with a token, small limits, one request at a time and a short read timeout."""
    with LocalExecutor(workers=1, limits=LIMITS) as executor:
        httpd = SandboxServer(("127.0.0.1", 0), executor, token="s3cret", max_concurrent=1, read_timeout_s=1.0)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd
        httpd.shutdown()
        httpd.server_close()


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url + "/run", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_token_is_required_and_checked(guarded, monkeypatch):
    url, _ = guarded
    body = json.dumps({"code": CASES[0], "tests": TESTS}).encode()
    assert _post(url, body, JSON)[0] == 401
    assert _post(url, body, {**JSON, "Authorization": "Bearer wrong"})[0] == 401
    status, answer = _post(url, body, {**JSON, "Authorization": "Bearer s3cret"})
    assert status == 200 and json.loads(answer)["status"] == "passed"
    with pytest.raises(SandboxUnavailable, match="refused the token"):
        RemoteExecutor(url, token="wrong").run(CASES[0], TESTS)
    monkeypatch.setenv("AGENTQ_SANDBOX_TOKEN", "s3cret")  # what the chart's Secret sets in Job pods
    assert RemoteExecutor(url).run(CASES[0], TESTS).passed


def test_only_json_and_only_text_that_encodes(guarded):
    url, _ = guarded
    auth = {"Authorization": "Bearer s3cret"}
    body = json.dumps({"code": CASES[0], "tests": TESTS}).encode()
    assert _post(url, body, {**auth, "Content-Type": "text/plain"})[0] == 415
    code = b'"x = \\"\\ud800\\"\\ndef f(x):\\n    return x * x\\n"'  # a lone surrogate, legal in JSON
    lone = b'{"code": ' + code + b', "tests": ' + json.dumps(TESTS).encode() + b"}"
    # Candidate code is never the caller's mistake: as from a LocalExecutor, it is a verdict (a 400 would stop
    # the caller's round on one bad answer of its model).
    status, answer = _post(url, lone, {**auth, **JSON})
    assert status == 200 and json.loads(answer)["status"] == "error" and "not valid text" in answer
    lone_tests = b'{"code": "x = 1", "tests": "x = \\"\\ud800\\"\\ndef test_a():\\n    pass\\n"}'
    status, answer = _post(url, lone_tests, {**auth, **JSON})
    assert status == 400 and "body.tests" in answer and "UTF-8" in answer
    assert _post(url, b"[1, 2", {**auth, **JSON})[0] == 400
    verdict = guarded[1].executor.run("x = '\ud800'\n", TESTS)
    assert verdict.status == "error" and "not valid text" in verdict.message


def test_caller_limits_are_clamped_to_the_servers(guarded):
    url, _ = guarded
    remote = RemoteExecutor(url, token="s3cret", limits=Limits(timeout_s=600, max_procs=250, memory_mb=64 << 10))
    verdict = remote.run("def f(x):\n    while True:\n        pass\n", TESTS)
    assert verdict.status == "timeout" and "after 1.5s" in verdict.message, verdict


def test_a_half_sent_request_holds_no_slot_and_is_dropped_after_the_read_timeout(guarded):
    url, httpd = guarded
    stalled = socket.create_connection(("127.0.0.1", httpd.server_address[1]))
    try:
        stalled.sendall(b"POST /run HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.3)
        body = json.dumps({"code": CASES[0], "tests": TESTS}).encode()
        assert _post(url, body, {**JSON, "Authorization": "Bearer s3cret"})[0] == 200  # the only slot was free
        stalled.settimeout(5)
        assert stalled.recv(100) == b""  # closed by the server after its 1 s read timeout
    finally:
        stalled.close()


# --- issue 23, failure 8 -----------------------------------------------------------------------------------

def _trickle(port: int, stop: threading.Event, closed: list[float]) -> None:
    """A slowloris client: headers and body a byte at a time, one every 0.3 s (well inside the read timeout)."""
    request = (b"POST /run HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Type: application/json"
               b"\r\nContent-Length: 4000\r\n\r\n" + b" " * 4000)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        for byte in request:
            if stop.is_set():
                return
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.3)
    closed.append(time.monotonic() - started)


def test_trickling_clients_hold_no_slot_and_are_cut_at_the_request_deadline():
    with LocalExecutor(workers=1, limits=LIMITS) as executor:
        httpd = SandboxServer(("127.0.0.1", 0), executor, token="s3cret", max_concurrent=1, read_timeout_s=1.0,
                              request_deadline_s=3.0)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        port, stop, closed = httpd.server_address[1], threading.Event(), []
        tricklers = [threading.Thread(target=_trickle, args=(port, stop, closed)) for _ in range(4)]
        try:
            for t in tricklers:
                t.start()
            time.sleep(1.0)
            body = json.dumps({"code": CASES[0], "tests": TESTS}).encode()
            for _ in range(3):  # answered while four clients trickle, though the server runs one at a time
                assert _post(f"http://127.0.0.1:{port}", body, {**JSON, "Authorization": "Bearer s3cret"})[0] == 200
            for t in tricklers:
                t.join(timeout=30)
            assert len(closed) == 4 and max(closed) < 12, closed  # cut at the 3 s deadline, not after 20 minutes
        finally:
            stop.set()
            httpd.shutdown()
            httpd.server_close()


def test_a_body_over_the_cap_is_a_413_its_sender_reads(guarded):
    url, httpd = guarded
    big = json.dumps({"code": "x = 1\n" + "#" * (9 << 20), "tests": TESTS}).encode()
    status, answer = _post(url, big, {**JSON, "Authorization": "Bearer s3cret"})
    assert status == 413 and "at most" in answer  # not a broken pipe the client would retry
    with pytest.raises(ValueError, match="HTTP 413"):
        RemoteExecutor(url, token="s3cret", retries=3).run("x = 1\n" + "#" * (9 << 20), TESTS)
    with socket.create_connection(("127.0.0.1", httpd.server_address[1]), timeout=5) as raw:
        raw.sendall(b"POST /run HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
                    b"Content-Type: application/json\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 411")


def test_a_batch_over_the_cap_is_sent_in_parts(guarded):
    url, _ = guarded
    code = "def f(x):\n    return x * x\n" + "# padding\n" * 30_000  # about 300 KB each, 30 of them: 9 MB
    verdicts = RemoteExecutor(url, token="s3cret").run_many([(code, TESTS)] * 30)
    assert len(verdicts) == 30 and all(v.passed for v in verdicts)


def test_tests_that_exhaust_the_compiler_are_a_400_not_a_500(guarded):
    url, _ = guarded
    deep = "def test_a():\n    assert 1" + "+1" * 200_000 + "\n"  # RecursionError in the compiler
    body = json.dumps({"code": "x = 1", "tests": deep}).encode()
    status, answer = _post(url, body, {**JSON, "Authorization": "Bearer s3cret"})
    assert status == 400 and "do not compile" in answer, (status, answer[:300])
    nested = "x = " + "-" * 200_000 + "1\n"  # MemoryError in the candidate's compile: a verdict, never a 400
    verdict = RemoteExecutor(url, token="s3cret").run(nested, TESTS)
    assert verdict.status in ("error", "memory") and "failed to import" in verdict.message, verdict


def test_cli_serve_binds_loopback_and_refuses_other_addresses_without_a_token():
    env = {k: v for k, v in os.environ.items() if k != "AGENTQ_SANDBOX_TOKEN"}
    proc = subprocess.run([sys.executable, "-m", "agentq.cli", "sandbox", "serve", "--host", "0.0.0.0"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "AGENTQ_SANDBOX_TOKEN" in proc.stderr and "Traceback" not in proc.stderr
    from agentq.cli import build_parser

    assert build_parser().parse_args(["sandbox", "serve"]).host == "127.0.0.1"
