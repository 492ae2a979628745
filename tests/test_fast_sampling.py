"""Fast sampling: parallel decoding by confidence threshold, approximate key / value caching (prefix, dual,
delayed, loop-aware reuse) through head, every loop of the mid block and tail, and the compute report's counts
against forward hooks and a FLOP counter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from helpers import t_free_model
from loopmdm.checkpoint import load_model
from loopmdm.data.sudoku import (
    MASK_ID,
    decode_grid,
    encode_grids,
    generate_puzzles,
    solve,
    sudoku_tokenizer,
)
from loopmdm.diffusion import get_schedule
from loopmdm.errors import ConfigError
from loopmdm.eval import sudoku as E
from loopmdm.model import LoopMDM, ModelConfig
from loopmdm.sampling import generate
from loopmdm.sampling.cache_modes import DualCache
from loopmdm.sampling.cached_attention import LayerCache
from loopmdm.sampling.kvcache import KVCache
from loopmdm.sampling.policies import Fixed
from loopmdm.sampling.report import ComputeMeter
from loopmdm.sampling.runner import LoopState


@pytest.fixture(scope="module")
def trained(tiny_run):
    return load_model(tiny_run)  # adaLN time conditioning, n_h / n_m / n_o = 1 / 2 / 1, S_max = 3


CACHED = [
    ("confidence", {"cache": "delayed"}),
    ("confidence", {"cache": "loops"}),
    ("confidence", {"cache": "delayed", "threshold": 0.2, "order": "margin"}),
    ("semi_ar", {"block_length": 8, "cache": "prefix"}),
    ("semi_ar", {"block_length": 8, "cache": "dual"}),
    ("semi_ar", {"block_length": 8, "cache": "dual", "threshold": 0.2}),
    ("semi_ar", {"block_length": 8, "cache": "delayed", "delay": 2}),
    ("semi_ar", {"block_length": 8, "cache": "loops"}),
]
POLICIES = [
    ("fixed", {"loops": 3}),
    ("converge", {"threshold": 0.2, "s_max": 4}),
    ("converge", {"threshold": 0.01, "criterion": "kl", "s_max": 3}),
    ("schedule", {"s_min": 1, "s_max": 4}),
]


def uncached(opts: dict) -> dict:
    return {k: v for k, v in opts.items() if k not in ("cache", "refresh", "delay")}


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("sampler,opts", CACHED)
@pytest.mark.parametrize("policy,popts", POLICIES)
def test_refresh_every_step_equals_no_cache(trained, sampler, opts, policy, popts):
    """With the cache refreshed at every call each call is the plain one: the same tokens under the same seed, and
    the same FLOPs (an adaLN model, where any reuse of a cached value would show)."""
    model, tok, _ = trained
    kw = dict(
        num_samples=3,
        length=24,
        steps=24,
        sampler=sampler,
        policy=policy,
        policy_options=popts,
        seed=7,
        prompt="def",
    )
    plain = generate(model, tok, sampler_options=uncached(opts), **kw)
    cached = generate(model, tok, sampler_options={**opts, "refresh": 1}, **kw)
    assert torch.equal(plain.tokens, cached.tokens)
    rp, rc = plain.report, cached.report
    assert rc.cache_refreshes == rc.network_calls == rp.network_calls and rc.cached_calls == 0
    assert (
        rc.flops == pytest.approx(rp.flops, rel=1e-12) and rc.loop_iterations == rp.loop_iterations
    )


@pytest.mark.parametrize("sampler,opts", CACHED)
def test_cache_computes_fewer_positions_and_fills_every_mask(trained, sampler, opts):
    model, tok, _ = trained
    kw = dict(
        num_samples=3,
        length=32,
        steps=32,
        sampler=sampler,
        policy="fixed",
        policy_options={"loops": 3},
        seed=2,
    )
    plain = generate(model, tok, sampler_options=uncached(opts), **kw)
    fast = generate(model, tok, sampler_options=opts, **kw)
    rp, rf = plain.report, fast.report
    assert not (fast.tokens == tok.mask_id).any() and fast.tokens.shape == (3, 32)
    assert rf.cached_calls > 0 and rf.cache_refreshes >= 1
    assert rf.mid_positions < 0.8 * rp.mid_positions and rf.flops < 0.85 * rp.flops
    if opts["cache"] == "loops":  # loop-aware reuse: head and tail still run on every position
        assert (
            rf.head_positions == 3 * 32 * rf.network_calls
            and rf.tail_positions == rf.head_positions
        )
    else:
        assert rf.head_positions < rp.head_positions and rf.tail_positions < rp.tail_positions


def test_loop_aware_reuse_halves_mid_block_position_loops(trained):
    """One token per step (T = L): decoded positions skip the loops once settled (one step after decoding), so
    the mid block computes about half the position-loops of fixed S."""
    model, tok, _ = trained
    kw = dict(
        num_samples=2,
        length=32,
        steps=32,
        sampler="confidence",
        policy="fixed",
        policy_options={"loops": 3},
        seed=5,
    )
    plain = generate(model, tok, **kw)
    reuse = generate(model, tok, sampler_options={"cache": "loops"}, **kw)
    assert reuse.report.mid_positions <= 0.6 * plain.report.mid_positions
    # same S per call, fewer positions
    assert reuse.report.loop_iterations == plain.report.loop_iterations


def _cache_tensors(kv: KVCache) -> list[torch.Tensor]:
    out = [c[n] for c in kv.head for n in ("k", "v")]
    out += [c[n] for loop in kv.mid for c in loop for n in ("k", "v")]
    out += [c[n] for c in kv.tail for n in ("k", "v")]
    return out + [kv.state]


def test_cached_keys_values_of_a_finished_block_equal_fresh_ones(trained):
    """A dual-cache call that recomputes only the current block of an unchanged canvas leaves every cached key /
    value (head, each of the 3 loops, tail) and state equal to a fresh full computation, and predicts the same
    logits; after a token of the block changes, the finished block's entries are reused as they were."""
    model, tok, _ = trained
    N, L = 2, 24
    g = torch.Generator().manual_seed(0)
    x = torch.randint(4, tok.vocab_size - 1, (N, L), generator=g)
    x[:, 12:] = tok.mask_id  # block [8, 16) half decoded, the suffix masked
    pos = torch.arange(L)
    block = (pos >= 8) & (pos < 16)
    t = torch.full((N,), 0.5)
    policy = Fixed(3)

    def call(kv, canvas):
        state = LoopState(
            x=canvas,
            rows=torch.arange(N),
            masked=canvas == tok.mask_id,
            free=torch.ones(N, L, dtype=torch.bool),
            step=0,
            total_steps=8,
        )
        meter = ComputeMeter(model.config, N, L)
        with torch.no_grad():
            return kv.predict(model, policy, meter, canvas, t, state), meter.report

    kv = KVCache(DualCache(), policy, N, L, "cpu", model=model)
    kv.begin_block(block)
    full, rep_full = call(kv, x)
    assert rep_full.cache_refreshes == 1 and len(kv.mid) == 3
    fresh = [a.clone() for a in _cache_tensors(kv)]
    part, rep_part = call(kv, x)
    # only the block was computed
    assert rep_part.cached_calls == 1 and rep_part.head_positions == N * 8
    for a, b in zip(_cache_tensors(kv), fresh):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    where = block & (x == tok.mask_id)
    torch.testing.assert_close(part.logits[where], full.logits[where], rtol=1e-4, atol=1e-4)
    # decode a token of the block: the block is recomputed, the finished block [0, 8) and the suffix reused as is
    y = x.clone()
    y[:, 12] = 5
    before = [a.clone() for a in _cache_tensors(kv)]
    call(kv, y)
    after = _cache_tensors(kv)
    for a, b in zip(after[:-1], before[:-1]):  # keys / values [N, H, L, hd]
        assert torch.equal(a[:, :, ~block], b[:, :, ~block])
    assert any(
        not torch.allclose(a[:, :, block], b[:, :, block]) for a, b in zip(after[:-1], before[:-1])
    )


