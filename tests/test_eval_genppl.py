"""Generative perplexity: loopmdm AR evaluator and a local transformers GPT-2, retokenization, entropy, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import python_like_text
from loopmdm.errors import CheckpointError, ConfigError, DataError
from loopmdm.eval.genppl import (
    generative_perplexity,
    load_evaluator,
    read_samples,
    score_token_lists,
    unigram_entropy,
    windows,
)


def random_token_texts(tok, n: int, length: int, seed: int = 0) -> list[str]:
    """Texts of uniformly random (non-special, cleanly decodable) tokens of ``tok``."""
    ok = [
        i
        for i in range(tok.vocab_size)
        if i not in tok.special_ids and "\ufffd" not in tok.decode([i])
    ]
    rng = np.random.default_rng(seed)
    return [tok.decode(rng.choice(ok, size=length).tolist()) for _ in range(n)]


def test_unigram_entropy():
    assert unigram_entropy([]) == 0.0 and unigram_entropy([5, 5, 5]) == 0.0
    assert unigram_entropy([1, 2, 3, 4]) == pytest.approx(math.log(4))
    assert unigram_entropy([1, 1, 2, 2]) == pytest.approx(math.log(2))


def test_windows_score_every_token_once():
    ids = list(range(10, 33))
    for ctx in (1, 4, 7, 50):
        ws = windows(ids, 0, ctx)
        assert [t for _, tgt in ws for t in tgt] == ids
        for inp, tgt in ws:
            assert len(inp) == len(tgt) <= ctx
        assert ws[0][0][0] == 0  # the first window starts from BOS


def test_training_text_scores_far_better_than_random_tokens(tiny_ar_run):
    ev = load_evaluator(str(tiny_ar_run))
    assert type(ev).__name__ == "LoopMDMEvaluator"
    real = [python_like_text(i)[:300] for i in range(6)]
    good = generative_perplexity(real, ev)
    bad = generative_perplexity(random_token_texts(ev.tok, 6, 80), ev)
    assert good.samples == 6 and good.tokens > 100 and good.entropy > 1.0
    assert good.gen_ppl * 3 < bad.gen_ppl  # ~65 vs ~300 after 30 training steps
    assert bad.gen_ppl < 3 * ev.tok.vocab_size  # random text is not scored absurdly
    assert len(good.per_sample_ppl) == 6 and all(p > 1 for p in good.per_sample_ppl)


def test_padding_and_batching_do_not_change_scores(tiny_ar_run):
    ev = load_evaluator(f"loopmdm:{tiny_ar_run}")
    lists = [ev.encode(python_like_text(i)[:n]) for i, n in enumerate([40, 300, 120, 77])]
    assert any(len(x) > ev.context for x in lists)  # several windows
    a, b = score_token_lists(ev, lists, batch_size=1), score_token_lists(ev, lists, batch_size=8)
    assert a == pytest.approx(b, rel=1e-5)


def test_entropy_uses_generator_tokens_when_given(tiny_ar_run):
    ev = load_evaluator(str(tiny_ar_run))
    text = python_like_text(3)[:200]
    rep = generative_perplexity(
        [text, "value = value\n" * 12], ev, token_ids=[[1, 2, 3, 4], [7] * 9]
    )
    assert rep.entropy_tokens == "generator" and rep.per_sample_entropy == pytest.approx(
        [math.log(4), 0.0]
    )
    own = generative_perplexity([text, "value = value\n" * 12], ev)
    assert (
        own.entropy_tokens == "evaluator" and own.per_sample_entropy[1] < own.per_sample_entropy[0]
    )


def test_empty_inputs(tiny_ar_run):
    ev = load_evaluator(str(tiny_ar_run))
    with pytest.raises(DataError, match="no samples"):
        generative_perplexity([], ev)
    with pytest.raises(DataError, match="empty"):
        generative_perplexity(["", "  \n"], ev)
    rep = generative_perplexity(["", python_like_text(1)[:100]], ev)
    assert rep.samples == 1 and rep.empty_samples == 1


def test_mdm_checkpoint_is_refused_as_evaluator(tiny_run):
    with pytest.raises(ConfigError, match="not autoregressive"):
        load_evaluator(str(tiny_run))


def test_missing_hub_evaluator_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        load_evaluator("gpt2-large")
    with pytest.raises(ConfigError, match="empty"):
        load_evaluator("")


# --------------------------------------------------------------------------- transformers (GPT-2) from local folders


def save_gpt2(folder, tokenizer_object, vocab_size: int, bos: str, unk=None):
    """A randomly initialised tiny GPT-2 plus a fast tokenizer, saved like a Hub model."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object, bos_token=bos, eos_token=bos, unk_token=unk
    )
    hf_tok.save_pretrained(folder)
    torch.manual_seed(0)
    bos_id = tokenizer_object.token_to_id(bos)
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=48,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=bos_id,
        eos_token_id=bos_id,
    )
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    return folder


