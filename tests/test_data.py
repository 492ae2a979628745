"""Data: built-in stdlib corpus, local files / folders / JSONL, stable split, packing, caching."""

import json

import numpy as np
import pytest

from loopmdm.config import DataConfig
from loopmdm.data import pack, prepare_data, read_documents, split_documents, stable_fraction
from loopmdm.errors import DataError


def test_stdlib_corpus_is_deterministic_and_split_stably():
    r1, r2 = read_documents(DataConfig()), read_documents(DataConfig())
    names = [d.name for d in r1.documents]
    assert names == [d.name for d in r2.documents] and names == sorted(names)
    assert len(names) > 200 and all(n.endswith(".py") and "site-packages" not in n for n in names)
    train, val = split_documents(r1.documents, 0.05)
    assert {d.name for d in val} == {d.name for d in r1.documents if stable_fraction(d.name) < 0.05}
    assert not {d.name for d in train} & {d.name for d in val}
    assert 0.02 < len(val) / len(names) < 0.09


def test_pack_wraps_with_separators():
    rows = pack([[5, 6, 7], [8, 9]], seq_len=4, bos_id=1, eos_id=2)
    assert rows.tolist() == [[1, 5, 6, 7], [2, 1, 8, 9]]  # the final eos is the dropped remainder
    assert rows.dtype == np.int32


def test_prepare_data_local_folder_and_cache(tiny_corpus, tmp_path):
    cfg = DataConfig(source=str(tiny_corpus), val_fraction=0.2, cache_dir=str(tmp_path))
    d1 = prepare_data(cfg, vocab_size=320, seq_len=32)
    assert d1.train.shape[1] == 32 and len(d1.val) > 0
    assert d1.tokenizer.mask_id is not None and d1.tokenizer.bos_id is not None
    assert d1.train.max() < d1.tokenizer.vocab_size
    assert (tmp_path / "data").is_dir()
    d2 = prepare_data(cfg, vocab_size=320, seq_len=32)  # from the cache
    np.testing.assert_array_equal(d1.train, d2.train)
    text = (tiny_corpus / "mod_00.py").read_text()
    assert d1.tokenizer.decode(d1.tokenizer.encode(text)) == text
    literal = 'm = "<mask>"  # <eos> <pad>'  # text spelling a special token stays text
    ids = d1.tokenizer.encode(literal)
    assert not set(ids) & d1.tokenizer.special_ids and d1.tokenizer.decode(ids) == literal


def test_jsonl_and_single_file(tmp_path):
    j = tmp_path / "d.jsonl"
    j.write_text("\n".join(json.dumps({"text": f"document number {i} " * 20}) for i in range(30)))
    r = read_documents(DataConfig(source=str(j)))
    assert len(r.documents) == 30
    f = tmp_path / "big.txt"
    f.write_text("".join(f"line {i}\n" for i in range(1000)))
    assert len(read_documents(DataConfig(source=str(f))).documents) == 5  # 200-line chunks


def test_bad_data(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_documents(DataConfig(source=str(tmp_path / "missing")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no text found"):
        read_documents(DataConfig(source=str(empty)))
    (empty / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(DataError, match="binary"):
        read_documents(DataConfig(source=str(empty), bad_files="error"))
    (empty / "ok.txt").write_text("hello world\n" * 10)
    r = read_documents(DataConfig(source=str(empty)))
    assert len(r.documents) == 1 and len(r.skipped) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(DataError, match=":2 is not valid JSON"):
        read_documents(DataConfig(source=str(bad)))
    with pytest.raises(DataError, match="no string field 'body'"):
        read_documents(DataConfig(source=str(bad), text_field="body"))