# --------------------------------------------------------------------------- parallel decoding


@pytest.mark.parametrize(
    "sampler,opts",
    [
        ("confidence", {}),
        ("confidence", {"order": "margin"}),
        ("semi_ar", {"block_length": 8}),
        ("semi_ar", {"block_length": 8, "cache": "dual"}),
        ("confidence", {"cache": "delayed"}),
    ],
)
def test_threshold_commits_at_least_one_token_per_step_and_never_the_mask(trained, sampler, opts):
    model, tok, _ = trained
    model_free = t_free_model(tok)
    for m, thr in [(model, 0.3), (model_free, 0.5), (model_free, 1e-6)]:
        seen = []
        out = generate(
            m,
            tok,
            num_samples=3,
            length=24,
            steps=24,
            sampler=sampler,
            sampler_options={**opts, "threshold": thr},
            seed=3,
            on_step=seen.append,
            prompt="def",
        )
        free = 24 - 1 - len(tok.encode("def"))
        # per row, per step
        masked = [torch.full((3,), free)] + [(s.tokens == tok.mask_id).sum(1) for s in seen]
        for before, after in zip(masked[:-1], masked[1:]):
            # every row with a mask commits one or more
            assert ((before - after >= 1) | (before == 0)).all()
        assert (masked[-1] == 0).all() and not (out.tokens == tok.mask_id).any()
        assert all(not (s.tokens[~s.revealed] != tok.mask_id).any() for s in seen)
        assert out.report.steps_run == len(seen) <= 24
        if thr == 1e-6:  # every candidate is confident enough: one step per block
            assert out.report.steps_run == (1 if sampler == "confidence" else 3)


