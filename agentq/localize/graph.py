"""Evidence from the import graph: Personalized PageRank seeded by the retrievers, and the test-import prior.

PPR spreads a retriever's belief along imports in both directions (a file that the top hits import, or that
imports them, is likely involved too); it re-ranks, it cannot find a file nothing points near. The test prior
scores the files the failing tests import (1 for a direct import, 1/2 one import further, e.g. through a
package's `__init__` re-export): a failing test exercises the code it imports.
"""

from __future__ import annotations

import re

import networkx as nx
import numpy as np

ALPHA = 0.85
SEEDS = 5
MAX_ITERATIONS = 200
_TEST_FILE = re.compile(r"([\w./-]+\.py)(?:::[\w\[\]/.:-]*)?")
_UNITTEST_ID = re.compile(r"^\w+ \(([\w.]+)\)")


def personalized_pagerank(graph: nx.DiGraph, seeds: dict[str, float], candidates: list[str],
                          alpha: float = ALPHA) -> dict[str, float]:
    """PPR on the undirected import graph, restarting at `seeds` (weights need not sum to one).

    Power iteration in numpy over the graph's edge list (networkx's own pagerank needs scipy, and a dense
    adjacency matrix of a Django-sized tree is 160 MB per query); a node without edges sends its mass back to
    the seeds."""
    seeds = {p: w for p, w in seeds.items() if p in graph and w > 0}
    if not seeds or graph.number_of_edges() == 0:
        return {p: seeds.get(p, 0.0) for p in candidates}
    nodes, src, dst = _undirected_edges(graph)
    degree = np.bincount(src, minlength=len(nodes)).astype(float)
    restart = np.array([seeds.get(p, 0.0) for p in nodes])
    restart /= restart.sum()
    rank = restart.copy()
    for _ in range(MAX_ITERATIONS):
        share = np.divide(rank, degree, out=np.zeros_like(rank), where=degree > 0)
        spread = np.bincount(dst, weights=share[src], minlength=len(nodes))
        dangling = rank[degree == 0].sum()
        new = alpha * (spread + dangling * restart) + (1 - alpha) * restart
        if np.abs(new - rank).sum() < 1e-10:
            rank = new
            break
        rank = new
    index = {p: i for i, p in enumerate(nodes)}
    return {p: float(rank[index[p]]) if p in index else 0.0 for p in candidates}


def _undirected_edges(graph: nx.DiGraph) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Nodes and both directions of each undirected edge (a->b and b->a count once), as index arrays."""
    nodes = list(graph)
    index = {p: i for i, p in enumerate(nodes)}
    pairs = {(min(index[a], index[b]), max(index[a], index[b])) for a, b in graph.edges if a != b}
    edges = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    return nodes, np.concatenate([edges[:, 0], edges[:, 1]]), np.concatenate([edges[:, 1], edges[:, 0]])


def top_seeds(scores: dict[str, float], k: int = SEEDS) -> dict[str, float]:
    """The k best files of a ranking as restart weights 1/rank."""
    ranked = sorted(scores, key=lambda p: -scores[p])[:k]
    return {p: 1.0 / (i + 1) for i, p in enumerate(ranked)}


def files_of_tests(test_ids: list[str], files: dict[str, str]) -> list[str]:
    """Repository files named by pytest node ids (`tests/test_x.py::test_y[param]`) or unittest-style ids
    (`test_y (package.module.Class)`, Django's runner; the module is looked up as a file, also under
    `tests/`), in order, once each."""
    out: list[str] = []
    for test_id in test_ids:
        for path in _test_paths(test_id.strip()):
            if path in files and path not in out:
                out.append(path)
                break
    return out


def _test_paths(test_id: str) -> list[str]:
    match = _TEST_FILE.match(test_id)
    if match:
        return [match.group(1)]
    dotted = _UNITTEST_ID.search(test_id)
    if not dotted:
        return []
    parts = dotted.group(1).split(".")
    modules = ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]
    return [f"{root}{m}{suffix}" for m in modules for root in ("", "tests/") for suffix in (".py", "/__init__.py")]


def import_prior(graph: nx.DiGraph, tests: list[str], candidates: list[str]) -> dict[str, float]:
    """1 for files a failing test imports directly, 1/2 for files those import (max over tests)."""
    prior = dict.fromkeys(candidates, 0.0)
    for test in tests:
        if test not in graph:
            continue
        for target, hops in nx.single_source_shortest_path_length(graph, test, cutoff=2).items():
            if hops and target in prior:
                prior[target] = max(prior[target], 1.0 / hops)
    return prior