def test_hf_gpt2_evaluator_from_a_local_folder(tiny_ar_run, tmp_path, monkeypatch):
    """Retokenization through transformers; an untrained GPT-2 is ~uniform, so gen-PPL ~ its vocabulary size."""
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from loopmdm.checkpoint import load_model

    _, tok, _ = load_model(tiny_ar_run)
    folder = save_gpt2(tmp_path / "gpt2", tok.tok, tok.vocab_size, "<bos>")
    ev = load_evaluator(str(folder))
    assert type(ev).__name__ == "HFEvaluator" and ev.context == 48 and ev.bos_id == tok.bos_id
    texts = [python_like_text(i)[:400] for i in range(3)]  # > 48 tokens each: several windows
    rep = generative_perplexity(texts, ev)
    assert rep.tokens == sum(len(tok.encode(t)) for t in texts)
    assert 0.7 * tok.vocab_size < rep.gen_ppl < 1.3 * tok.vocab_size
    assert load_evaluator(f"hf:{folder}").name.startswith("hf:")


def test_evaluator_tokenizer_that_cannot_encode_the_samples(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    word = Tokenizer(
        models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2, "<s>": 3}, unk_token="[UNK]")
    )
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    ev = load_evaluator(str(save_gpt2(tmp_path / "word", word, 4, "<s>", unk="[UNK]")))
    assert generative_perplexity(["hello world"], ev).tokens == 2
    with pytest.raises(DataError, match=r"sample 1: .*unknown token \(e\.g\. 'café'\)"):
        generative_perplexity(["hello world", "hello café"], ev)
    # a BPE without an unknown token silently drops characters: caught by the round trip
    bpe = Tokenizer(models.BPE(vocab={"h": 0, "e": 1, "l": 2, "o": 3, "<s>": 4}, merges=[]))
    ev = load_evaluator(str(save_gpt2(tmp_path / "bpe", bpe, 5, "<s>")))
    with pytest.raises(DataError, match="losslessly.*'xyz'"):
        generative_perplexity(["hello xyz"], ev)


# --------------------------------------------------------------------------- sample files


def test_read_samples_formats(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two\nlines"}) + "\n"
    )
    assert read_samples(tmp_path / "a.jsonl") == ["one", "two\nlines"]
    (tmp_path / "b.json").write_text(
        json.dumps(
            {"results": [{"loops": 1, "samples": ["x", "y"]}, {"loops": 2, "samples": ["z"]}]}
        )
    )
    assert read_samples(tmp_path / "b.json") == ["x", "y", "z"]
    (tmp_path / "c.json").write_text(json.dumps([{"content": "p"}, {"content": "q"}]))
    assert read_samples(tmp_path / "c.json", text_field="content") == ["p", "q"]
    (tmp_path / "d.txt").write_text("first\n\nsecond\n")
    assert read_samples(tmp_path / "d.txt") == ["first", "second"]
    (tmp_path / "e.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataError, match="no string field 'text'"):
        read_samples(tmp_path / "e.jsonl")
    (tmp_path / "f.txt").write_text("\n \n")
    with pytest.raises(DataError, match="no samples"):
        read_samples(tmp_path / "f.txt")
    with pytest.raises(DataError, match="does not exist"):
        read_samples(tmp_path / "missing.jsonl")
