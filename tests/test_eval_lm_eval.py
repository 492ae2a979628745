"""The lm-eval adapter: MC-ELBO loglikelihoods rank true continuations first, rolling / generation, truncation,
and a small local multiple-choice task through lm_eval.simple_evaluate, offline."""

from __future__ import annotations

import json
import logging
import math
import random

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from loopmdm.config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from loopmdm.diffusion.likelihood import random_subsets, stratified_mask_counts  # noqa: E402
from loopmdm.diffusion.schedules import get_schedule  # noqa: E402
from loopmdm.errors import ConfigError  # noqa: E402
from loopmdm.eval.lm_eval import LoopMDMLM  # noqa: E402

PAIRS = [
    ("the cat", "eats an apple"),
    ("the dog", "reads a book"),
    ("a bird", "sees the sea"),
    ("my friend", "drinks some tea"),
    ("the teacher", "plays a game"),
    ("a child", "likes the sun"),
]
TEXT = " ".join(f"{s} {v}." for s, v in PAIRS)


@pytest.fixture(scope="module")
def repetitive_run(tmp_path_factory):
    """A tiny LoopMDM trained ~120 steps on one repeated paragraph (strong enough to rank continuations)."""
    from loopmdm.train import train

    root = tmp_path_factory.mktemp("rep")
    (root / "corpus").mkdir()
    for i in range(30):
        (root / "corpus" / f"d{i:02d}.txt").write_text(TEXT + "\n")
    cfg = RunConfig(
        model=ModelConfig(
            vocab_size=320,
            max_seq_len=32,
            d_model=64,
            n_heads=2,
            n_layers=4,
            n_h=1,
            n_m=2,
            n_o=1,
            cond_dim=32,
        ),
        diffusion=DiffusionConfig(s_max=2),
        data=DataConfig(
            source=str(root / "corpus"), val_fraction=0.2, cache_dir=str(root / "cache")
        ),
        train=TrainConfig(
            batch_size=16,
            max_steps=120,
            lr=3e-3,
            warmup_steps=10,
            eval_every=120,
            eval_batches=1,
            save_every=120,
            log_every=40,
            precision="fp32",
            device="cpu",
        ),
    ).validate()
    train(cfg, root / "run", progress=False, log=lambda s: None)
    return root / "run"


def req(kind, *args):
    return Instance(kind, {}, tuple(args), 0)


def shuffled_tokens(lm: LoopMDMLM, text: str, seed: int) -> str:
    """The same tokens in another order (same length, same unigram counts)."""
    ids = lm.tok_encode(text)
    rng = random.Random(seed)
    out = ids[:]
    while out == ids:
        rng.shuffle(out)
    return lm.tok_decode(out)


def test_stratified_counts_and_subsets():
    gen = torch.Generator().manual_seed(0)
    k = stratified_mask_counts(1000, 7, gen)
    assert k.min() == 1 and k.max() == 7
    # evenly spread
    assert torch.bincount(k, minlength=8)[1:].tolist() == pytest.approx([1000 / 7] * 7, abs=1.01)
    m = random_subsets(torch.tensor([1, 3, 5]), 5, gen)
    assert m.sum(1).tolist() == [1, 3, 5]
    t = get_schedule("cosine").t_for_masked_fraction(torch.tensor([0.25, 0.5, 1.0]))
    assert (1 - torch.cos(math.pi / 2 * t)).tolist() == pytest.approx([0.25, 0.5, 1.0], abs=1e-5)


def test_true_continuation_ranks_above_shuffled(repetitive_run):
    lm = LoopMDMLM(pretrained=str(repetitive_run), loops=2, mc_samples=32, device="cpu")
    wins, margin = 0, 0.0
    for i, cut in enumerate(range(20, 90, 7)):
        context, cont = TEXT[:cut], TEXT[cut : cut + 30]
        (a, _), (b, _) = lm.loglikelihood(
            [
                req("loglikelihood", context, cont),
                req("loglikelihood", context, shuffled_tokens(lm, cont, i)),
            ]
        )
        assert a < 0 and b < 0
        wins += a > b
        margin += a - b
    assert wins >= 9 and margin > 50


def test_estimate_is_seeded_and_loops_matter(repetitive_run):
    ctx, cont = "the dog reads", " a book. a bird"
    lm = LoopMDMLM(pretrained=str(repetitive_run), loops=2, mc_samples=16, greedy=False)
    a = lm.loglikelihood([req("loglikelihood", ctx, cont)] * 2)
    assert a[0] == a[1]  # same seed, same request -> same number
    lm1 = LoopMDMLM(pretrained=str(repetitive_run), loops=1, mc_samples=16, greedy=False)
    assert lm1.loglikelihood([req("loglikelihood", ctx, cont)])[0][0] != a[0][0]


def test_greedy_flag(repetitive_run):
    lm = LoopMDMLM(pretrained=str(repetitive_run), loops=2, mc_samples=4)
    (_, g_true), (_, g_wrong) = lm.loglikelihood(
        [
            req("loglikelihood", "the cat eats an", " apple"),
            req("loglikelihood", "the cat eats an", " sea. the sun"),
        ]
    )
    assert g_wrong is False and isinstance(g_true, bool)


