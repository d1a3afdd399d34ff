"""The dashboard as a person uses it, in Debian's chromium driven by playwright (executable_path; never
`playwright install`), against `agentq serve` on 127.0.0.1:

* a real tiny round run beside the page, followed step by step to Succeeded without a reload, and a tree
  opened with the mouse and the keyboard;
* every view (rounds, a round's overview, trees, results, pairs, comparison, a tree; a campaign) on a
  function round, a repository round and a campaign, at 390, 1280 and 1920 px: no horizontal overflow, no
  column under the next panel, text contrast at least 4.5:1, no CSP violation, no script error;
* a hostile task id and round name: nothing they hold runs;
* the token: in no URL the browser requests and in no line the service logs;
* a round interrupted and then run again, and a collect whose trees arrive while the page watches.

A machine without /usr/bin/chromium fails these tests: `make setup` installs it. Set AGENTQ_SCREENSHOT_DIR
to keep the screenshots docs/dashboard.md shows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import dashboard_store
import pytest
from dashboard_page import CHROMIUM, CONTRAST, FLAGS, INJECTED, OVERFLOW, RECORD_CSP, Serve, keep

from agentq.tasks.humanevalfix import load_humanevalfix
from agentq.tasks.schema import write_tasks

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WIDTHS = (390, 1280, 1920)
pytestmark = pytest.mark.slow


def task_route(round_name: str, task: str) -> str:
    return f"#/round/{urllib.parse.quote(round_name, safe='')}/tree/" + \
        "/".join(urllib.parse.quote(p, safe="") for p in task.split("/"))


# (view, route, what shows it is drawn): each on a function round (r2), a repository round (repo), a campaign
VIEWS = [
    ("rounds", "#/", "#rounds-table tr[data-round='repo']"),
    ("round", "#/round/r2", "#pass-rate-chart rect[data-mode]"),
    ("trees", "#/round/r2/trees", "#tree-list tr[data-task='task/a']"),
    ("results", "#/round/r2/results", "#results-table tr[data-task='t0']"),
    ("pairs", "#/round/r2/pairs", "#pairs-table tr[data-pair='0']"),
    ("compare", "#/round/r2/compare/r1", "#compare-table tr[data-outcome]"),
    ("tree", task_route("r2", "task/a"), "#node-detail[data-node]"),
    ("repo round", "#/round/repo", "#pass-rate-chart rect[data-mode]"),
    ("repo trees", "#/round/repo/trees", "#tree-list tr[data-task]"),
    ("repo results", "#/round/repo/results", "#results-table tr[data-task]"),
    ("repo pairs", "#/round/repo/pairs", "#pairs-table tr[data-pair]"),
    ("repo compare", "#/round/repo2/compare/repo", "#compare-table tr[data-outcome='fixed']"),
    ("repo tree", task_route("repo", dashboard_store.REPO_TASKS[0]), "#node-detail[data-node]"),
    ("campaign", "#/campaign/c", "#campaign-rounds tr[data-round='r2']"),
]
SHOTS = {("results", 1280): "dashboard-results.png",
         ("repo compare", 1280): "dashboard-compare.png",
         ("repo tree", 1280): "dashboard-repo-tree.png", ("campaign", 1280): "dashboard-campaign.png",
         ("rounds", 1280): "dashboard-rounds.png", ("tree", 390): "dashboard-phone.png"}


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make setup` (it installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield browser
        browser.close()


def new_page(browser, width: int = 1280, height: int = 900):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.add_init_script(RECORD_CSP)
    page.errors = []
    page.on("pageerror", lambda err: page.errors.append(str(err)))
    page.on("dialog", lambda dialog: (page.errors.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    return page


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The test store (function rounds, two repository rounds, a campaign, a hostile round) and a service."""
    root = tmp_path_factory.mktemp("dashboard")
    store = dashboard_store.build(root / "store")
    dashboard_store.repo_round(store, "repo2", solved=(1,), from_round="repo", at=500.0)
    dashboard_store.hostile(store)
    serve = Serve(store.root, root / "serve.log")
    yield serve
    serve.stop()


