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


def personalized_pagerank(graph: nx.DiGraph, seeds: dict[str, float], candidates: list[str],
                          alpha: float = ALPHA) -> dict[str, float]:
    """PPR on the undirected import graph, restarting at `seeds` (weights need not sum to one).

    Power iteration in numpy over networkx's adjacency matrix (networkx's own pagerank needs scipy);
    a node without edges sends its mass back to the seeds."""
    seeds = {p: w for p, w in seeds.items() if p in graph and w > 0}
    if not seeds or graph.number_of_edges() == 0:
        return {p: seeds.get(p, 0.0) for p in candidates}
    nodes = list(graph)
    adjacency = nx.to_numpy_array(graph.to_undirected(as_view=True), nodelist=nodes, weight=None)
    degree = adjacency.sum(axis=1)
    restart = np.array([seeds.get(p, 0.0) for p in nodes])
    restart /= restart.sum()
    rank = restart.copy()
    for _ in range(MAX_ITERATIONS):
        spread = adjacency.T @ np.divide(rank, degree, out=np.zeros_like(rank), where=degree > 0)
        dangling = rank[degree == 0].sum()
        new = alpha * (spread + dangling * restart) + (1 - alpha) * restart
        if np.abs(new - rank).sum() < 1e-10:
            rank = new
            break
        rank = new
    index = {p: i for i, p in enumerate(nodes)}
    return {p: float(rank[index[p]]) if p in index else 0.0 for p in candidates}


def top_seeds(scores: dict[str, float], k: int = SEEDS) -> dict[str, float]:
    """The k best files of a ranking as restart weights 1/rank."""
    ranked = sorted(scores, key=lambda p: -scores[p])[:k]
    return {p: 1.0 / (i + 1) for i, p in enumerate(ranked)}


def files_of_tests(test_ids: list[str], files: dict[str, str]) -> list[str]:
    """Repository files named by pytest node ids (`tests/test_x.py::test_y[param]`), in order, once each."""
    out: list[str] = []
    for test_id in test_ids:
        match = _TEST_FILE.match(test_id.strip())
        if match and match.group(1) in files and match.group(1) not in out:
            out.append(match.group(1))
    return out


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
