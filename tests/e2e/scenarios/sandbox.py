"""The sandbox pods isolate: a candidate tries to reach another pod, the API server and the node, and fails."""

from __future__ import annotations

import json
import socket
import threading

from e2e.cluster import NODE_IP
from e2e.context import Context, ScenarioFailed
from e2e.scenarios import scenario

# The candidate: plain data about what it can reach and see, returned to the trusted test process.
PROBE = '''
import os, socket

def probe(targets):
    seen = {}
    for label, host, port in targets:
        try:
            socket.create_connection((host, port), timeout=3).close()
            seen[label] = "connected"
        except OSError as err:
            seen[label] = f"refused: {type(err).__name__}: {err}"
    status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
    seen["uid"] = os.getuid()
    seen["capabilities"] = status.get("CapEff", "").strip()
    seen["processes"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    try:  # the jail's seccomp filter allows AF_UNIX sockets only: even listing interfaces (netlink) is refused
        seen["interfaces"] = [name for _, name in socket.if_nameindex()]
    except OSError as err:
        seen["interfaces"] = f"refused: {type(err).__name__}: {err}"
    seen["token"] = os.environ.get("AGENTQ_SANDBOX_TOKEN", "")
    try:
        open("/opt/agentq/written-by-candidate", "w")
        seen["root_writable"] = True
    except OSError:
        seen["root_writable"] = False
    return seen
'''
TESTS = '''
from solution import probe

TARGETS = {targets!r}

def test_reaches_nothing():
    seen = probe(TARGETS)
    reached = [label for label, _, _ in TARGETS if seen[label] == "connected"]
    assert not reached, f"the candidate reached {{reached}}: {{seen}}"

def test_sees_and_holds_nothing():
    seen = probe(TARGETS)
    assert seen["capabilities"] == "0000000000000000", seen
    assert seen["token"] == "" and not seen["root_writable"], seen
    assert seen["interfaces"] in ([], ["lo"]) or seen["interfaces"].startswith("refused: "), seen
    assert len(seen["processes"]) <= 3, seen
'''
# Run inside the sandbox pod: the candidate's own probe from the pod itself (outside the jail), then the candidate
# through the sandbox server's own API with the server's token.
DRIVER = '''
import json, sys
from agentq.sandbox.client import RemoteExecutor

targets, code, tests = json.loads(sys.stdin.read())
scope = {{}}
exec(code, scope)
seen = scope["probe"](targets)
control = {{label: seen[label] for label, _, _ in targets}}
executor = RemoteExecutor("http://127.0.0.1:{port}")
verdict = executor.run(code, tests)
print(json.dumps({{"control": control, "health": executor.health(), "verdict": verdict.model_dump()}}))
'''


class Listener:
    """A listener on the node's pod-network address that no candidate may reach; counts what connects."""

    def __init__(self) -> None:
        self.sock = socket.create_server((NODE_IP, 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@scenario("sandbox-isolation", order=20)
def sandbox_isolation(ctx: Context) -> dict:
    """A candidate run by the sandbox pod reaches no pod, API server or node listener the pod itself reaches."""
    sandbox = ctx.component_pod("sandbox")
    dashboard = ctx.component_pod("dashboard")
    api_service = json.loads(ctx.kubectl("get", "service", "kubernetes", "-n", "default", "-o", "json"))
    listener = Listener()
    try:
        targets = [
            ("another pod (dashboard)", dashboard["status"]["podIP"], 8265),
            ("API server (kubernetes Service)", api_service["spec"]["clusterIP"], 443),
            ("API server", NODE_IP, ctx.cluster.state.ports["apiserver"]),
            ("node listener", NODE_IP, listener.port),
        ]
        payload = json.dumps([targets, PROBE, TESTS.format(targets=targets)])
        out = ctx.kubectl("exec", "-i", "-n", ctx.namespace, sandbox["metadata"]["name"], "-c", "sandbox", "--",
                          "python", "-c", DRIVER.format(port=8080), stdin=payload, timeout=300)
        seen = json.loads(out.strip().splitlines()[-1])
        control_accepts = listener.accepted
    finally:
        listener.close()
    control, verdict = seen["control"], seen["verdict"]
    unreachable = [label for label, state in control.items() if state != "connected"]
    if unreachable:
        # The test could not fail if the pod itself could not reach these: the path must exist for the jail to
        # be what stops the candidate.
        raise ScenarioFailed(f"the sandbox pod itself cannot reach {unreachable}: {control}")
    if verdict["status"] != "passed":
        raise ScenarioFailed(f"the candidate was not contained: {verdict['status']}: {verdict['message']} "
                             f"{verdict['tests']}")
    if verdict.get("profile") != "userns":
        # the chart's bubblewrap mode must give full isolation (the executor's userns profile), never a weak run
        raise ScenarioFailed(f"the candidate ran under isolation profile {verdict.get('profile')!r}, not 'userns': "
                             f"{verdict['isolation']}")
    if listener.accepted != control_accepts or control_accepts != 1:
        raise ScenarioFailed(f"the node listener saw {listener.accepted} connections ({control_accepts} expected "
                             "from the pod itself, none from the candidate)")
    return {"targets": {label: f"{host}:{port}" for label, host, port in targets},
            "from_the_pod": control, "candidate_verdict": verdict["status"],
            "candidate_tests": {t["name"]: t["passed"] for t in verdict["tests"]}, "profile": verdict["profile"],
            "isolation_notes": verdict["isolation"], "server_isolation": seen["health"].get("isolation")}