# ---- every view at three widths ------------------------------------------------------------------------------


def test_every_view_at_three_widths(browser, stored, tmp_path):
    problems = []
    for width in WIDTHS:
        page = new_page(browser, width)
        for view, route, drawn in VIEWS:
            page.goto(f"{stored.url}/{route}")
            page.locator(drawn).first.wait_for(timeout=15_000)
            page.wait_for_load_state("networkidle")
            for kind, found in (("overflow", page.evaluate(OVERFLOW, width >= 1280)),
                                ("contrast", page.evaluate(CONTRAST)),
                                ("csp", page.evaluate("window.__csp")), ("errors", page.errors)):
                problems += [f"{view} at {width}px: {kind}: {f}" for f in found]
            page.errors.clear()
            if (view, width) in SHOTS:
                shot = tmp_path / SHOTS[view, width]
                page.screenshot(path=str(shot), full_page=True)
                keep(shot, SHOTS[view, width])
        page.close()
    assert problems == []


def test_a_missing_resource_is_read_to_its_end(browser, stored):
    """The page asks for what may not exist yet (a round's evaluation summary before evaluate ran) and takes a
    404 as "not yet". It must still read that response: an unread one stays in flight, holding its connection
    until garbage collection, and the page never goes idle (the tiny-round test below waited on such 404s for
    18 s before this)."""
    page = new_page(browser)
    unfinished = {}
    page.on("response", lambda response: unfinished.__setitem__(id(response.request), response.url))
    page.on("requestfinished", lambda request: unfinished.pop(id(request), None))
    page.goto(f"{stored.url}/#/")
    page.locator("#rounds-table").wait_for()
    page.wait_for_load_state("networkidle")
    assert page.evaluate("""async () => {
        for (let i = 0; i < 3; i++) if (await api("/api/rounds/no-such-round/eval/summary") !== null) return false;
        return true;
    }""")
    page.wait_for_timeout(1000)
    assert list(unfinished.values()) == []


