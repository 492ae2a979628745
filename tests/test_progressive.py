"""Progressive unmasking (PUMA, ``loopmdm.diffusion.progressive``): stages spread over the pool, each row's
revealed share inside its stage's interval, masks that only shrink until a row is replaced, the most confident
positions revealed first, frozen positions never masked, and a ``Noise`` that reproduces the pool's masks."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from loopmdm.diffusion import Batch, get_schedule, q_sample
from loopmdm.diffusion.progressive import ProgressivePool, spread_stages, top_k_mask

B, L, K, MASK = 24, 20, 4, 99


def rows(n: int, seed: int, frozen_prefix: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, 50, (n, L), generator=g)
    frozen = None
    if frozen_prefix:
        frozen = torch.zeros(n, L, dtype=torch.bool)
        frozen[:, :frozen_prefix] = True
    return Batch(x0, frozen)


def shown_share(pool: ProgressivePool) -> torch.Tensor:
    free = torch.ones_like(pool.masked) if pool.frozen is None else ~pool.frozen
    return (free & ~pool.masked).sum(1).float() / free.sum(1).float()


def test_stages_are_spread_evenly():
    s = spread_stages(B, K, torch.Generator().manual_seed(0))
    assert torch.bincount(s, minlength=K).tolist() == [B // K] * K


def test_each_rows_share_lies_in_its_stage_and_frozen_positions_stay_given():
    gen = torch.Generator().manual_seed(1)
    pool = ProgressivePool.start(K, rows(B, 0, frozen_prefix=4), gen)
    n_free = L - 4
    for _ in range(2 * K):
        share = shown_share(pool)
        lo = torch.floor(pool.stage.float() / K * n_free) / n_free
        hi = torch.round((pool.stage.float() + 1) / K * n_free) / n_free
        assert ((share >= lo - 1e-6) & (share <= hi + 1e-6)).all()
        # every row keeps a mask
        assert not (pool.masked & pool.frozen).any() and pool.masked.any(1).all()
        pool.advance(torch.rand(B, L, generator=gen), lambda n: rows(n, 7, frozen_prefix=4), gen)


def test_masks_only_shrink_until_a_row_is_replaced():
    gen = torch.Generator().manual_seed(2)
    pool = ProgressivePool.start(K, rows(B, 0), gen)
    taken = []

    def take(n):
        taken.append(n)
        return rows(n, 100 + len(taken))

    for _ in range(3 * K):
        before, stage = pool.masked.clone(), pool.stage.clone()
        replaced = pool.advance(torch.rand(B, L, generator=gen), take, gen)
        kept = stage < K - 1
        assert replaced == int((~kept).sum()) and (pool.stage[~kept] == 0).all()
        assert (pool.stage[kept] == stage[kept] + 1).all()
        assert not (pool.masked[kept] & ~before[kept]).any()  # nothing re-masked
    assert sum(taken) == 3 * B  # every row is replaced once per K steps


def test_the_most_confident_masked_positions_are_revealed_first():
    masked = torch.tensor([[True, True, False, True, True]])
    score = torch.tensor([[0.1, 0.9, 5.0, 0.5, 0.9]])
    out = top_k_mask(masked, score, torch.tensor([2]))
    # 0.9 twice (ties: earlier first); 5.0 not masked
    assert out.tolist() == [[False, True, False, False, True]]
    gen = torch.Generator().manual_seed(3)
    pool = ProgressivePool.start(K, rows(B, 0), gen)
    pool.stage.zero_()
    score = torch.arange(L).float().expand(B, L)  # later positions more confident
    before = pool.masked.clone()
    pool.advance(score, lambda n: rows(n, 9), gen)
    newly = before & ~pool.masked
    for b in range(B):
        if newly[b].any():  # the revealed ones are the last masked positions
            last = before[b].nonzero().flatten()[-int(newly[b].sum()) :]
            assert newly[b].nonzero().flatten().tolist() == last.tolist()


def test_noise_reproduces_the_pools_masks_and_weights():
    gen = torch.Generator().manual_seed(4)
    pool = ProgressivePool.start(K, rows(B, 0, frozen_prefix=3), gen)
    for name in ("loglinear", "cosine"):
        sched = get_schedule(name)
        noise = pool.noise(sched)
        x_t = q_sample(pool.batch(), noise, sched.alpha(noise.t), MASK)
        assert torch.equal(x_t == MASK, pool.masked)
        share = pool.masked.sum(1).float() / (L - 3)
        assert torch.allclose(1 - sched.alpha(noise.t), share, atol=1e-5)
    loglinear = pool.noise(get_schedule("loglinear"))
    assert torch.allclose(get_schedule("loglinear").weight(loglinear.t), 1 / share, rtol=1e-5)


def test_state_round_trip():
    gen = torch.Generator().manual_seed(5)
    pool = ProgressivePool.start(K, rows(B, 0, frozen_prefix=2), gen)
    again = ProgressivePool.from_state(K, pool.state_dict())
    for k, v in pool.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    g1, g2 = torch.Generator().manual_seed(6), torch.Generator().manual_seed(6)
    score = torch.rand(B, L, generator=torch.Generator().manual_seed(0))
    pool.advance(score, lambda n: rows(n, 8, 2), g1)
    again.advance(score, lambda n: rows(n, 8, 2), g2)
    assert torch.equal(pool.masked, again.masked) and torch.equal(pool.x0, again.x0)


# ---------------------------------------------------------------- wired into the objective and the trainer


def test_scores_are_the_true_tokens_probability_on_the_sparse_and_dense_paths():
    """``LossOutput.scores``: p(x0 | x_t) at the masked positions, 0 elsewhere; the sparse path (no full logits)
    gives what the full logits give; nothing is scored without gradients (validation)."""
    from loopmdm.diffusion import MaskedDiffusion, Noise
    from loopmdm.model import LoopMDM, ModelConfig
    from loopmdm.model.subs import subs_log_probs

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=MASK + 1, max_seq_len=L, d_model=32, n_heads=2, n_layers=3,
                      n_h=1, n_m=1, n_o=1, cond_dim=16)  # fmt: skip
    model = LoopMDM(cfg)
    obj = MaskedDiffusion(get_schedule("loglinear"), mask_id=MASK)
    obj.score_tokens = True
    gen = torch.Generator().manual_seed(1)
    pool = ProgressivePool.start(K, rows(6, 0), gen)
    batch, noise = pool.batch(), pool.noise(obj.schedule)
    sparse = obj.loss(model, batch, 2, noise).scores

    class Dense(
        torch.nn.Module
    ):  # the same weights behind full logits only: the objective's dense path
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x_t, t=None, loops=1, attention_mask=None):
            return self.inner(x_t, t, loops=loops)

    dense = obj.loss(Dense(), batch, 2, noise).scores
    x_t = q_sample(batch, noise, obj.schedule.alpha(noise.t), MASK)
    logp = subs_log_probs(model(x_t, noise.t, loops=2), x_t, MASK)
    want = torch.where(pool.masked, logp.gather(-1, batch.x0[..., None]).squeeze(-1).exp(), 0.0)
    assert torch.allclose(sparse, want, atol=1e-5) and torch.allclose(dense, want, atol=1e-5)
    with torch.no_grad():
        assert obj.loss(model, batch, 2, Noise(noise.t, noise.u)).scores is None


def progressive_cfg(tiny_cfg, stages=4):
    cfg = copy.deepcopy(tiny_cfg)
    cfg.diffusion.progressive_stages = stages
    cfg.train.max_steps, cfg.train.save_every, cfg.train.eval_every = 8, 3, 4
    cfg.train.grad_accum = 2
    return cfg.validate()


def test_training_follows_the_pool_and_resumes_exactly(tiny_cfg, tmp_path):
    """The trainer trains on the pool's masks (stages advance, rows are replaced), saves the pool with each
    checkpoint, and a run stopped at step 5 and resumed ends with the weights and pool of an unbroken run."""
    from loopmdm.checkpoint import load_safetensors, resolve_checkpoint
    from loopmdm.train import Trainer

    def trainer(folder):
        return Trainer(progressive_cfg(tiny_cfg), folder, progress=False, log=lambda s: None)

    full = trainer(tmp_path / "full")
    seen = []
    inner = full._step
    full._step = lambda idx, loops: (
        seen.append(full.pool and full.pool.stage.clone()),
        inner(idx, loops),
    )[1]
    full.fit()
    assert seen[0] is None and full.pool is not None
    assert torch.equal(
        full.pool.stage, (seen[-1] + 1) % K
    )  # one stage per step, K-1 wraps to a fresh row
    part = trainer(tmp_path / "part")
    inner_part = part._step

    def stop_at_5(idx, loops):
        out = inner_part(idx, loops)
        part.stop_requested = part.step + 1 >= 5
        return out

    part._step = stop_at_5
    assert part.fit().step == 5
    resumed = trainer(tmp_path / "part")
    resumed.resume(tmp_path / "part")
    assert resumed.pool is not None
    resumed.fit()
    for f in ("model.safetensors", "pool.safetensors"):
        a, b = (load_safetensors(resolve_checkpoint(tmp_path / d) / f) for d in ("full", "part"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f


@pytest.mark.parametrize(
    "change, words",
    [
        ({"progressive_stages": 1}, "must be 0 (off) or in 2..1024"),
        ({"progressive_stages": 4, "complementary_masks": True}, "complementary_masks=true"),
        ({"progressive_stages": 4, "t_sampler": "bell"}, "t_sampler='bell'"),
    ],
)
def test_bad_progressive_settings_get_one_line_errors(tiny_cfg, change, words):
    from loopmdm.errors import ConfigError

    cfg = copy.deepcopy(tiny_cfg)
    for k, v in change.items():
        setattr(cfg.diffusion, k, v)
    with pytest.raises(ConfigError, match=re.escape(words)) as e:
        cfg.validate()
    assert "\n" not in str(e.value)
