"""An optional cross-encoder stage: a sequence-pair classifier reads (report, file) together and scores the pair.

Bi-encoders (`dense`) embed the report and a file apart; a cross-encoder attends across both, which ranks
better and costs a forward pass per pair, so it rescores only the CROSS_TOP files that the text retrievers
fused by RRF rank best; the rest score below every rescored file (their order among themselves is RRF's).
The passage is the file's path and its head (the tokenizer truncates the pair to MAX_TOKENS, the report
first at most half of it).

The model is loaded from a local directory only (`AutoModelForSequenceClassification` and its tokenizer, as
`save_pretrained` writes them): nothing is fetched from a hub. No cross-encoder ships in a PyPI package
(flashrank, for one, downloads its models at run time), so none is loaded by default. A model with one label
scores by its logit, one with two by the second label's logit minus the first's (MS MARCO style
relevant/not-relevant heads).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CROSS_TOP = 20
MAX_TOKENS = 512
HEAD_CHARS = 2_000
BATCH = 8


class CrossEncoderError(RuntimeError):
    pass


class CrossEncoder:
    """`scores(query, passages)` -> one relevance score per passage (higher is more relevant)."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise CrossEncoderError(f"{directory}: expected a transformers sequence-classification model "
                                    "directory (config.json, weights and tokenizer files)")
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = directory.name
        self._torch = torch
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            self._model = AutoModelForSequenceClassification.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError) as err:
            raise CrossEncoderError(f"{directory}: not a loadable sequence-classification model ({err})") from None
        self._model.eval()
        if self._model.config.num_labels not in (1, 2):
            raise CrossEncoderError(f"{directory}: a cross-encoder has 1 or 2 labels, this model has "
                                    f"{self._model.config.num_labels}")

    def scores(self, query: str, passages: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(passages), BATCH):
            batch = passages[start : start + BATCH]
            encoded = self._tokenizer([query] * len(batch), batch, truncation="longest_first", padding=True,
                                      max_length=MAX_TOKENS, return_tensors="pt")
            with self._torch.no_grad():
                logits = self._model(**encoded).logits.float().numpy()
            out.append(logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0])
        return np.concatenate(out) if out else np.zeros(0)


def passage(path: str, text: str) -> str:
    return f"{path}\n{text[:HEAD_CHARS]}"


def cross_scores(encoder: CrossEncoder, query: str, files: dict[str, str], first: dict[str, float],
                 top: int = CROSS_TOP) -> dict[str, float]:
    """The encoder's scores for the `top` files of the `first` ranking; every other file scores below the
    lowest of them, in `first`'s order (so rank fusion keeps them behind)."""
    ranked = sorted(first, key=lambda p: (-first[p], p))
    head, tail = ranked[:top], ranked[top:]
    values = encoder.scores(query, [passage(p, files[p]) for p in head])
    out = dict(zip(head, values.tolist(), strict=True))
    floor = (min(out.values()) if out else 0.0) - 1.0
    out |= {p: floor - i / max(len(tail), 1) for i, p in enumerate(tail)}
    return out