def test_each_view_shows_what_it_is_for(browser, stored, tmp_path):
    page = new_page(browser)
    page.goto(f"{stored.url}/#/round/r2/results")
    page.locator("#results-table tr[data-task]").first.wait_for()
    assert page.locator("#results-table tbody tr").count() == 10
    page.select_option("#results-table-block select[aria-label='status']", "unsolved")
    page.wait_for_function("() => document.querySelectorAll('#results-table tbody tr').length === 7")  # r2 solved t0-t2
    page.select_option("#results-table-block select[aria-label='arm']", "baseline")
    page.wait_for_function("() => document.querySelector('#results-caption').textContent.includes('baseline')")
    page.select_option("#results-table-block select[aria-label='status']", "solved")
    page.wait_for_function("() => document.querySelectorAll('#results-table tbody tr').length === 3")
    with page.expect_download() as download:
        page.click("#results-table-block button[data-export='csv']")
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0].startswith("task_id,") and len(lines) == 4 and download.value.suggested_filename == \
        "r2-baseline-zero_shot.csv"

    page.goto(f"{stored.url}/#/round/r2/pairs")
    page.locator("#pairs-table tr[data-pair='1']").wait_for()
    page.fill("#pairs-table-block input[type='search']", "task/b")
    page.wait_for_function("() => document.querySelectorAll('#pairs-table tbody tr').length === 1")
    page.click("#pairs-table details summary")
    shot = tmp_path / "dashboard-pairs.png"
    page.screenshot(path=str(shot), full_page=True)
    keep(shot, "dashboard-pairs.png")
    assert "return a + b" in page.locator("#pairs-table pre.chosen").inner_text()
    assert "return a * b" in page.locator("#pairs-table pre.rejected").inner_text()

    page.goto(f"{stored.url}/#/round/repo2/compare/repo")
    page.locator("#compare-counts button[data-outcome='fixed']").wait_for()
    counts = {o: page.get_attribute(f"#compare-counts button[data-outcome='{o}']", "data-count")
              for o in ("fixed", "broken", "both", "neither")}
    assert counts == {"fixed": "1", "broken": "1", "both": "0", "neither": "0"}
    page.click("#compare-counts button[data-outcome='broken']")
    page.wait_for_function("() => document.querySelectorAll('#compare-table tbody tr').length === 1")
    assert page.get_attribute("#compare-table tbody tr", "data-task") == dashboard_store.REPO_TASKS[0]

    page.goto(f"{stored.url}/{task_route('repo', dashboard_store.REPO_TASKS[0])}")
    page.locator("#tree-svg g.node").first.wait_for()
    page.click("#tree-svg g.node[data-node='1']")
    diff = page.locator("#node-diff").inner_text()
    assert "-    return len(items) - 1" in diff and diff.count("\n+") == 2  # the patch, not a diff of it
    page.click("#tree-svg g.node[data-node='3']")
    assert "No patch" in page.locator("#node-detail").inner_text() and "same as" not in \
        page.locator("#node-detail").inner_text()

    page.goto(f"{stored.url}/#/round/r2")
    page.locator("#learning-curve circle").first.wait_for()
    assert "not joined" in page.locator("#curve-note").inner_text()  # the repository rounds are another set
    assert page.locator("#learning-curve polyline").count() == 1 and page.locator("#learning-curve circle").count() == 2

    # keyboard: Tab from the page's start reaches the tree's nodes, Enter opens one
    page.goto(f"{stored.url}/{task_route('r2', 'task/a')}")
    page.locator("#node-detail[data-node='1']").wait_for()
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.matches('g.node[data-node=\"2\"]')"):
            break
    else:
        raise AssertionError("Tab never reached tree node 2")
    page.keyboard.press("Enter")
    page.locator("#node-detail[data-node='2']").wait_for(timeout=5_000)
    assert page.errors == [] and page.evaluate("window.__csp") == []
    page.close()


def test_a_hostile_task_id_and_round_name_cannot_run_script(browser, stored):
    page = new_page(browser)
    name, task = dashboard_store.HOSTILE_ROUND, dashboard_store.HOSTILE_TASK
    page.goto(f"{stored.url}/#/")
    page.locator("#rounds-table a", has_text=name).click()
    page.locator("#phase .badge").wait_for()
    assert name in page.locator("h1").inner_text()  # shown as the text it is
    assert "<script>" in page.locator("#round-message").inner_text()
    for tab in ("trees", "results", "pairs", "compare"):
        page.click(f"#tabs a[data-tab='{tab}']")
        page.wait_for_load_state("networkidle")
    page.click("#tabs a[data-tab='pairs']")
    page.locator("#pairs-table summary").first.click()
    page.click("#tabs a[data-tab='trees']")
    page.locator("#tree-list tbody tr").first.click()  # the row whose inline onclick ran code before
    page.locator("#node-detail[data-node]").wait_for()
    assert task in page.locator("h1").inner_text()
    for node in page.locator("#tree-svg g.node").all():
        node.click()
        answers = page.locator("#node-detail details summary")
        if answers.count():
            answers.last.click()
    page.locator("#node-pairs button").first.click()
    page.mouse.move(10, 10)
    assert page.evaluate(INJECTED) == {"pwned": None, "images": 0, "handlers": [], "csp": []}
    assert page.errors == []
    page.close()


# ---- the token -----------------------------------------------------------------------------------------------


