"""Teachers: exact score definitions, checked on tiny randomly initialised models built here
(plumbing only: random weights say nothing about quality), and the cached LLM scorer against
its naive reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kadet.core.config import load_config
from kadet.kit.data import Document
from kadet.stages.label.teachers import (
    BM25Teacher, CrossEncoderTeacher, DenseTeacher, EnsembleTeacher, QueryLikelihoodTeacher, T5Teacher,
    build_teacher, znorm,
)

CORPUS = {
    "d1": Document("d1", "Aspirin reduces the risk of heart attack in adults.", "Aspirin"),
    "d2": Document("d2", "Vitamin D deficiency is linked to bone fractures.", "Vitamin D"),
    "d3": Document("d3", "Short sleep raises the risk of obesity in children.", "Sleep"),
}
QUERIES = ["does aspirin prevent heart attacks", "vitamin d and fractures"]
LISTS = [["d1", "d2", "d3"], ["d3", "d2"]]


def test_znorm():
    z = znorm(np.array([1.0, 2.0, 3.0]))
    assert z.mean() == pytest.approx(0) and z.std() == pytest.approx(1)
    assert znorm(np.array([5.0, 5.0])).tolist() == [0.0, 0.0]


class Fixed:
    def __init__(self, name, table):
        self.name, self.table = name, table

    def score(self, queries, doc_lists):
        return [np.array([self.table[(q, d)] for d in lst], dtype=float) for q, lst in zip(queries, doc_lists)]


def test_ensemble_is_weighted_sum_of_z_scores():
    a = Fixed("a", {("q", "x"): 1.0, ("q", "y"): 3.0, ("q", "z"): 2.0})
    b = Fixed("b", {("q", "x"): 10.0, ("q", "y"): 0.0, ("q", "z"): 20.0})
    ens = EnsembleTeacher({"a": a, "b": b}, {"a": 2.0, "b": 0.5})
    got = ens.score(["q"], [["x", "y", "z"]])[0]
    want = 2.0 * znorm(np.array([1.0, 3.0, 2.0])) + 0.5 * znorm(np.array([10.0, 0.0, 20.0]))
    assert got == pytest.approx(want)


@pytest.fixture(scope="module")
def minilm_tok_dir():
    from kadet.kit.models import resolve_model_path

    return resolve_model_path("all-MiniLM-L6-v2")


def _tiny_cross_encoder(path, tok_dir):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, num_labels=1)
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return tok


def test_cross_encoder_teacher_plumbing(tmp_path, minilm_tok_dir):
    from transformers import BertForSequenceClassification

    tok = _tiny_cross_encoder(tmp_path / "ce", minilm_tok_dir)
    t = build_teacher(f"cross-encoder:{tmp_path / 'ce'}", load_config(None, ["label.batch_size=2"]), CORPUS)
    assert isinstance(t, CrossEncoderTeacher)
    got = t.score(QUERIES, LISTS)
    model = BertForSequenceClassification.from_pretrained(tmp_path / "ce").eval()
    with torch.no_grad():
        enc = tok([QUERIES[1]] * 2, [CORPUS["d3"].full_text(), CORPUS["d2"].full_text()], padding=True,
                  return_tensors="pt")
        want = model(**enc).logits[:, 0].numpy()
    assert [len(g) for g in got] == [3, 2]
    assert got[1] == pytest.approx(want, abs=1e-5)


def test_a_huge_passage_is_cut_before_the_teachers_tokenizer(tmp_path, minilm_tok_dir, monkeypatch):
    """Was: the cross-encoder (and monoT5, ql) teacher tokenised a huge passage whole, then
    truncated. Now the tokenizer sees at most ``max_length x CHARS_PER_TOKEN`` characters a text
    and the score is the one of the passage's first tokens, as before."""
    from transformers import PreTrainedTokenizerBase

    from kadet.kit.encode import CHARS_PER_TOKEN

    _tiny_cross_encoder(tmp_path / "ce", minilm_tok_dir)
    seen, real = [], PreTrainedTokenizerBase.__call__

    def recording(self, text=None, text_pair=None, *args, **kwargs):
        seen.extend(len(t) for t in [*(text or []), *(text_pair or [])])
        return real(self, text, text_pair, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", recording)
    huge = "aspirin reduces the risk of heart attack in adults " * 60_000          # ~3 MB
    bound = 128 * CHARS_PER_TOKEN
    t = CrossEncoderTeacher(str(tmp_path / "ce"), {"big": Document("big", huge), "cut": Document("cut", huge[:bound])},
                            max_length=128)
    big, cut = t.score([QUERIES[0]], [["big", "cut"]])[0]
    assert max(seen) <= bound and big == pytest.approx(cut, abs=1e-5)


def _tiny_t5(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    words = sorted({w for text in [*QUERIES, *(d.full_text() for d in CORPUS.values())]
                    for w in text.replace(".", " ").split()} | {"Query:", "Document:", "Relevant:"})
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", "true", "false", "<extra_id_10>", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(vocab), d_model=32, d_ff=64, d_kv=16, num_layers=2, num_heads=2,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return vocab


@pytest.mark.parametrize("variant", ["monot5", "rankt5"])
def test_t5_teachers_plumbing(tmp_path, variant):
    from transformers import T5ForConditionalGeneration

    vocab = _tiny_t5(tmp_path / "t5")
    t = build_teacher(f"{variant}:{tmp_path / 't5'}", load_config(None, ["label.batch_size=2"]), CORPUS)
    assert isinstance(t, T5Teacher)
    got = t.score(QUERIES, LISTS)
    model = T5ForConditionalGeneration.from_pretrained(tmp_path / "t5").eval()
    text = t._input(QUERIES[0], CORPUS["d2"].full_text())
    ids = torch.tensor([[vocab.get(w, 2) for w in text.split()]])
    with torch.no_grad():
        logits = model(input_ids=ids, decoder_input_ids=torch.zeros((1, 1), dtype=torch.long)).logits[0, 0]
    if variant == "monot5":
        want = torch.log_softmax(logits[[vocab["true"], vocab["false"]]], dim=0)[0].item()
        assert all((g <= 0).all() for g in got)  # log-probabilities
    else:
        want = logits[vocab["<extra_id_10>"]].item()
    assert got[0][1] == pytest.approx(want, abs=1e-4)


def test_dense_and_bm25_teachers_match_retrievers(tmp_path):
    from kadet.kit.encode import Encoder
    from kadet.kit.search import BM25Retriever, DenseRetriever

    enc = Encoder("all-MiniLM-L6-v2", device="cpu")
    dense = DenseTeacher(enc, CORPUS).score(QUERIES, LISTS)
    run = DenseRetriever(enc, CORPUS).search({"q": QUERIES[0]}, 3)["q"]
    assert dense[0] == pytest.approx([run[d] for d in LISTS[0]], abs=1e-5)
    bm = BM25Retriever(CORPUS)
    scores = BM25Teacher(bm).score(QUERIES, LISTS)
    run = bm.search({"q": QUERIES[1]}, 3)["q"]
    assert scores[1] == pytest.approx([run.get(d, 0.0) for d in LISTS[1]])
    assert scores[1][1] > 0 and scores[1][0] == 0


def test_query_likelihood_cached_equals_naive(shared_work):
    cfg = load_config(None, [f"work_dir={shared_work}"])  # shared: the GGUF is dequantised once
    ql = QueryLikelihoodTeacher("smollm2", CORPUS, cfg.cache_dir, batch_size=3)
    pairs = [(q, CORPUS[d].full_text()) for q, lst in zip(QUERIES, LISTS) for d in lst]
    pairs += [("a much longer query about aspirin and the risk of heart attacks in older adults", CORPUS["d1"].full_text())]
    cached, naive = ql.score_pairs(pairs), ql.score_pairs_naive(pairs)
    assert np.abs(cached - naive).max() < 1e-4
    assert np.all(cached < 0)
    # the relevant passage makes its query likelier than an unrelated one
    s = ql.score(["does aspirin prevent heart attacks"], [["d1", "d3"]])[0]
    assert s[0] > s[1]
