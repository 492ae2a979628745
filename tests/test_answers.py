"""Prompt / answer and infill data (``data.format = "answers"``), the conditional objective on it, deep
supervision, and exact-match evaluation (``loopmdm eval --metric exact-match``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import run_cli
from loopmdm.config import DataConfig, DiffusionConfig
from loopmdm.data import prepare_data
from loopmdm.data.answers import AnswerRow, char_tokenizer, encode_rows, read_rows
from loopmdm.diffusion import make_objective
from loopmdm.errors import ConfigError, DataError
from loopmdm.eval.exact_match import group_values, score_predictions
from loopmdm.model import LoopMDM, ModelConfig


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def sum_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = (int(v) for v in rng.integers(0, 10, 2))
        out.append({"prompt": f"{a}+{b}=", "answer": str((a + b) % 10), "depth": int(a > 4)})
    return out


def tiny_model(vocab_size: int, max_seq_len: int = 10, **kw) -> LoopMDM:
    """A 3-layer LoopMDM of width 32 (n_h / n_m / n_o = 1 / 1 / 1) for the tests of this file."""
    cfg = dict(d_model=32, n_heads=2, n_layers=3, n_h=1, n_m=1, n_o=1)
    return LoopMDM(ModelConfig(vocab_size=vocab_size, max_seq_len=max_seq_len, **cfg, **kw))


def data_cfg(source: str, **kw) -> DataConfig:
    cfg = DataConfig(source=source, format="answers", **kw)
    cfg.validate()
    return cfg


def test_prompt_answer_rows_freeze_prompt_and_padding(tmp_path):
    src = write_jsonl(tmp_path / "train.jsonl", sum_rows(200))
    data = prepare_data(data_cfg(src), 100, 12)
    tok = data.tokenizer
    assert data.train.shape[1] == 12 and data.conditional
    free = ~data.train_frozen
    assert (free.sum(1) == 1).all()  # one answer character per row, nothing else scored
    assert (free[:, 4]).all()  # "a+b=" is four characters; the answer follows
    assert (data.train[:, 5:] == tok.pad_id).all() and data.train_frozen[:, 5:].all()


def test_infill_rows_score_only_the_spans(tmp_path):
    rows = [
        {"text": "a=3:3;b=a:3", "targets": [[4, 5], [10, 11]], "depth": 1},
        {"text": "c=7:7;d=c:7", "targets": [[4, 5], [10, 11]], "depth": 1},
    ]
    parsed = read_rows(write_jsonl(tmp_path / "r.jsonl", rows), DataConfig().answers)
    tok = char_tokenizer([r.text for r in parsed])
    ids, target = encode_rows(parsed, tok, 16)
    assert target.sum() == 4 and target[0, 4] and target[0, 10] and not target[0, 5]
    assert tok.decode(ids[0, :11].tolist()) == "a=3:3;b=a:3"
    assert [r.answer for r in parsed] == ["3 3", "7 7"]


def test_conditional_objective_never_masks_or_scores_given_tokens(tmp_path):
    data = prepare_data(data_cfg(write_jsonl(tmp_path / "t.jsonl", sum_rows(64))), 100, 10)
    obj = make_objective(DiffusionConfig(), data.tokenizer.mask_id)
    batch = data.batch("train", np.arange(32))
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        noise = obj.draw(32, 10, gen)
        from loopmdm.diffusion.objectives import q_sample

        x_t = q_sample(batch, noise, obj.schedule.alpha(noise.t), obj.mask_id)
        assert torch.equal(x_t[batch.frozen], batch.x0[batch.frozen])
    model = tiny_model(data.tokenizer.vocab_size, time_conditioning="none")
    out = obj.loss(model, batch, 2, obj.draw(32, 10, gen))
    assert out.n_tokens == 32  # one answer token per row: prompt and padding are not counted


def test_deep_supervision_of_the_last_loop_is_the_final_loop_loss():
    torch.manual_seed(0)
    m = tiny_model(20, 8, time_conditioning="none")
    x = torch.randint(0, 19, (4, 8))
    predict = torch.rand(4, 8) < 0.5
    labels = torch.randint(0, 19, (int(predict.sum()),))
    w = torch.full((len(labels),), 1.0 / len(labels))
    base = m(x, loops=3, predict=predict, labels=labels, label_weights=w)
    last = m(x, loops=3, predict=predict, labels=labels, label_weights=w, supervise=[3])
    assert torch.equal(base[0], last[0]) and torch.equal(base[1], last[1])
    every = m(x, loops=3, predict=predict, labels=labels, label_weights=w, supervise=[1, 2, 3])
    per_loop = [
        m(x, loops=k, predict=predict, labels=labels, label_weights=w)[0] for k in (1, 2, 3)
    ]
    assert torch.allclose(every[0], sum(per_loop) / 3, atol=1e-6)
    assert torch.equal(every[1], base[1])  # the CE returned is h_S's
    with pytest.raises(ConfigError, match="supervise"):
        m(x, loops=3, predict=predict, labels=labels, label_weights=w, supervise=[1, 2])


def test_exact_match_is_one_for_an_oracle_and_the_majority_for_a_constant(tmp_path):
    rows = read_rows(write_jsonl(tmp_path / "t.jsonl", sum_rows(300, seed=1)), DataConfig().answers)
    tok = char_tokenizer([r.text for r in rows])
    ids, target = encode_rows(rows, tok, 8)
    groups = group_values(rows, "depth")
    index = {
        "all": np.arange(len(rows)),
        **{g: np.flatnonzero(np.asarray(groups) == g) for g in set(groups)},
    }
    oracle = score_predictions(ids.copy(), ids, target, tok, index)
    assert all(v["accuracy"] == 1.0 and v["token_accuracy"] == 1.0 for v in oracle.values())
    const = ids.copy()
    const[target] = tok.tok.token_to_id("7")
    scored = score_predictions(const, ids, target, tok, index)
    for g, idx in index.items():
        refs = [rows[i].answer for i in idx]
        assert scored[g]["accuracy"] == pytest.approx(refs.count("7") / len(idx))
        assert scored[g]["majority_baseline"] == pytest.approx(
            max(refs.count(d) for d in set(refs)) / len(idx)
        )
    lo, hi = scored["all"]["accuracy_ci"]
    assert lo <= scored["all"]["accuracy"] <= hi


@pytest.mark.parametrize(
    "row, message",
    [
        ({"question": "1+1=", "reply": "2"}, "neither"),
        ({"prompt": "1+1=", "answer": ""}, "answer is empty"),
        ({"text": "abc", "targets": [[2, 9]]}, "out of range"),
        ({"text": "abcdef", "targets": [[1, 3], [2, 4]]}, "overlaps"),
        ({"text": "abc", "targets": [[1]]}, "not a \\[start, end\\] pair"),
        ({"prompt": "1\ud800", "answer": "2"}, "lone surrogate U\\+D800"),
        ({"text": "ab\udfff", "targets": [[0, 1]]}, "lone surrogate U\\+DFFF"),
    ],
)
def test_bad_rows_name_the_row_and_the_fix(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "1+2=", "answer": "3"}, row])
    with pytest.raises(DataError, match=message) as e:
        read_rows(path, DataConfig().answers)
    assert "bad.jsonl:2" in str(e.value) and "\n" not in str(e.value)


def test_a_number_past_pythons_digit_limit_is_a_bad_row(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text('{"prompt": "1", "answer": "2", "depth": ' + "9" * 5000 + "}\n")
    with pytest.raises(DataError, match="big.jsonl:1 is not valid JSON"):
        read_rows(str(path), DataConfig().answers)


def test_the_prompt_and_answer_fields_must_differ():
    """With both on one field the model would train with the answer given in its own prompt."""
    cfg = DataConfig()
    cfg.answers.prompt_field = "answer"
    with pytest.raises(ConfigError, match="prompt_field and answer_field are both 'answer'"):
        cfg.answers.validate()


def test_long_rows_non_utf8_and_unknown_characters_are_one_line_errors(tmp_path):
    src = write_jsonl(tmp_path / "t.jsonl", sum_rows(20) + [{"prompt": "9" * 40, "answer": "1"}])
    with pytest.raises(DataError, match="model.max_seq_len >= 41"):
        prepare_data(data_cfg(src), 100, 16)
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes('{"prompt": "caf\xe9", "answer": "1"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_rows(bad, DataConfig().answers)
    rows = read_rows(
        write_jsonl(tmp_path / "u.jsonl", [{"prompt": "1+2=", "answer": "3"}]), DataConfig().answers
    )
    tok = char_tokenizer(["0123456789+="])
    from loopmdm.data.answers import check_characters

    check_characters(rows, tok)
    odd = [AnswerRow([("x*y=", False), ("3", True)], {}, "test.jsonl:7")]
    with pytest.raises(DataError, match=r"test.jsonl:7: characters '\*xy'"):
        check_characters(odd, tok)
    with pytest.raises(DataError, match="integer field 'depth'"):
        group_values([AnswerRow([("1", True)], {"depth": "2"}, "t.jsonl:1")], "depth")


def _tiny_train(tmp_path, capsys, source: str, extra=()) -> str:
    out = tmp_path / "run"
    code, _, err = run_cli(
        [
            "train",
            "--preset",
            "answers",
            "--data",
            source,
            "--out",
            out,
            "--max-steps",
            "30",
            "--set",
            "model.max_seq_len=24",
            "--set",
            "model.d_model=32",
            "--set",
            "model.n_heads=2",
            "--set",
            "train.eval_every=30",
            "--set",
            "train.batch_size=16",
            "--set",
            "train.threads=1",
            *extra,
        ],
        capsys,
    )
    assert code == 0, err
    return str(out)


@pytest.mark.parametrize("kind", ["prompt_answer", "infill"])
def test_train_then_exact_match_end_to_end(tmp_path, capsys, kind):
    if kind == "prompt_answer":
        train, test = sum_rows(200), sum_rows(40, seed=5)
    else:

        def infill(r):
            text = r["prompt"] + r["answer"]
            return {"text": text, "targets": [[len(text) - 1, len(text)]], "depth": r["depth"]}

        train, test = [infill(r) for r in sum_rows(200)], [infill(r) for r in sum_rows(40, seed=5)]
    run = _tiny_train(
        tmp_path,
        capsys,
        write_jsonl(tmp_path / "train.jsonl", train),
        ["--set", "diffusion.deep_supervision=all"] if kind == "infill" else [],
    )
    test_path = write_jsonl(tmp_path / "test.jsonl", test)
    plot = tmp_path / "em.png"
    code, out, err = run_cli(
        [
            "eval",
            "--checkpoint",
            run,
            "--metric",
            "exact-match",
            "--data",
            test_path,
            "--steps",
            "1,0",
            "--loops",
            "1,2",
            "--group-by",
            "depth",
            "--plot",
            plot,
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    payload = json.loads(out)
    recs = payload["results"]
    assert len(recs) == 2 * 2 * 3  # (T, S) x (all, depth 0, depth 1)
    for r in recs:
        assert {
            "steps",
            "loops",
            "group",
            "accuracy",
            "n",
            "accuracy_ci",
            "token_accuracy",
            "flops_per_problem",
            "majority_baseline",
        } <= set(r)
        assert 0.0 <= r["accuracy"] <= 1.0 and r["flops_per_problem"] > 0
    assert payload["train_overlap"] is not None and "share their prompt" in err
    assert plot.is_file()


def test_exact_match_refuses_other_formats_and_missing_data(tmp_path, capsys, tiny_run):
    code, _, err = run_cli(["eval", "--checkpoint", tiny_run, "--metric", "exact-match"], capsys)
    assert code == 2 and "needs --data" in err
    path = write_jsonl(tmp_path / "t.jsonl", sum_rows(4))
    code, _, err = run_cli(
        ["eval", "--checkpoint", tiny_run, "--metric", "exact-match", "--data", path], capsys
    )
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error:") and "data.format='text'" in last


def test_random_deep_supervision_always_includes_the_last_loop():
    obj = make_objective(DiffusionConfig(), mask_id=0)
    obj.deep_supervision = "random"
    torch.manual_seed(0)
    draws = [obj.supervised_loops(6) for _ in range(200)]
    assert all(d[-1] == 6 and d == sorted(set(d)) and d[0] >= 1 for d in draws)
    share = np.mean([len(d) - 1 for d in draws]) / 5
    assert 0.4 < share < 0.6  # each earlier loop with probability 1/2
    obj.deep_supervision = "all"
    assert obj.supervised_loops(3) == [1, 2, 3]
    with pytest.raises(ConfigError, match="deep_supervision"):
        DiffusionConfig(deep_supervision="every").validate()


def test_rows_that_all_share_one_prompt_cannot_be_split(tmp_path):
    """Found by tests/test_fuzz.py: two copies of one row left training empty (a crash in max()); now a
    one-line error, and a split whose hash sends every prompt to validation still leaves training rows."""
    from loopmdm.data.packing import split_by_key

    same = write_jsonl(tmp_path / "same.jsonl", [{"prompt": "a=2?a", "answer": "2"}] * 2)
    for tokenizer in ("char", "bpe"):
        cfg = data_cfg(same, val_fraction=0.2)
        cfg.answers.tokenizer = tokenizer
        with pytest.raises(DataError, match="all share one prompt / text") as e:
            prepare_data(cfg, 300, 8, use_cache=False)
        assert "\n" not in str(e.value)
    items = ["a", "a", "b", "c"]
    train, val = split_by_key(
        items, lambda x: x, 1.0, "the rows"
    )  # the hash puts every key in validation
    assert val == ["a", "a"] and train == ["b", "c"]


def test_gsm8k_shaped_rows_through_datasets_and_the_hub_path_offline(tmp_path, monkeypatch, capsys):
    """An SFT set read through Hugging Face ``datasets`` (``hf:json:PATH`` here; ``hf:openai/gsm8k:main`` online):
    question / answer columns, a BPE tokenizer, only the answer scored; a Hub dataset that is not cached fails
    offline with one line."""
    pytest.importorskip("datasets")
    rows = [
        {
            "question": f"Tom has {a} apples and buys {b}. How many?",
            "answer": f"{a}+{b}={a + b} #### {a + b}",
        }
        for a, b in zip(range(40), range(3, 43))
    ]
    train = write_jsonl(tmp_path / "train.json", rows[:30])
    test = write_jsonl(tmp_path / "test.json", rows[30:])
    cfg = data_cfg(f"hf:json:{train}", cache_dir=str(tmp_path / "cache"))
    cfg.answers.prompt_field, cfg.answers.tokenizer = "question", "bpe"
    cfg.answers.val_source = f"hf:json:{test}"
    data = prepare_data(cfg, 300, 48, use_cache=False)
    assert data.stats["train_rows"] == 30 and data.stats["val_rows"] == 10
    tok = data.tokenizer
    first = data.val[0][~data.val_frozen[0]].tolist()  # the scored tokens of the first test row
    assert tok.decode(first).replace(" ", "") == rows[30]["answer"].replace(" ", "")
    run = str(tmp_path / "run")
    sets = [
        "data.answers.prompt_field=question",
        "data.answers.tokenizer=bpe",
        "model.vocab_size=400",
    ]
    sets += [f"data.answers.val_source=hf:json:{test}", "model.max_seq_len=48", "train.max_steps=2"]
    sets += ["train.batch_size=8", "train.threads=1"]
    argv = ["train", "--preset", "answers", "--data", f"hf:json:{train}", "--out", run]
    assert (
        run_cli(argv + [a for kv in sets for a in ("--set", kv)] + ["--no-progress"], capsys)[0]
        == 0
    )
    argv = ["eval", "--checkpoint", run, "--metric", "exact-match", "--data", f"hf:json:{test}"]
    code, out, err = run_cli(argv + ["--steps", "1", "--loops", "1", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["results"][0]["n"] == 10 and "0 of them share their prompt" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg.source = "hf:no-such-owner/no-such-set:main@test"
    with pytest.raises(DataError, match="not in the local datasets cache") as e:
        prepare_data(cfg, 300, 48, use_cache=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("rows", [sum_rows(3), [{"text": "12=3", "targets": [[3, 4]]}]])
def test_answers_rows_given_to_the_text_format_are_refused(tmp_path, rows):
    """Answer rows read as plain text would train on prompts and answers alike (and a task folder's test.jsonl
    with them): the text format refuses them and names data.format=answers."""
    (tmp_path / "task").mkdir()
    for split in ("train", "test"):
        write_jsonl(tmp_path / "task" / f"{split}.jsonl", rows * 50)
    for source in (tmp_path / "task", tmp_path / "task" / "train.jsonl"):
        cfg = DataConfig(source=str(source), cache_dir=str(tmp_path / "cache"))
        cfg.validate()
        with pytest.raises(DataError, match=r"\.jsonl:1 is an answers row .* data\.format=answers"):
            prepare_data(cfg, 256, 32, use_cache=False)


def test_prompts_and_templates_with_characters_the_char_tokenizer_never_saw_are_refused():
    """They would become <unk> and vanish from the printed sample; the text between [MASK] spans is what counts."""
    from loopmdm.sampling.conditioning import build_canvas

    tok = char_tokenizer(["12=3", "45=6"])
    with pytest.raises(
        ConfigError, match=r"the prompt has characters 'ab' that are not in the model's"
    ):
        build_canvas(tok, 1, 8, 16, prompt="12ab=")
    with pytest.raises(ConfigError, match=r"the template has characters 'é' "):
        build_canvas(tok, 1, None, 16, template="1é=[MASK:2]")
    canvas = build_canvas(tok, 1, None, 16, template="12=[MASK:2]")
    assert canvas.free[0].tolist()[-2:] == [True, True]


def test_flops_per_problem_do_not_depend_on_which_rows_share_a_batch(tmp_path):
    """One token per step, a batch runs as many steps as its longest answer needs; a problem's FLOPs are its own
    steps' (found by review: rows with 4 / 3 / 2 answer tokens were all billed 4 steps when batched together)."""
    from loopmdm.diffusion import get_schedule
    from loopmdm.eval.exact_match import exact_match_grid

    rows_json = [
        {"prompt": "ab=", "answer": "abab", "size": 4},
        {"prompt": "ba=", "answer": "bab", "size": 3},
        {"prompt": "aa=", "answer": "ba", "size": 2},
    ]
    rows = read_rows(write_jsonl(tmp_path / "t.jsonl", rows_json), DataConfig().answers)
    tok = char_tokenizer([r.text for r in rows])
    torch.manual_seed(0)
    model = tiny_model(tok.vocab_size, 8).eval()

    def grid(batch_size):
        recs = exact_match_grid(
            model,
            tok,
            rows,
            length=8,
            orders=["margin"],
            steps=[0, 2],
            loops=[2],
            schedule=get_schedule("loglinear"),
            group_by="size",
            batch_size=batch_size,
        )
        return {(r["steps"], r["group"]): r["flops_per_problem"] for r in recs}

    together, alone = grid(3), grid(1)
    assert together == pytest.approx(alone, rel=1e-6)
    # one token per step: FLOPs in proportion to the answer's length; T = 2: two steps for every row
    assert together[0, 4] / together[0, 2] == pytest.approx(2.0, rel=0.05)
    assert together[2, 4] == pytest.approx(together[2, 2], rel=0.05)


def test_the_experiments_final_nelbo_scores_answer_tokens_only(tmp_path):
    """compute-matched / ablation / loopify read their final NELBO through ``final_nelbo``: on prompt / answer
    data it counted prompt and padding tokens (found by review)."""
    from loopmdm.config import RunConfig
    from loopmdm.experiments.compute_matched import final_nelbo
    from loopmdm.experiments.compute_matched_config import ComputeMatchedConfig

    data = prepare_data(data_cfg(write_jsonl(tmp_path / "t.jsonl", sum_rows(400))), 100, 10)
    model = tiny_model(data.tokenizer.vocab_size).eval()
    run = RunConfig()
    run.train.batch_size = 8
    cfg = ComputeMatchedConfig(final_eval_batches=2, eval_seed=0)
    out = final_nelbo(model, data, run, [1], cfg)
    rows = min(len(data.val), 16)
    assert (
        out[1]["tokens"] == int((~data.val_frozen[:rows]).sum()) == rows
    )  # one answer token per row