def test_rolling_and_generation(repetitive_run, caplog):
    lm = LoopMDMLM(pretrained=str(repetitive_run), loops=2, mc_samples=8, max_gen_toks=12)
    assert len(lm.tok_encode(TEXT)) > lm.window  # several rolling windows
    with caplog.at_level(logging.WARNING, logger="loopmdm.eval.lm_eval"):
        good, bad = lm.loglikelihood_rolling(
            [
                req("loglikelihood_rolling", TEXT),
                req("loglikelihood_rolling", shuffled_tokens(lm, TEXT, 0)),
            ]
        )
    # rolling windows fit the window
    assert not [r for r in caplog.records if "truncating" in r.getMessage()]
    assert math.isfinite(good) and bad < good < 0
    outs = lm.generate_until(
        [
            req("generate_until", "the cat", {"until": ["."], "max_gen_toks": 10}),
            req("generate_until", "a bird", {"until": "\n", "temperature": 0}),
        ]
    )
    assert len(outs) == 2 and all(isinstance(o, str) for o in outs)
    assert "." not in outs[0]


def test_ar_checkpoint_is_scored_exactly(tiny_ar_run):
    """For an AR checkpoint loglikelihood is the exact sum of next-token log-probs, and rolling equals it."""
    lm = LoopMDMLM(pretrained=str(tiny_ar_run))
    text = "def compute(alpha):\n    return alpha"
    ((ll, _),) = lm.loglikelihood([req("loglikelihood", "", text)])
    ids = [lm.prefix_token_id] + lm.tok_encode(text)
    with torch.no_grad():
        logp = torch.log_softmax(
            lm.model(torch.tensor(ids[:-1])[None], loops=lm.loops)[0].double(), -1
        )
    assert ll == pytest.approx(
        float(logp.gather(-1, torch.tensor(ids[1:])[:, None]).sum()), rel=1e-4
    )
    (roll,) = lm.loglikelihood_rolling([req("loglikelihood_rolling", text)])
    assert roll == pytest.approx(ll, rel=1e-4)


def test_long_requests_are_truncated_from_the_left_once(repetitive_run, caplog):
    lm = LoopMDMLM(pretrained=str(repetitive_run), loops=1, mc_samples=4, greedy=False)
    long_ctx = TEXT * 3  # far beyond the 32-token window
    with caplog.at_level(logging.WARNING, logger="loopmdm.eval.lm_eval"):
        res = lm.loglikelihood(
            [req("loglikelihood", long_ctx, " the cat"), req("loglikelihood", long_ctx, " a dog")]
        )
        lm.generate_until([req("generate_until", long_ctx, {"max_gen_toks": 4})])
    warnings = [r for r in caplog.records if "truncating" in r.getMessage()]
    assert len(warnings) == 1 and "window of 32" in warnings[0].getMessage()
    assert all(math.isfinite(ll) for ll, _ in res)
    ctx, cont = lm._fit(list(range(40)), [7, 8, 9])
    # oldest tokens dropped
    assert len(ctx) + len(cont) == 32 and cont == [7, 8, 9] and ctx[-1] == 39


@pytest.mark.parametrize("args", [{"loops": 0}, {"loops": "x"}, {"mc_samples": -2}, {"loops": 1.5}])
def test_bad_model_args(repetitive_run, args):
    with pytest.raises(ConfigError, match="must be an integer >= 1"):
        LoopMDMLM(pretrained=str(repetitive_run), **args)


def test_local_task_through_simple_evaluate(repetitive_run, tmp_path, monkeypatch):
    """A custom YAML multiple-choice task over a local JSONL, loaded offline via TaskManager(include_path=...)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    task = tmp_path / "task"
    task.mkdir()
    lm = LoopMDMLM(pretrained=str(repetitive_run), loops=1, mc_samples=1, greedy=False)
    with (task / "toy.jsonl").open("w") as f:
        for i, (subj, verb) in enumerate(PAIRS):
            f.write(
                json.dumps(
                    {
                        "context": f"{subj}",
                        "choices": [f" {verb}.", shuffled_tokens(lm, f" {verb}.", i)],
                        "label": 0,
                    }
                )
                + "\n"
            )
    (task / "toy.yaml").write_text(f"""task: loopmdm_toy
dataset_path: json
dataset_kwargs:
  data_files:
    test: {task / "toy.jsonl"}
  cache_dir: {tmp_path / "hf_cache"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    res = lm_eval.simple_evaluate(
        model="loopmdm",
        model_args=f"pretrained={repetitive_run},loops=2,mc_samples=16",
        tasks=["loopmdm_toy"],
        task_manager=TaskManager(include_path=str(task), include_defaults=False),
        bootstrap_iters=0,
        log_samples=False,
        device="cpu",
    )
    acc = res["results"]["loopmdm_toy"]["acc,none"]
    assert res["results"]["loopmdm_toy"]["sample_len"] == len(PAIRS)
    assert acc >= 5 / 6
