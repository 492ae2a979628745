"""The curriculum over S (``diffusion.loop_curriculum_steps``): the largest S ramps from 1 to S_max, the mean loop
count grows, each step's stage is a function of the step alone, FLOP planning follows the ramp, and a training
run draws S within each step's cap and resumes exactly."""

import json

import pytest
import torch

from loopmdm.config import DiffusionConfig
from loopmdm.diffusion import CurriculumLoops, make_loop_distribution
from loopmdm.errors import ConfigError
from loopmdm.train import train


def dist(**kw):
    return make_loop_distribution(DiffusionConfig(**kw), total_steps=kw.pop("total", None))


def test_caps_ramp_linearly_from_one_to_s_max():
    d = dist(s_max=4, loop_curriculum_steps=90)
    assert isinstance(d, CurriculumLoops)
    assert [d.cap(k) for k in (0, 29, 30, 59, 60, 89, 90, 10_000)] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert d.pmf() == pytest.approx({s: 0.25 for s in range(1, 5)}) and d.max() == 4
    assert d.pmf_at(0) == {1: 1.0} and d.pmf_at(45) == pytest.approx({1: 0.5, 2: 0.5})
    means = [sum(s * p for s, p in d.pmf_at(k).items()) for k in range(0, 120, 10)]
    assert means == sorted(means) and means[0] == 1.0 and means[-1] == 2.5


def test_draws_stay_within_the_cap_and_depend_on_the_step_alone():
    d = dist(s_max=6, loop_curriculum_steps=50, loop_dist="balanced")
    g = torch.Generator().manual_seed(0)
    draws = [d.sample(g, k) for k in range(80)]
    assert all(1 <= s <= d.cap(k) for k, s in enumerate(draws))
    assert max(draws[:8]) == 1 and max(draws[60:]) > 3
    g2 = torch.Generator().manual_seed(0)  # the same generator state and steps: the same draws
    assert [d.sample(g2, k) for k in range(80)] == draws


def test_expected_cost_over_a_run_follows_the_ramp():
    d = dist(s_max=4, loop_curriculum_steps=40)  # caps 1 (steps 0-13), 2 (14-26), 3 (27-39), then 4
    ramp = 14 * 1 + 13 * 1.5 + 13 * 2  # E[S] of U{1..c} is (c + 1) / 2
    assert d.expect_over(lambda s: s, 40) == pytest.approx(ramp)
    assert d.expect_over(lambda s: s, 100) == pytest.approx(ramp + 60 * 2.5)
    assert dist(s_max=4).expect_over(lambda s: s, 40) == pytest.approx(40 * 2.5)


def test_off_by_default_and_validated():
    assert not isinstance(dist(s_max=4), CurriculumLoops)
    # nothing to ramp
    assert not isinstance(dist(s_max=1, loop_curriculum_steps=10), CurriculumLoops)
    with pytest.raises(ConfigError, match="loop_curriculum_steps=-1 must be >= 0"):
        DiffusionConfig(loop_curriculum_steps=-1).validate()
    fixed = dist(loop_dist="fixed", s_fixed=3, loop_curriculum_steps=30)
    assert [fixed.sample(None, k) for k in (0, 15, 29, 30)] == [1, 2, 2, 3]


def test_training_with_a_curriculum_draws_within_the_cap_and_resumes_exactly(tiny_cfg, tmp_path):
    cfg = tiny_cfg
    cfg.diffusion.loop_curriculum_steps, cfg.train.max_steps, cfg.train.save_every = 6, 8, 4
    full = train(cfg, tmp_path / "full", progress=False, log=lambda s: None)
    rows = [json.loads(x) for x in (full.run_dir / "metrics.jsonl").read_text().splitlines()]
    cap = make_loop_distribution(cfg.diffusion).cap
    assert all(r["loops"] <= cap(r["step"] - 1) for r in rows)
    assert rows[0]["loops"] == 1
    half = full.run_dir / "checkpoints" / "step_000004"
    resumed = train(cfg, tmp_path / "again", resume=half, progress=False, log=lambda s: None)
    again = [json.loads(x) for x in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["loops"] for r in again] == [r["loops"] for r in rows[4:]]
    assert resumed.final_loss == pytest.approx(full.final_loss, rel=1e-6)