def test_the_token_appears_in_no_url_and_no_log_line(browser, tmp_path):
    secret = "tok-3c1d9a7f0b2e4d6c8a1f3e5b7d9c0a2e"
    store = dashboard_store.build(tmp_path / "store")
    serve = Serve(store.root, tmp_path / "serve.log", env={"AGENTQ_SERVE_TOKEN": secret})
    try:
        page = new_page(browser)
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        page.on("websocket", lambda ws: urls.append(ws.url))
        page.goto(f"{serve.url}/#/round/r2")
        page.locator("#login[open]").wait_for(timeout=10_000)
        page.fill("#token", "wrong")
        page.click("#login button")
        page.locator("#login[open]").wait_for(timeout=10_000)  # refused: asked again
        page.fill("#token", secret)
        page.click("#login button")
        page.locator("#pass-rate-chart rect[data-arm='baseline']").wait_for(timeout=10_000)
        page.locator('#live[data-type="final"]').wait_for(timeout=10_000)  # the stream took the first message
        assert page.locator("#comparison").inner_text().count("no detectable difference") == 1
        page.click("#tabs a[data-tab='trees']")
        page.locator("#tree-list tr[data-task]").first.wait_for()
        with page.expect_download() as download:
            page.click("#tree-list-block button[data-export='json']")
        assert [t["task_id"] for t in json.loads(Path(download.value.path()).read_text())] == ["task/a", "task/b"]
        assert any("/events" in u for u in urls) and any("/api/rounds/r2/trajectories" in u for u in urls)
        assert [u for u in urls if secret in u] == []
        assert page.errors == [] and page.evaluate("window.__csp") == []
        page.close()
    finally:
        serve.stop()
    log = serve.log.read_text()
    assert '"path": "/api/rounds/r2"' in log and "stream opened" in log  # the requests were logged...
    assert secret not in log  # ...and the token with none of them


# ---- live rounds ---------------------------------------------------------------------------------------------


@pytest.fixture()
def live(tmp_path):
    store = dashboard_store.build(tmp_path / "store")
    serve = Serve(store.root, tmp_path / "serve.log")
    yield store, serve
    serve.stop()


def test_a_round_interrupted_then_run_again_shows_its_new_state_without_a_reload(browser, live):
    store, serve = live
    store.put_text("rounds/again/spec.yaml", dashboard_store.spec("again"))
    first = dashboard_store.runner(store, "again")
    first.start("collect")
    first.end("Interrupted", "KeyboardInterrupt: stopped by hand")
    page = new_page(browser)
    page.goto(f"{serve.url}/#/round/again")
    page.locator('#live[data-type="final"]').wait_for(timeout=10_000)
    assert page.locator("#phase").inner_text() == "Interrupted"
    assert "stopped by hand" in page.locator("#round-message").inner_text()
    page.evaluate("window.__same_page = true")

    time.sleep(0.01)
    second = dashboard_store.runner(store, "again")  # `agentq round run` again
    second.start("collect")
    page.wait_for_function("() => document.querySelector('#phase').textContent === 'Collecting'", timeout=10_000)
    assert page.locator("#round-message").count() == 0  # the old run's error is gone with it
    assert page.get_attribute("#steps-panel .step[data-step='collect']", "data-state") == "Running"
    dashboard_store.marker(store, "again", "collect-shard-0-of-1", {"tasks": 2}, time.time())
    second.done("collect")
    for step in ("preferences", "train", "merge", "evaluate"):
        second.start(step)
        dashboard_store.marker(store, "again", step, {}, time.time())
        second.done(step)
    second.end("Succeeded")
    page.wait_for_function("() => document.querySelector('#phase').textContent === 'Succeeded'", timeout=10_000)
    page.locator('#live[data-type="final"]').wait_for(timeout=10_000)
    states = page.eval_on_selector_all("#steps-panel .step", "els => els.map(e => e.dataset.state)")
    assert states == ["Succeeded"] * 5
    assert page.evaluate("window.__same_page") is True  # followed through the stream, never reloaded
    assert page.errors == []
    page.close()