def test_threshold_adapts_the_step_count_and_one_equals_plain(trained):
    """threshold=1 never fires (a confidence is at most 1): at T = L it equals the plain one-token-per-step run;
    a lower one commits several tokens per step on a confident model and ends in fewer steps."""
    model, tok, _ = trained
    m = t_free_model(tok)
    kw = dict(num_samples=2, length=24, steps=24, seed=4)
    for sampler, opts in [("confidence", {}), ("semi_ar", {"block_length": 8})]:
        plain = generate(m, tok, sampler=sampler, sampler_options=opts, **kw)
        one = generate(m, tok, sampler=sampler, sampler_options={**opts, "threshold": 1.0}, **kw)
        assert torch.equal(plain.tokens, one.tokens) and one.report.steps_run == 24
        fast = generate(m, tok, sampler=sampler, sampler_options={**opts, "threshold": 0.2}, **kw)
        assert fast.report.steps_run < 24 and fast.report.network_calls == fast.report.steps_run
        assert fast.report.flops < plain.report.flops


class SudokuOracle(LoopMDM):
    """Logits peaked at the solution of the canvas it is shown, more confident at later cells."""

    def __init__(self):
        super().__init__(
            ModelConfig(
                vocab_size=11,
                max_seq_len=81,
                d_model=8,
                n_heads=2,
                n_layers=1,
                n_h=0,
                n_m=1,
                n_o=0,
                cond_dim=8,
                time_conditioning="none",
            )
        )

    def prelude(self, x_t, t=None, attention_mask=None):
        self._x = x_t.clone()
        return super().prelude(x_t, t, attention_mask)

    def coda(self, h, ctx):
        B, L = self._x.shape
        target = torch.from_numpy(
            encode_grids([solve(decode_grid(r)) for r in self._x.tolist()]).astype(np.int64)
        )
        strength = 1.0 + torch.arange(L, dtype=torch.float32) / 10.0
        return torch.zeros(B, L, 11).scatter_(
            -1, target[..., None], strength[None, :, None].expand(B, L, 1)
        )


