"""The optional cross-encoder stage, on a tiny random BERT pair classifier saved here (no hub): loading, scoring
against the model's own forward pass, rescoring only the best text hits, and the benchmark's row for it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agentq.localize.cross import CrossEncoder, CrossEncoderError, cross_scores, passage
from agentq.localize.pipeline import Localizer
from tests.test_localization_bench import load_bench
from tests.test_localize import FILES
from tests.test_repo_tasks import make_sdist
from tests.test_swebench_lite import instance, tree

WORDS = ["the", "colour", "hex", "string", "is", "wrong", "pkg", "http", "py", "def", "return", "raw", "parse",
         "response", "util", "strip", "header", "core", "value", "computed", "x", "/", ".", "(", ")", ":", "_"]


def tiny_cross_encoder(directory, num_labels: int = 1):
    """A 1-layer BERT sequence-pair classifier with a WordPiece vocabulary of the words above, saved as
    `save_pretrained` writes a real one."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=512, num_labels=num_labels)
    model = BertForSequenceClassification(config)
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cross")
    tiny_cross_encoder(directory)
    return directory


def test_a_local_cross_encoder_scores_pairs_as_its_model_does(model_dir, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    encoder = CrossEncoder(model_dir)
    passages = ["pkg/http.py\ndef parse_response(raw)", "pkg/colors.py\ndef rgb_to_hex", "x"] * 4  # > one batch
    scores = encoder.scores("the colour hex string is wrong", passages)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    batch = AutoTokenizer.from_pretrained(model_dir)(["the colour hex string is wrong"] * len(passages), passages,
                                                     padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits[:, 0].numpy()
    assert scores.shape == (12,) and np.allclose(scores, expected, atol=1e-5)
    assert len(set(scores[:3].tolist())) == 3  # the pairs differ, so do their scores
    two = tmp_path / "two"
    two_model = tiny_cross_encoder(two, num_labels=2).eval()
    with torch.no_grad():
        logits = two_model(**batch).logits.numpy()
    assert np.allclose(CrossEncoder(two).scores("the colour hex string is wrong", passages),
                       logits[:, 1] - logits[:, 0], atol=1e-5)


def test_a_directory_that_is_no_model_is_one_clear_error(tmp_path):
    with pytest.raises(CrossEncoderError, match="expected a transformers sequence-classification model"):
        CrossEncoder(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CrossEncoderError, match="not a loadable sequence-classification model"):
        CrossEncoder(tmp_path)


def test_the_stage_rescores_only_the_best_text_hits(model_dir, tmp_path):
    for path, text in FILES.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    from agentq.localize.repo import Repository

    repo = Repository.scan(tmp_path)
    encoder = CrossEncoder(model_dir)
    first = {p: float(i) for i, p in enumerate(repo.candidates)}  # the last candidate ranks first
    out = cross_scores(encoder, "hex", {p: repo.files[p] for p in repo.candidates}, first, top=3)
    head = sorted(first, key=lambda p: -first[p])[:3]
    assert np.allclose([out[p] for p in head], encoder.scores("hex", [passage(p, repo.files[p]) for p in head]))
    tail = [p for p in repo.candidates if p not in head]
    assert max(out[p] for p in tail) < min(out[p] for p in head)
    assert sorted(tail, key=lambda p: -out[p]) == sorted(tail, key=lambda p: -first[p])  # first's order kept
    stages = Localizer(repo, cross_encoder=encoder).evidence("the colour hex string is wrong", [])
    assert set(stages) == {"bm25", "cross", "ppr", "prior"} and set(stages["cross"]) == set(repo.candidates)


def test_the_benchmark_measures_the_cross_encoder_stage(model_dir, tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    records = []
    for n, (repo, package) in enumerate([("pallets/flask", "flask"), ("psf/requests", "requests"),
                                         ("mwaskom/seaborn", "seaborn")]):
        make_sdist(cache, package, tree(package) | {f"{package}/new.py": ""}, "1.0.0")
        records += [instance(repo, 10 * n + i, "1.0", package) for i in range(2)]
    lite = tmp_path / "lite.json"
    lite.write_text(json.dumps(records))
    assert load_bench().main(["--lite", str(lite), "--lite-cache", str(cache), "--offline", "--no-dense",
                              "--cross-encoder", str(model_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["stage"] for r in result["rows"]] == ["BM25 only", "+ cross-encoder", "+ PPR", "+ test prior",
                                                  "+ reranker (no test prior)", "cross-encoder alone",
                                                  "test prior alone"]
    assert all(r["tasks"] == 6 for r in result["rows"])
    assert load_bench().main(["--lite", str(lite), "--lite-cache", str(cache), "--offline", "--no-dense",
                              "--cross-encoder", str(tmp_path)]) == 2
    assert "--cross-encoder:" in capsys.readouterr().err