def test_collect_progress_and_its_trees_arrive_while_the_page_watches(browser, live, tmp_path):
    store, serve = live
    store.put_text("rounds/growing/spec.yaml", dashboard_store.spec("growing"))
    dashboard_store.runner(store, "growing").start("collect")
    collector = dashboard_store.Collector(store, "growing", tmp_path / "local.jsonl", tasks=4)
    page = new_page(browser)
    page.goto(f"{serve.url}/#/round/growing/trees")
    page.locator("#collect-progress[data-trees='0']").wait_for(timeout=10_000)
    assert page.locator("[data-empty='tree-list']").inner_text() == "No trees collected yet."
    for i in range(1, 4):
        collector.add(dashboard_store.tree(f"task/live-{i}"))
        page.locator(f"#tree-list tr[data-task='task/live-{i}']").wait_for(timeout=10_000)
        page.locator(f"#collect-progress[data-trees='{i}']").wait_for(timeout=10_000)
    text = page.locator("#collect-progress").inner_text()
    assert "3 of 4 trees" in text and "6 samples" in text and "6 sandbox runs" in text
    assert page.get_attribute("#steps-panel .step[data-step='collect']", "data-state") == "Running"
    assert "3/4 trees" in page.locator("#steps-panel .step[data-step='collect']").inner_text()
    store.put_json("rounds/growing/progress/train.json", {"method": "dpo", "step": 1, "maxSteps": 2, "history": [
        {"step": 1, "loss": 0.69, "rewardAccuracy": 0.5}]})
    page.locator("#train-progress[data-step='1']").wait_for(timeout=10_000)
    assert "loss 0.690" in page.locator("#train-progress").inner_text()
    assert page.errors == []
    page.close()


# ---- a real round --------------------------------------------------------------------------------------------


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


def pick_tree(server: str, round_name: str) -> tuple[str, int, int]:
    """(task, a failed node, a node chosen in a pair) of the first tree that has both, from the API."""
    listing = json.loads(urllib.request.urlopen(f"{server}/api/rounds/{round_name}/trajectories").read())
    for entry in listing["items"]:
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


def test_watch_a_tiny_round_to_succeeded_and_open_a_tree(browser, round_dir, tmp_path):
    serve = Serve(round_dir / "store", tmp_path / "serve.log")
    runner = subprocess.Popen([sys.executable, "-m", "agentq.cli", "round", "run", str(round_dir / "dash.yaml"),
                               "--preset", "tiny"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=round_dir)
    try:
        page = new_page(browser, 1300)
        page.goto(serve.url + "/#/")
        row = page.locator('#rounds-table tr[data-round="dash"]')
        row.wait_for(timeout=60_000)  # the list polls: the round appears once its first step started
        row.click()
        page.locator("#steps-panel").wait_for()
        page.evaluate("window.__same_page = true")
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
        assert page.evaluate("window.__same_page") is True  # followed through the event stream, never reloaded
        page.locator("#pass-rate-chart rect[data-mode]").first.wait_for(timeout=30_000)
        page.wait_for_load_state("networkidle")
        shot = tmp_path / "dashboard-round.png"
        page.screenshot(path=str(shot), full_page=True)
        keep(shot, "dashboard-round.png")
        # one bar per mode for the base and one for the round (the tiny preset evaluates its base too)
        assert page.locator("#pass-rate-chart rect[data-mode]").count() == 6
        assert page.locator("#pass-rate-chart path.ci").count() == 6  # each with its interval
        # what the steps wrote while they ran: the shard's task count, training's steps
        progress = json.loads(urllib.request.urlopen(f"{serve.url}/api/rounds/dash/progress").read())
        assert (progress["collect"]["trees"], progress["collect"]["tasks"]) == (6, 6)
        assert progress["train"]["maxSteps"] == progress["train"]["step"] == 2 and progress["train"]["history"]

        # a tree with a wrong fix (a failing test to show) and a pair: which one depends on the scripted run
        task, failed, chosen = pick_tree(serve.url, "dash")
        page.click("#tabs a[data-tab='trees']")
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
        page.locator(f'#tree-svg g.node[data-node="{chosen}"]').focus()
        page.keyboard.press("Enter")  # a node opens from the keyboard too
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
        assert page.errors == [] and page.evaluate("window.__csp") == []
        page.close()
        assert runner.wait(timeout=60) == 0
    finally:
        if runner.poll() is None:
            runner.terminate()
            runner.wait(timeout=10)
        serve.stop()
