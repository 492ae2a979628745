"""Datasets and tokenizers through Hugging Face: local files through `datasets` give the built-in pipeline's
packed rows; named / Hub datasets and tokenizers fail fast and clearly offline; the mask-token rules."""

import json
import time

import numpy as np
import pytest

pytest.importorskip("datasets")

from conftest import python_like_text  # noqa: E402
from loopmdm.config import DataConfig  # noqa: E402
from loopmdm.data import load_tokenizer, prepare_data  # noqa: E402
from loopmdm.data.hf import (  # noqa: E402
    HF_DATASETS,
    collect,
    lm1b_detokenize,
    max_read_bytes,
    source_fingerprint,
)
from loopmdm.data.hub import tokenizer_from_hub  # noqa: E402
from loopmdm.errors import DataError  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _same(a, b):
    assert a.train.shape == b.train.shape and np.array_equal(a.train, b.train)
    assert np.array_equal(a.val, b.val)
    assert a.tokenizer.tok.get_vocab() == b.tokenizer.tok.get_vocab()


def test_json_through_datasets_matches_builtin(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(
        "".join(json.dumps({"text": python_like_text(i), "id": i}) + "\n" for i in range(30))
    )
    kw = dict(val_fraction=0.2, cache_dir=str(tmp_path / "cache"))
    builtin = prepare_data(DataConfig(source=str(path), **kw), 320, 32)
    via_hf = prepare_data(DataConfig(source=f"hf:json:{path}", **kw), 320, 32)
    _same(builtin, via_hf)
    assert via_hf.stats["train_docs"] + via_hf.stats["val_docs"] == 30


def test_text_folder_through_datasets_matches_builtin(tiny_corpus, tmp_path):
    kw = dict(val_fraction=0.2, cache_dir=str(tmp_path / "cache"))
    _same(
        prepare_data(DataConfig(source=str(tiny_corpus), **kw), 320, 32),
        prepare_data(DataConfig(source=f"hf:text:{tiny_corpus}", **kw), 320, 32),
    )


def test_text_field_and_cache_key(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"body": python_like_text(i)}) + "\n" for i in range(6)))
    cfg = DataConfig(source=f"hf:json:{path}", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match="no column 'text'.*body"):
        prepare_data(cfg, 320, 32)
    before = source_fingerprint(f"json:{path}", cfg)
    path.write_text(path.read_text() + json.dumps({"body": "more"}) + "\n")
    assert source_fingerprint(f"json:{path}", cfg) != before  # edited files are re-tokenised


def test_named_registry_matches_paper():
    assert (
        HF_DATASETS.get("lm1b").seq_len == 128
        and HF_DATASETS.get("lm1b").tokenizer == "bert-base-uncased"
    )
    for name in ("openwebtext", "fineweb-edu"):
        spec = HF_DATASETS.get(name)
        assert spec.seq_len == 1024 and spec.tokenizer == "gpt2" and spec.streaming
        assert max_read_bytes(spec, DataConfig()) == spec.default_max_bytes
        assert max_read_bytes(spec, DataConfig(max_train_bytes=1000, val_fraction=0.5)) >= 2000


def test_stream_cap_and_detokenizer():
    texts = iter(["a" * 10, "", None, "b" * 10, "c" * 10, "d" * 10])
    report = collect(texts, "x:train", max_bytes=25)
    # stops at 30 >= 25
    assert [d.name for d in report.documents] == ["x:train:0", "x:train:3", "x:train:4"]
    assert lm1b_detokenize("it 's a test , is n't it ?") == "it's a test, isn't it?"


@pytest.mark.parametrize(
    "name, match",
    [
        ("no-such-set", "unknown dataset hf:no-such-set.*lm1b"),
        ("lm1b", "not in the local datasets cache.*HF_HUB_OFFLINE"),
        ("someone/corpus:en", "not in the local datasets cache"),
        ("json:/nonexistent/*.jsonl", "matches no files"),
    ],
)
def test_unknown_or_unreachable_datasets_fail_fast(tmp_path, name, match):
    start = time.monotonic()
    with pytest.raises(DataError, match=match):
        prepare_data(DataConfig(source=f"hf:{name}", cache_dir=str(tmp_path / "cache")), 320, 32)
    assert time.monotonic() - start < 30  # a clear error, never a hang on the network


def test_hub_tokenizer_offline_is_a_clear_error():
    start = time.monotonic()
    with pytest.raises(DataError, match="not in the local Hugging Face cache.*HF_HUB_OFFLINE=1"):
        load_tokenizer("bert-base-uncased")
    assert time.monotonic() - start < 30


def _tokenizer_without_mask(folder, name="tokenizer.json"):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate("abcdefgh ")}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    folder.mkdir(parents=True)
    tok.save(str(folder / name))
    return folder


def test_tokenizer_without_mask_token(tmp_path):
    plain = _tokenizer_without_mask(tmp_path / "plain")
    with pytest.raises(DataError, match=r"no mask token.*add_special_tokens\(\{'mask_token'"):
        load_tokenizer(str(plain))
    # the documented GPT-2 case: MDLM appends a mask token (vocabulary + 1)
    gpt2 = tokenizer_from_hub(str(_tokenizer_without_mask(tmp_path / "gpt2")))
    assert gpt2.vocab_size == 11 and gpt2.tok.id_to_token(gpt2.mask_id) == "<|mask|>"
    # explicit opt-in for any tokenizer
    assert tokenizer_from_hub(str(plain), add_mask=True).mask_id == 10


def test_vocab_file_folder_through_transformers(tmp_path):
    pytest.importorskip("transformers")
    folder = tmp_path / "wordpiece"
    folder.mkdir()
    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "def",
        "return",
        "alpha",
        "beta",
        "(",
        ")",
        ":",
    ]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True})
    )
    tok = load_tokenizer(str(folder))
    assert tok.mask_id == 4 and tok.pad_id == 0 and tok.bos_id == 2 and tok.eos_id == 3
    assert tok.encode("def alpha(beta):") == [5, 7, 9, 8, 10, 11]