def test_sudoku_decoder_threshold():
    pairs = generate_puzzles(3, (34, 40), seed=5)
    sched = get_schedule("loglinear")
    blanks = max(p.puzzle.count("0") for p in pairs)
    grids, _, _, one_per_step = E.solve_boards(
        SudokuOracle(),
        pairs,
        mask_id=MASK_ID,
        loops=1,
        steps=0,
        order="probability",
        schedule=sched,
    )
    assert one_per_step == blanks
    grids, _, _, steps_run = E.solve_boards(
        SudokuOracle(),
        pairs,
        mask_id=MASK_ID,
        loops=1,
        steps=0,
        order="probability",
        schedule=sched,
        threshold=0.9,
    )
    assert grids == [p.solution for p in pairs] and steps_run < blanks / 2
    (score,) = E.sudoku_grid(
        SudokuOracle(),
        sudoku_tokenizer(),
        pairs,
        orders=["margin"],
        steps=[0],
        loops=[1],
        schedule=sched,
        threshold=0.5,
    )
    assert score.board_accuracy == 1.0 and score.steps_run < blanks
    with pytest.raises(ConfigError, match="threshold"):
        E.solve_boards(
            SudokuOracle(),
            pairs,
            mask_id=MASK_ID,
            loops=1,
            steps=0,
            order="margin",
            schedule=sched,
            threshold=1.5,
        )


# --------------------------------------------------------------------------- the compute report


class Hooks:
    """Counts what really runs: positions per block call of head / mid / tail, LM-head rows, mid-block calls."""

    def __init__(self, model):
        self.positions = {"head": 0, "mid": 0, "tail": 0}
        self.lm_rows = self.mid_calls = 0
        self.handles = [
            model.mid.register_forward_hook(self.count_mid),
            model.lm_head.register_forward_hook(self.count_lm),
        ]
        for stage in self.positions:
            for block in getattr(model, stage).blocks:
                self.handles.append(block.register_forward_pre_hook(self.counter(stage)))

    def counter(self, stage):
        def hook(module, args):
            self.positions[stage] += args[0].shape[0] * args[0].shape[1]

        return hook

    def count_mid(self, module, args, output):
        self.mid_calls += 1

    def count_lm(self, module, args, output):
        self.lm_rows += args[0].numel() // args[0].shape[-1]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize(
    "sampler,opts,policy,popts",
    [
        ("confidence", {}, "fixed", {"loops": 3}),
        ("semi_ar", {"block_length": 8}, "per_token", {"threshold": 0.1, "s_max": 3}),
        (
            "confidence",
            {"cache": "delayed", "threshold": 0.3},
            "converge",
            {"threshold": 0.1, "s_max": 3},
        ),
        ("confidence", {"cache": "loops"}, "schedule", {"s_max": 4}),
        ("semi_ar", {"block_length": 8, "cache": "dual"}, "fixed", {"loops": 2}),
        (
            "semi_ar",
            {"block_length": 8, "cache": "prefix", "refresh": 3},
            "converge",
            {"threshold": 0.01, "criterion": "kl", "s_max": 3},
        ),
    ],
)
def test_report_counts_equal_what_hooks_and_a_flop_counter_observe(
    trained, sampler, opts, policy, popts
):
    model, tok, cfg = trained
    kw = dict(
        num_samples=3,
        length=24,
        steps=24,
        sampler=sampler,
        sampler_options=opts,
        policy=policy,
        policy_options=popts,
        seed=1,
        prompt="def",
    )
    with Hooks(model) as hooks:
        out = generate(model, tok, **kw)
    r = out.report
    m = cfg.model
    assert hooks.positions == {
        "head": m.n_h * r.head_positions,
        "mid": m.n_m * r.mid_positions,
        "tail": m.n_o * r.tail_positions,
    }
    assert r.position_layers == sum(hooks.positions.values())
    assert hooks.mid_calls == r.loop_iterations and hooks.lm_rows == r.lm_head_positions
    free = 24 - 1 - len(tok.encode("def"))
    assert r.generated_tokens == 3 * free and r.tokens_per_s == pytest.approx(
        r.generated_tokens / r.wall_time_s
    )
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        again = generate(model, tok, **kw)
    assert torch.equal(again.tokens, out.tokens)
    assert fc.get_total_flops() == pytest.approx(r.flops, rel=0.05)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "sampler,opts,match",
    [
        ("confidence", {"threshold": 0}, r"threshold=0 must be a number in \(0, 1\]"),
        ("semi_ar", {"threshold": 1.5}, r"threshold=1.5 must be a number in \(0, 1\]"),
        ("confidence", {"threshold": "high"}, "threshold='high' must be a number"),
        (
            "confidence",
            {"threshold": 0.5, "order": "entropy"},
            "use order=probability or order=margin",
        ),
        (
            "confidence",
            {"cache": "dual"},
            "option of sampler semi_ar; sampler confidence takes cache=delayed",
        ),
        ("confidence", {"cache": "prefix"}, "option of sampler semi_ar"),
        (
            "ancestral",
            {"cache": "delayed"},
            "key / value caching is an option of the samplers confidence and semi_ar",
        ),
        (
            "cached",
            {"threshold": 0.5},
            "threshold is an option of the samplers confidence and semi_ar",
        ),
        ("confidence", {"refresh": 2}, "refresh needs a key / value cache"),
        ("semi_ar", {"cache": "dual", "delay": 2}, "delay applies to cache=delayed or cache=loops"),
        ("confidence", {"cache": "delayed", "refresh": 0}, "refresh=0 must be an integer >= 1"),
        ("confidence", {"cache": "delayed", "delay": 0}, "delay=0 must be an integer >= 1"),
        ("confidence", {"cache": "lru"}, "choose one of: delayed, dual, loops, none, prefix"),
    ],
)
def test_bad_options_are_one_line_config_errors(trained, sampler, opts, match):
    model, tok, _ = trained
    with pytest.raises(ConfigError, match=match) as e:
        generate(model, tok, length=16, steps=4, sampler=sampler, sampler_options=opts)
    assert "\n" not in str(e.value)


