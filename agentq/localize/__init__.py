"""File localisation for repository-level repair: which files of a repository a failure report points at.

Each stage is a module of its own and measurable on its own (benchmarks/localization.py):
`lexical` (BM25 over a code-aware tokenisation), `dense` (all-MiniLM-L6-v2 int8 on onnxruntime),
`graph` (the import graph: Personalized PageRank seeded by the other retrievers, and the prior of the files
the failing tests import), `fusion` (Reciprocal Rank Fusion and a reranker learned on a corpus) and
`conformal` (temperature scaling and a split-conformal prediction set whose size decides how much code a
prompt gets). `pipeline` runs them in order over a `repo.Repository`.
"""
