"""Tree-event latency: how long after collect writes a tree does the dashboard's event stream announce it?

A real `agentq serve` watches a store while this process plays a collecting round the way agentq/collect.py
writes one (each finished tree appended to a local file, the file published whole to the shard's partial
key, every tree about `--tree-kb` KB as real ones with their prompts are). A WebSocket client on the round's
stream notes when the `trees` event naming each tree arrives. Latency is that arrival minus the moment the
publish returned (one clock: both happen in this process). Trees are written at irregular gaps (seeded) so
the writes do not fall in step with the poll.

Each `--intervals` value is one service started with that `--poll-interval` (0.25 s is the default; 1.0 s
was the old one), measured in the same run, so the ratio between them is a like-for-like figure. The
load average is printed beside the figures: on a busy machine they are upper bounds.

    python benchmarks/dashboard_latency.py            # a table, then one JSON object
    python benchmarks/dashboard_latency.py --json     # the JSON object only
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the store helpers the dashboard tests use

import dashboard_store  # noqa: E402
from dashboard_page import free_port, wait_for  # noqa: E402
from websockets.sync.client import connect  # noqa: E402


def big_tree(task_id: str, kb: int) -> dict[str, Any]:
    """A tree of the test shape whose nodes carry prompts, so the file grows as a real shard file does."""
    record = dashboard_store.tree(task_id)
    filler = "x" * max(0, kb * 1024 // len(record["nodes"]))
    for node in record["nodes"][1:]:
        node["prompt"] = [{"role": "user", "content": filler}]
    return record


def measure(interval: float, trees: int, kb: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="agentq-latency-") as tmp:
        root = Path(tmp)
        store = dashboard_store.FileStore(root / "store")
        store.put_text("rounds/live/spec.yaml", dashboard_store.spec("live"))
        dashboard_store.runner(store, "live").start("collect")
        collector = dashboard_store.Collector(store, "live", root / "local.jsonl", tasks=trees)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "agentq.cli", "serve", "--store", str(store.root), "--port",
                                   str(port), "--poll-interval", str(interval), "--log-level", "warning"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        arrived: dict[str, float] = {}
        try:
            wait_for(f"http://127.0.0.1:{port}/healthz", server)
            with connect(f"ws://127.0.0.1:{port}/api/rounds/live/events") as ws:
                assert json.loads(ws.recv())["type"] == "snapshot"

                def listen() -> None:
                    try:
                        for message in ws:
                            event = json.loads(message)
                            if event["type"] == "trees":
                                now = time.monotonic()
                                for row in event["data"]["added"]:
                                    arrived.setdefault(row["task_id"], now)
                    except Exception:  # the socket closes when the measurement ends
                        return

                thread = threading.Thread(target=listen, daemon=True)
                thread.start()
                rng = random.Random(seed)
                written: dict[str, float] = {}
                for i in range(trees):
                    time.sleep(rng.uniform(0.2, 0.7))
                    task = f"task/{i}"
                    record = big_tree(task, kb)
                    collector.add(record)
                    written[task] = time.monotonic()
                deadline = time.monotonic() + 10 + 4 * interval
                while len(arrived) < trees and time.monotonic() < deadline:
                    time.sleep(0.05)
                ws.close()
                thread.join(timeout=5)
        finally:
            server.terminate()
            server.wait(timeout=10)
    latencies = sorted(arrived[t] - written[t] for t in written if t in arrived)
    missing = trees - len(latencies)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else None
    return {"poll_interval_s": interval, "trees": trees, "arrived": len(latencies), "missing": missing,
            "median_s": round(statistics.median(latencies), 3) if latencies else None,
            "p95_s": round(p95, 3) if p95 is not None else None,
            "max_s": round(latencies[-1], 3) if latencies else None,
            "within_1s": sum(x <= 1.0 for x in latencies)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=30, help="trees written per service")
    parser.add_argument("--tree-kb", type=int, default=50, help="size of each tree's record")
    parser.add_argument("--intervals", default="0.25,1.0", help="poll intervals to measure, the first is the default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    rows = [measure(float(x), args.trees, args.tree_kb, args.seed) for x in args.intervals.split(",")]
    result = {"benchmark": "dashboard_latency", "rows": rows, "cpus": os.cpu_count(),
              "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()], "tree_kb": args.tree_kb}
    if len(rows) > 1 and rows[0]["median_s"] and rows[1]["median_s"]:
        result["median_ratio_vs_second"] = round(rows[1]["median_s"] / rows[0]["median_s"], 2)
    result["default_within_1s"] = rows[0]["missing"] == 0 and rows[0]["max_s"] is not None and rows[0]["max_s"] <= 1.0
    if not args.json:
        print(f"{'poll s':>7} {'trees':>6} {'median s':>9} {'p95 s':>7} {'max s':>7} {'<=1 s':>6}")
        for r in rows:
            print(f"{r['poll_interval_s']:>7} {r['arrived']:>6} {r['median_s']!s:>9} {r['p95_s']!s:>7} "
                  f"{r['max_s']!s:>7} {r['within_1s']:>6}")
        print(f"load average {result['loadavg_before']} -> {result['loadavg_after']} on {result['cpus']} CPUs")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