def test_a_model_without_block_stacks_refuses_a_cache(trained):
    model, tok, _ = trained

    # the interface of a loopified transformers model: no block stacks
    class WholeSequences(torch.nn.Module):
        config = model.config

        def __init__(self):
            super().__init__()
            self.inner = model

        def prelude(self, x_t, t=None, attention_mask=None):
            return self.inner.prelude(x_t, t, attention_mask)

        def loop_step(self, h, ctx, k, cache=None):
            return self.inner.loop_step(h, ctx, k)

        def coda(self, h, ctx):
            return self.inner.coda(h, ctx)

    m = WholeSequences()
    ok = generate(
        m, tok, length=16, steps=16, sampler="confidence", sampler_options={"threshold": 0.5}
    )
    assert not (ok.tokens == tok.mask_id).any()
    with pytest.raises(
        ConfigError, match="cannot reuse cached keys / values; drop the sampler option cache"
    ):
        generate(
            m, tok, length=16, steps=4, sampler="confidence", sampler_options={"cache": "delayed"}
        )


@pytest.mark.parametrize("policy", ["per_token", "warm"])
def test_policies_with_per_position_state_refuse_a_cache(trained, policy):
    model, tok, _ = trained
    with pytest.raises(
        ConfigError,
        match=f"loop policy {policy} keeps per-position state .* use loop policy "
        "converge, fixed, schedule",
    ):
        generate(
            model,
            tok,
            length=16,
            steps=4,
            sampler="confidence",
            sampler_options={"cache": "delayed"},
            policy=policy,
            policy_options={"s_max": 3},
        )


def test_semi_ar_pads_a_window_that_is_not_whole_blocks_and_says_so(trained):
    model, tok, _ = trained
    out = generate(
        model,
        tok,
        length=20,
        steps=20,
        sampler="semi_ar",
        sampler_options={"block_length": 8, "cache": "dual"},
    )
    assert not (out.tokens == tok.mask_id).any()
    (note,) = out.report.notes
    assert (
        "20 positions is not a multiple of block_length=8" in note
        and "last block has only 4 positions" in note
    )
    assert (
        generate(
            model, tok, length=24, steps=24, sampler="semi_ar", sampler_options={"block_length": 8}
        ).report.notes
        == []
    )


