"""The dashboard as a person uses it: `agentq serve` on 127.0.0.1, a real tiny round running beside it, and
Debian's chromium driven by playwright (executable_path; never `playwright install`). The page must show
the round progressing step by step to Succeeded without a reload, its pass rates, and a search tree.

A machine without /usr/bin/chromium fails this test: `make setup` installs it. Set AGENTQ_SCREENSHOT_DIR to
keep the two screenshots (docs/dashboard-round.png and docs/dashboard-tree.png come from here).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from agentq.tasks.humanevalfix import load_humanevalfix
from agentq.tasks.schema import write_tasks

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"agentq serve exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer in {seconds}s")


@pytest.fixture()
def round_dir(tmp_path):
    tasks = load_humanevalfix(DATA)
    write_tasks(tmp_path / "train.jsonl", tasks[:6])
    write_tasks(tmp_path / "test.jsonl", tasks[100:104])
    (tmp_path / "store").mkdir()
    (tmp_path / "dash.yaml").write_text(
        "apiVersion: agentq.dev/v1alpha1\nkind: AgentQRound\nmetadata: {name: dash}\nspec:\n"
        "  model: {base: tiny, backend: scripted}\n  dataset: {train: train.jsonl, test: test.jsonl}\n"
        "  store: {path: store}\n")
    return tmp_path


@pytest.fixture()
def server(round_dir):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "agentq.cli", "serve", "--store", str(round_dir / "store"),
                             "--port", str(port), "--poll-interval", "0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def keep(shot: Path, name: str) -> None:
    target = os.environ.get("AGENTQ_SCREENSHOT_DIR")
    if target:
        shutil.copyfile(shot, Path(target) / name)


def pick_tree(server: str, round_name: str) -> tuple[str, int, int]:
    """(task, a failed node, a node chosen in a pair) of the first tree that has both, from the API."""
    listing = json.loads(urllib.request.urlopen(f"{server}/api/rounds/{round_name}/trajectories").read())
    for entry in listing:
        tree = json.loads(urllib.request.urlopen(
            f"{server}/api/rounds/{round_name}/trajectories/{entry['task_id']}").read())
        failed = [n["id"] for n in tree["nodes"] if n.get("parent") is not None and n.get("status") == "failed"]
        chosen = [n["id"] for n in tree["nodes"] if any(p.get("role") == "chosen" for p in n.get("pairs") or [])]
        if failed and chosen:
            return entry["task_id"], failed[0], chosen[0]
    raise AssertionError(f"no tree of {round_name} has both a failed node and a chosen pair")


def step_states(page) -> tuple[str, tuple[str, ...]]:
    phase, steps = page.evaluate("""() => [document.querySelector('#phase .badge')?.textContent || '',
        [...document.querySelectorAll('#steps-panel .steps .step')].map(e => e.dataset.state)]""")
    return phase, tuple(steps)


def test_watch_a_tiny_round_to_succeeded_and_open_a_tree(round_dir, server, tmp_path):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make setup` (it installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    runner = subprocess.Popen([sys.executable, "-m", "agentq.cli", "round", "run", str(round_dir / "dash.yaml"),
                               "--preset", "tiny"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=round_dir)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(server + "/#/")
            row = page.locator('#rounds-table tr[data-round="dash"]')
            row.wait_for(timeout=60_000)  # the list polls: the round appears once its first step started
            row.click()
            page.locator("#steps-panel").wait_for()
            seen = []
            deadline = time.monotonic() + 420
            while time.monotonic() < deadline:
                state = step_states(page)
                if not seen or seen[-1] != state:
                    seen.append(state)
                if state[0] == "Succeeded":
                    break
                assert runner.poll() in (None, 0), runner.stdout.read()
                time.sleep(0.25)
            assert seen[-1] == ("Succeeded", ("Succeeded",) * 5), seen
            assert any("Running" in states for _, states in seen), f"never saw a step running: {seen}"
            assert len({states for _, states in seen}) >= 3, f"the page did not follow the steps: {seen}"
            page.locator('#live[data-type="final"]').wait_for(timeout=10_000)
            assert page.url.endswith("#/round/dash")  # followed through the event stream, never reloaded
            page.locator("#pass-rate-chart rect[data-mode]").first.wait_for(timeout=30_000)
            # one bar per mode for the base and one for the round (the tiny preset evaluates its base too)
            assert page.locator("#pass-rate-chart rect[data-mode]").count() == 6
            assert page.locator("#pass-rate-chart path.ci").count() == 6  # each with its interval
            page.locator("#tree-list tr[data-task]").first.wait_for(timeout=30_000)
            shot = tmp_path / "dashboard-round.png"
            page.screenshot(path=str(shot), full_page=True)
            keep(shot, "dashboard-round.png")

            # a tree with a wrong fix (a failing test to show) and a pair: which one depends on the scripted run
            task, failed, chosen = pick_tree(server, "dash")
            page.locator(f'#tree-list tr[data-task="{task}"]').click()
            page.locator("#tree-svg").wait_for()
            assert page.locator("#tree-svg g.node").count() >= 3
            detail = page.locator("#node-detail")
            page.locator(f'#tree-svg g.node[data-node="{failed}"]').click()
            assert detail.get_attribute("data-node") == str(failed)
            text = detail.inner_text()
            assert "Q_mcts" in text and "Q_ai" in text and "visits" in text and "tests passed" in text
            assert "Failing tests" in text
            assert page.locator("#node-diff .add, #node-diff .del").count() >= 1 or "same as the buggy" in text
            page.locator(f'#tree-svg g.node[data-node="{chosen}"]').click()
            assert detail.get_attribute("data-node") == str(chosen)
            assert "chosen" in page.locator("#node-pairs").inner_text()
            partner = page.locator("#node-pairs .pair").first
            assert "vs node" in partner.inner_text()
            partner.click()  # a pair chip jumps to the partner node
            assert detail.get_attribute("data-node") != str(chosen)
            page.locator(f'#tree-svg g.node[data-node="{chosen}"]').click()
            shot = tmp_path / "dashboard-tree.png"
            page.screenshot(path=str(shot), full_page=True)
            keep(shot, "dashboard-tree.png")
            assert errors == []
            browser.close()
        assert runner.wait(timeout=60) == 0
    finally:
        if runner.poll() is None:
            runner.terminate()
            runner.wait(timeout=10)


def test_the_page_asks_for_the_token_and_then_works(tmp_path):
    """With a token configured, the page prompts once, then the API calls and the event stream carry it."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make setup` (it installs Debian's chromium)")
    import dashboard_store
    from playwright.sync_api import sync_playwright

    dashboard_store.build(tmp_path / "store")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "agentq.cli", "serve", "--store", str(tmp_path / "store"),
                             "--port", str(port), "--poll-interval", "0.2"],
                            env={**os.environ, "AGENTQ_SERVE_TOKEN": "s3cret"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/#/round/r2")
            page.locator("#login[open]").wait_for(timeout=10_000)
            page.fill("#token", "wrong")
            page.click("#login button")
            page.locator("#login[open]").wait_for(timeout=10_000)  # refused: asked again
            page.fill("#token", "s3cret")
            page.click("#login button")
            page.locator("#pass-rate-chart rect[data-arm='baseline']").wait_for(timeout=10_000)
            page.locator('#live[data-type="final"]').wait_for(timeout=10_000)  # the stream took ?token=
            assert page.locator("#comparison").inner_text().count("no detectable difference") == 1
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
