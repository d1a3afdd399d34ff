"""BM25 over whole files (bm25s), with the code-aware tokens of `tokens`: the baseline every stage is measured
against."""

from __future__ import annotations

import bm25s
import numpy as np

from agentq.localize.tokens import code_tokens, document_tokens


class BM25Index:
    """One index per repository; `scores` gives every candidate file a BM25 score for a query."""

    def __init__(self, files: dict[str, str], k1: float = 1.2, b: float = 0.75):
        self.paths = list(files)
        docs = [document_tokens(p, files[p]) or ["<empty>"] for p in self.paths]
        self._bm25 = bm25s.BM25(k1=k1, b=b)
        self._bm25.index(docs, show_progress=False)
        self._vocab = self._bm25.vocab_dict

    def scores(self, query: str) -> dict[str, float]:
        terms = [t for t in code_tokens(query) if t in self._vocab]
        if not terms:
            return dict.fromkeys(self.paths, 0.0)
        ids = [self._vocab[t] for t in terms]
        values = np.asarray(self._bm25.get_scores(ids), dtype=float)
        return dict(zip(self.paths, values.tolist(), strict=True))