# --------------------------------------------------------------------------- command line


def _cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", "from loopmdm.cli import main; main()", "sample", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_sample_cli_takes_the_fast_sampling_options(tiny_run):
    p = _cli(
        "--checkpoint",
        str(tiny_run),
        "--sampler",
        "semi_ar",
        "--sampler-opt",
        "block_length=8",
        "--sampler-opt",
        "cache=dual",
        "--sampler-opt",
        "threshold=0.3",
        "--sampler-opt",
        "refresh=4",
        "--length",
        "20",
        "--steps",
        "20",
        "--num-samples",
        "2",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["sampler_options"] == {
        "block_length": 8,
        "cache": "dual",
        "threshold": 0.3,
        "refresh": 4,
    }
    rep = out["results"][0]["report"]
    assert (
        rep["cached_calls"] > 0
        and rep["tokens_per_s"] > 0
        and rep["steps_run"] <= 20
        and rep["notes"]
    )
    text = _cli(
        "--checkpoint",
        str(tiny_run),
        "--sampler",
        "confidence",
        "--sampler-opt",
        "cache=loops",
        "--length",
        "16",
        "--steps",
        "16",
        "--num-samples",
        "1",
    )
    assert (
        text.returncode == 0
        and "through the key / value cache" in text.stdout
        and "tokens/s" in text.stdout
    )
    bad = _cli(
        "--checkpoint", str(tiny_run), "--sampler", "confidence", "--sampler-opt", "cache=dual"
    )
    assert (
        bad.returncode == 2
        and "Traceback" not in bad.stderr
        and len(bad.stderr.strip().splitlines()) == 1
    )
    assert "option of sampler semi_ar" in bad.stderr


def test_refresh_cadence_and_block_boundaries(trained):
    """refresh=r recomputes everything every r calls; prefix / dual also at every block boundary. (With a prompt:
    otherwise the second call has nothing settled yet, recomputes every position and counts as a refresh.)"""
    model, tok, _ = trained
    kw = dict(num_samples=2, length=24, steps=24, seed=0, prompt="def")
    r = generate(
        model, tok, sampler="confidence", sampler_options={"cache": "delayed", "refresh": 4}, **kw
    ).report
    assert r.network_calls == 24 and r.cache_refreshes == 6 and r.cached_calls == 18
    r = generate(
        model, tok, sampler="confidence", sampler_options={"cache": "delayed"}, **kw
    ).report
    assert r.cache_refreshes == 1  # the first call only
    r = generate(
        model, tok, sampler="semi_ar", sampler_options={"block_length": 8, "cache": "dual"}, **kw
    ).report
    assert r.cache_refreshes == 3 and r.cached_calls == 21  # one per block of 8 steps
    r = generate(
        model,
        tok,
        sampler="semi_ar",
        sampler_options={"block_length": 8, "cache": "dual", "refresh": 4},
        **kw,
    ).report
    assert r.cache_refreshes == 6


def test_the_cache_keeps_no_view_of_the_fused_qkv_buffer():
    """The cached values own a [B, H, T, hd] buffer, not a view that keeps the whole [B, T, 3D] qkv output alive."""
    from loopmdm.model import LoopMDM, ModelConfig
    from loopmdm.model.layers import Rotary

    m = LoopMDM(
        ModelConfig(
            vocab_size=20,
            max_seq_len=8,
            d_model=16,
            n_heads=2,
            n_layers=3,
            n_h=1,
            n_m=1,
            n_o=1,
            time_conditioning="none",
        )
    )
    attn = m.head.blocks[0].attn
    cache: dict = {}
    x = torch.randn(2, 8, 16)
    attn(x, Rotary(8, 8, 10000.0)(8), None, False, LayerCache(cache, None))
    v = cache["v"]
    assert v.is_contiguous() and v.untyped_storage().nbytes() == v.numel() * v.element_size()
