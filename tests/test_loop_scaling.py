"""The loop-scaling study: the budget plan (equal FLOPs within 2% at every budget, plus the equal-steps baseline
with LoopMDM's steps), its bad inputs, the plateau exit, the trend fit (plateau budgets left out, bootstrap
interval) and its zero crossing on synthetic points, one validation set for every run, and an end-to-end tiny
study that resumes from its run folders and records curves, plateau steps, fingerprint and versions."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from loopmdm.checkpoint import load_model
from loopmdm.data import prepare_data
from loopmdm.errors import ConfigError
from loopmdm.experiments.compute_matched import _finalize_run_config
from loopmdm.experiments.curves import Curve, plateau_exit_step, read_curve, unigram_cross_entropy
from loopmdm.experiments.loop_scaling import (
    EQUAL_STEPS,
    FLOP_PROPORTIONAL,
    FixedValidation,
    budget_plans,
    fit_trend,
    parse_shard,
    run_fits,
    run_list,
    run_loop_scaling,
    shard_assignment,
)
from loopmdm.experiments.loop_scaling_config import LoopScalingConfig, load_loop_scaling_config
from loopmdm.model import LoopMDM


def study(tiny_cfg, **kw) -> LoopScalingConfig:
    cfg = LoopScalingConfig(
        name="test",
        run=copy.deepcopy(tiny_cfg),
        seeds=[0, 1],
        n_evals=2,
        final_eval_batches=2,
        budgets=[3e9, 6e9],
        seeds_per_budget=[1, 2],
        bootstrap=200,
    )
    cfg.run.train.eval_batches = 1
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg.validate()


def test_every_budget_is_matched_within_two_percent_and_has_the_equal_steps_baseline():
    cfg = load_loop_scaling_config("laptop")
    plans = budget_plans(cfg)
    assert len(plans) == 4 and cfg.budgets[-1] / cfg.budgets[0] >= 30
    for budget, plan in zip(cfg.budgets, plans):
        assert [r.name for r in plan.runs] == [
            "mdm",
            "loopmdm",
            "deeper",
            EQUAL_STEPS,
            FLOP_PROPORTIONAL,
        ]
        flops = {r.name: r.planned_flops for r in plan.runs if r.name != EQUAL_STEPS}
        assert abs(flops["mdm"] - budget) / budget < 0.02
        assert (max(flops.values()) - min(flops.values())) / max(flops.values()) < 0.02
        steps = {r.name: r.steps for r in plan.runs}
        assert steps["mdm"] > steps["loopmdm"] == steps["deeper"] == steps[EQUAL_STEPS]
        # (a') is (a)'s model and recipe, only the steps differ
        a, a_eq = (plan.run("mdm"), plan.run(EQUAL_STEPS))
        assert a_eq.cfg.to_dict() == a.cfg.to_dict() and a_eq.cfg.diffusion.loop_dist == "fixed"
        assert a_eq.planned_flops == pytest.approx(steps["loopmdm"] * a.flops_per_step)
        assert a_eq.planned_flops < 0.8 * budget
        # (b') takes more steps than (b): p(S) proportional to 1 / F(S) draws the cheap loop counts more often
        b_prime = plan.run(FLOP_PROPORTIONAL)
        assert (
            b_prime.cfg.diffusion.loop_dist == "flop_proportional"
            and b_prime.steps > steps["loopmdm"]
        )
        # trained as one stratified sample of p(S) (exact compute matching), and labelled with its S_max
        assert (
            _finalize_run_config(b_prime, 0, cfg).diffusion.loop_dist
            == "balanced_flop_proportional"
        )
        assert b_prime.summary()["s_max"] == cfg.run.diffusion.s_max
    runs = run_list(cfg, plans)
    assert len(runs) == 5 * sum(len(cfg.budget_seeds(i)) for i in range(len(cfg.budgets)))
    # the budgets that decide the trend
    assert all(len(cfg.budget_seeds(i)) >= 5 for i in (1, 2, 3))
    owner = shard_assignment(runs, 2)  # both shards get about the same planned FLOPs
    load = [
        sum(rp.planned_flops for k, (_, _, rp) in zip(owner, runs) if k == shard)
        for shard in (0, 1)
    ]
    assert set(owner) == {0, 1} and abs(load[0] - load[1]) / max(load) < 0.05


def test_bad_budgets_and_seeds_are_one_line_errors(tiny_cfg):
    with pytest.raises(ConfigError, match="must be increasing"):
        study(tiny_cfg, budgets=[1e9, 5e8])
    with pytest.raises(ConfigError, match="one per budget"):
        study(tiny_cfg, seeds_per_budget=[1])
    with pytest.raises(ConfigError, match="asks for 3 seeds"):
        study(tiny_cfg, seeds_per_budget=[1, 3])
    with pytest.raises(ConfigError, match="distinct seeds"):
        study(tiny_cfg, seeds_per_budget=[1, [4, 4]])
    # explicit seeds per budget
    assert study(tiny_cfg, seeds_per_budget=[1, [7, 9]]).budget_seeds(1) == [7, 9]
    with pytest.raises(
        ConfigError, match=r"budget 1e\+06 FLOPs cannot be matched: .*raise baseline_steps"
    ):
        budget_plans(study(tiny_cfg, budgets=[1e6, 6e9]))
    with pytest.raises(ConfigError, match="K/N"):
        parse_shard("half")


def test_plateau_exit_is_the_first_point_a_quarter_nat_below_the_unigram_plateau():
    curve = Curve(
        flops=[1.0, 2.0, 3.0, 4.0, 5.0],
        nelbo=[6.30, 6.10, 5.96, 5.90, 5.20],
        steps=[10, 20, 30, 40, 50],
    )
    assert plateau_exit_step(curve, 6.2) == 40  # 5.96 is only 0.24 below; 5.90 is 0.30 below
    assert plateau_exit_step(curve, 6.2, margin=0.5) == 50
    assert plateau_exit_step(curve, 5.3) is None  # never 0.25 below
    # p(0) = (2 + 1) / 5, p(1) = (1 + 1) / 5 (add-one); the validation tokens 0 and 1 once each
    h = unigram_cross_entropy(np.array([[0, 0, 1]]), np.array([[0, 1]]), vocab_size=2)
    assert h == pytest.approx(-(math.log(0.6) + math.log(0.4)) / 2)


def _rows(budgets, gain, seeds=(0, 1, 2), on_plateau=(), noise=0.005):
    rng = np.random.default_rng(0)
    return [
        {
            "budget": b,
            "per_seed": {
                s: {
                    "gain_equal_flops": gain(b) + rng.normal(0, noise),
                    "left_plateau": {"mdm": b not in on_plateau, "loopmdm": True},
                }
                for s in seeds
            },
        }
        for b in budgets
    ]


def test_trend_fit_leaves_out_plateau_budgets_and_bootstraps_its_slope():
    budgets = [1e11, 1e12, 1e13, 1e14, 1e15]
    line = lambda b: -0.3 + 0.1 * (math.log10(b) - 12)  # noqa: E731
    # the 1e11 points are on the plateau (gain about 0 there, far off the line): they must not enter the fit
    rows = _rows(budgets, lambda b: 0.0 if b == 1e11 else line(b), on_plateau=(1e11,))
    trend = fit_trend(rows, bootstrap=500)
    assert (
        trend["budgets_used"] == budgets[1:]
        and trend["budgets_excluded"] == [1e11]
        and trend["points"] == 12
    )
    assert trend["slope_per_decade"] == pytest.approx(0.1, abs=0.01)
    assert trend["crossing_budget"] == pytest.approx(1e15, rel=0.3)  # -0.3 + 0.1 * 3 = 0 at 1e15
    lo, hi = trend["slope_interval_95"]
    assert lo < trend["slope_per_decade"] < hi and hi - lo < 0.02
    clo, chi = trend["crossing_interval_95"]
    assert clo < trend["crossing_budget"] < chi
    with_plateau = fit_trend(_rows(budgets, lambda b: 0.0 if b == 1e11 else line(b)), bootstrap=100)
    # what including the plateau point would have done
    assert with_plateau["slope_per_decade"] < 0.09
    # the interval widens with seed noise
    noisy = fit_trend(_rows(budgets[1:], line, noise=0.1), bootstrap=500)
    assert noisy["slope_interval_95"][1] - noisy["slope_interval_95"][0] > 5 * (hi - lo)
    assert noisy["slope_interval_95"][0] < noisy["slope_per_decade"] < noisy["slope_interval_95"][1]
    flat = [
        {
            "budget": b,
            "per_seed": {
                0: {
                    "gain_equal_flops": -0.3 - 0.01 * i,
                    "left_plateau": {"mdm": True, "loopmdm": True},
                }
            },
        }
        for i, b in enumerate(budgets)
    ]
    # heading away from zero: no crossing
    assert fit_trend(flat, bootstrap=100)["crossing_budget"] is None
    # heading towards zero so slowly that it crosses past float range (an OverflowError before): no crossing
    nearly_flat = _rows([1e12, 1e13], lambda b: -0.1 + 1e-4 * math.log10(b), noise=0.0)
    slow = fit_trend(nearly_flat, bootstrap=50)
    assert slow["slope_per_decade"] > 0 and slow["crossing_budget"] is None
    one = fit_trend(_rows(budgets, line, on_plateau=budgets[:-1]), bootstrap=100)
    assert (
        one["slope_per_decade"] is None
        and one["note"] == "no trend: fewer than two budgets past the plateau"
    )


def test_the_trend_is_refitted_with_other_plateau_margins():
    """Whether a budget counts as past the plateau decides whether there is a trend at all; the report refits it
    with other margins from the stored curves (budget 1e12's runs reach H - 0.2 only: past it at margin 0.15)."""
    from loopmdm.experiments.loop_scaling_report import margin_sensitivity

    H = 6.0

    def point(gain, low):
        curve = {"step": [10, 20], "flops": [1.0, 2.0], "val_nelbo": [H, H - low]}
        return {"gain_equal_flops": gain, "curves": {"mdm": curve, "loopmdm": curve}}

    rows = [
        {"budget": b, "per_seed": {s: point(g + 0.01 * s, low) for s in range(3)}}
        for b, g, low in ((1e12, -0.3, 0.2), (1e13, -0.2, 1.0), (1e14, -0.1, 1.0))
    ]
    fits = margin_sensitivity(rows, H, (0.15, 0.25), bootstrap=50)
    assert fits["0.15"]["budgets_used"] == [1e12, 1e13, 1e14]
    assert fits["0.15"]["slope_per_decade"] == pytest.approx(0.1)
    assert fits["0.25"]["budgets_used"] == [1e13, 1e14] and fits["0.25"]["points"] == 6


def test_every_model_is_validated_on_the_same_rows_and_noise(tiny_cfg):
    cfg = study(tiny_cfg)
    data = prepare_data(cfg.run.data, cfg.run.model.vocab_size, cfg.run.model.max_seq_len)
    cfg.run.model.vocab_size = data.tokenizer.vocab_size
    plan = budget_plans(cfg)[0]
    seen = {}
    for name, seed in (("mdm", 0), ("deeper", 1)):  # two architectures, two training seeds
        torch.manual_seed(seed)
        model = LoopMDM(plan.run(name).cfg.model).eval()
        calls = []
        model.register_forward_pre_hook(
            lambda m, args, calls=calls: calls.append((args[0].clone(), args[1].clone()))
        )
        r = FixedValidation.of(cfg, data).evaluate(model, 1, 2)
        seen[name] = (calls, r)
    (ca, ra), (cb, rb) = seen["mdm"], seen["deeper"]
    assert len(ca) == len(cb) == 2 and ra["tokens"] == rb["tokens"] and ra["rows"] == rb["rows"]
    for (xa, ta), (xb, tb) in zip(ca, cb):
        assert torch.equal(xa, xb) and torch.equal(ta, tb)  # same rows, same masks, same t
    assert ra["nelbo"] != rb["nelbo"]
    # the rows are a fixed random sample of the whole validation set, not its first rows (a few files), and the
    # curve's batches are the first batches of the final evaluation's
    val = FixedValidation.of(cfg, data)
    order = val.row_order()
    assert sorted(order.tolist()) == list(range(len(data.val))) and order[:8].tolist() != list(
        range(8)
    )
    two, four = val.rows(2)[0], val.rows(4)[0]
    assert np.array_equal(two, data.val[order[: len(two)]]) and np.array_equal(
        four[: len(two)], two
    )
    other = copy.deepcopy(cfg)
    other.eval_seed += 1  # another validation seed: other noise
    calls = []
    model = LoopMDM(plan.run("mdm").cfg.model).eval()
    model.register_forward_pre_hook(lambda m, args: calls.append(args[1].clone()))
    FixedValidation.of(other, data).evaluate(model, 1, 1)
    assert not torch.equal(calls[0], ca[0][1])


def test_a_tiny_study_runs_resumes_and_records_its_evidence(tiny_cfg, tmp_path, monkeypatch):
    import loopmdm.experiments.loop_scaling as ls

    cfg = study(tiny_cfg, flop_proportional_arm=True)
    out = tmp_path / "study"
    rates: list = []  # the --stop-after estimate each run is gated with

    def spy(elapsed_s, limit_s, planned_flops, s_per_flop):
        rates.append(s_per_flop)
        return True

    monkeypatch.setattr(ls, "run_fits", spy)
    # half the runs, no report
    assert run_loop_scaling(cfg, out, shard="0/2", log=lambda s: None, stop_after_min=60) is None
    half = len(rates)
    assert rates[0] is None and all(r > 0 for r in rates[1:])  # measured from the runs trained
    # the other half, then the report: the finished runs are not gated (they need no time) and teach no rate
    res = run_loop_scaling(cfg, out, log=lambda s: None, stop_after_min=60)
    assert len(rates) == len(run_list(cfg, budget_plans(cfg))) and rates[half] is None
    rows = res["rows"]
    assert [r["budget"] for r in rows] == cfg.budgets and [len(r["seeds"]) for r in rows] == [1, 2]
    for r in rows:
        for p in r["per_seed"].values():
            assert set(p["loopmdm"]) == {1, 3, 6} and math.isfinite(p["gain_equal_flops"])
            assert set(p[FLOP_PROPORTIONAL]) == {1, 3, 6}
            assert p["gain_equal_flops_flop_proportional"] == pytest.approx(
                p["mdm"] - p[FLOP_PROPORTIONAL][3]
            )
            # trained to the budget: one stratified sample of p(S) (balanced_flop_proportional) spends (a)'s
            # FLOPs to within a step's rounding (independent draws: up to 10% at these step counts)
            assert abs(p["flops"][FLOP_PROPORTIONAL] / p["flops"]["mdm"] - 1) < 0.02, p["flops"]
            assert p["gain_equal_steps"] == pytest.approx(p[EQUAL_STEPS] - p["loopmdm"][3])
            assert p["gain_equal_flops_stderr"] > 0 and p["gain_equal_steps_stderr"] > 0
            assert p["steps"][EQUAL_STEPS] == p["steps"]["loopmdm"] < p["steps"]["mdm"]
            for name in ("mdm", "loopmdm", "deeper", EQUAL_STEPS):
                c = p["curves"][name]
                assert len(c["step"]) == len(c["flops"]) == len(c["val_nelbo"]) >= 2
                assert c["step"][-1] == p["steps"][name] and name in p["plateau_exit_step"]
                assert p["final"][name][1]["stderr"] > 0
    saved = json.loads((out / "results.json").read_text())
    assert (
        saved["data_fingerprint"]["source_fingerprint"]
        and len(saved["data_fingerprint"]["val_rows_sha256"]) == 64
    )
    assert saved["corpus"]["source"] == cfg.run.data.source
    assert (
        saved["software"]["python"] and saved["software"]["torch"] and saved["software"]["loopmdm"]
    )
    val = saved["validation"]
    assert (
        val["eval_seed"] == cfg.eval_seed
        and val["final"]["batches"] == 2
        and val["final"]["tokens"] > 0
    )
    assert saved["plateau"]["H"] > 0 and saved["plateau"]["margin"] == 0.25
    p0 = saved["rows"][0]["per_seed"]["0"]
    assert set(p0["curves"]["mdm"]) == {"step", "flops", "val_nelbo"} and set(
        p0["plateau_exit_step"]
    ) == {"mdm", "loopmdm", "deeper", EQUAL_STEPS, FLOP_PROPORTIONAL}
    assert saved["trend_flop_proportional"]["gain"] == "gain_equal_flops_flop_proportional"
    assert set(saved["trend_margin_sensitivity"]) == {"0.15", "0.35"}
    summary = (out / "summary.md").read_text()
    assert "p(S) proportional to 1 / F(S), the same budgets" in summary
    # a FLOPs ratio says over how many seeds it is a mean (the others never reached (a)'s final NELBO)
    for r in rows:
        sp = r["flops_ratio"]
        assert len(sp["values"]) == len(r["seeds"])
        assert ("never (0 of" in summary) or (sp["mean"] is not None)
    trend = saved["trend"]  # tiny runs stay on the plateau: no fit through them
    assert trend["points"] == sum(
        len(r["seeds"]) for r in rows if r["past_plateau"]["gain_equal_flops"]
    )
    if trend["slope_per_decade"] is None:
        assert trend["note"] == "no trend: fewer than two budgets past the plateau"
    assert (out / "loop_gain.png").is_file() and "rows sha256" in (out / "summary.md").read_text()
    # the curve was evaluated on the study's validation set, not on rows drawn with the training seed
    run_dir = out / "budget_1" / "seed_1" / "loopmdm"
    model = load_model(run_dir, ema=None)[0].eval()
    data = prepare_data(cfg.run.data, cfg.run.model.vocab_size, cfg.run.model.max_seq_len)
    refit = FixedValidation.of(cfg, data).evaluate(model, 3, cfg.run.train.eval_batches)
    assert read_curve(run_dir / "metrics.jsonl").final == pytest.approx(refit["nelbo"], abs=1e-5)
    again = run_loop_scaling(cfg, out, log=lambda s: None)  # everything reused: same numbers
    assert (
        again["rows"][1]["gain_equal_flops"]["mean"] == res["rows"][1]["gain_equal_flops"]["mean"]
    )
    assert (
        again["rows"][1]["gain_equal_steps"]["mean"] == res["rows"][1]["gain_equal_steps"]["mean"]
    )
    # a finished run whose checkpoints were deleted is reported from its record (config, data digests, final
    # evaluation, curve), not retrained: the numbers are the record's, whatever they say
    import shutil

    record_path = run_dir / "experiment_run.json"
    record = json.loads(record_path.read_text())
    assert (
        record["finished"]["data"]["val_rows_sha256"]
        == saved["data_fingerprint"]["val_rows_sha256"]
    )
    for r in record["final_eval"]["results"].values():
        r["nelbo"] = 123.0
    record_path.write_text(json.dumps(record))
    shutil.rmtree(run_dir / "checkpoints")
    from_record = run_loop_scaling(cfg, out, log=lambda s: None)
    assert from_record["rows"][1]["per_seed"][1]["loopmdm"][3] == 123.0
    assert not (run_dir / "checkpoints").exists()  # nothing was trained
    # the study moves to another machine as its records alone (docs/results.md): the same report, nothing trained
    moved = tmp_path / "moved"
    for r in out.glob("budget_*/seed_*/*/experiment_run.json"):
        dest = moved / r.parent.relative_to(out)
        dest.mkdir(parents=True)
        for name in ("experiment_run.json", "metrics.jsonl"):
            shutil.copy(r.parent / name, dest / name)
    # (--stop-after 0 stops no run that needs no training)
    again_moved = run_loop_scaling(cfg, moved, log=lambda s: None, stop_after_min=0)
    assert again_moved["rows"] == from_record["rows"]
    assert not list(moved.glob("budget_*/seed_*/*/checkpoints"))
    # a record without weights is refused like a run with them: another config, another validation set
    changed = copy.deepcopy(cfg)
    changed.run.train.lr *= 2
    with pytest.raises(ConfigError, match="holds a run with another config .*train.lr"):
        run_loop_scaling(changed, moved, log=lambda s: None)
    other_set = copy.deepcopy(cfg)
    other_set.eval_seed += 1
    with pytest.raises(ConfigError, match="validation curve was evaluated on another set"):
        run_loop_scaling(other_set, moved, log=lambda s: None)
    (moved / "budget_0" / "seed_0" / "mdm" / "metrics.jsonl").unlink()  # a record copied alone
    with pytest.raises(ConfigError, match="keeps no weights and its metrics.jsonl is missing"):
        run_loop_scaling(cfg, moved, log=lambda s: None)
    # an evaluation the record lacks needs the weights: a one-line error, not a retraining
    wider = copy.deepcopy(cfg)
    wider.final_eval_batches = 3
    with pytest.raises(ConfigError, match="keeps no weights .* delete that folder to retrain"):
        run_loop_scaling(wider, out, log=lambda s: None)
    # the record of other data (another corpus or Python) is refused
    record["finished"]["data"]["train_rows_sha256"] = "0" * 64
    record_path.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="trained on other data"):
        run_loop_scaling(cfg, out, log=lambda s: None)
    # a record cut before its evaluation, without checkpoints (a run stopped, its checkpoints deleted) trains anew
    del record["final_eval"]
    record_path.write_text(json.dumps(record))
    retrained = run_loop_scaling(cfg, out, log=lambda s: None)
    assert retrained["rows"][1]["per_seed"][1]["loopmdm"][3] == pytest.approx(
        res["rows"][1]["per_seed"][1]["loopmdm"][3]
    )
    changed = copy.deepcopy(cfg)
    changed.run.train.lr *= 2
    with pytest.raises(ConfigError, match="holds a run with another config .*train.lr"):
        run_loop_scaling(changed, out, log=lambda s: None)
    other_set = copy.deepcopy(cfg)
    other_set.eval_seed += 1  # the curves in the folders were evaluated on another validation set
    with pytest.raises(ConfigError, match="validation curve was evaluated on another set"):
        run_loop_scaling(other_set, out, log=lambda s: None)


def test_stop_after_starts_no_run_expected_to_end_past_the_limit(tiny_cfg, tmp_path):
    # 10 min into a 60-min limit, at 1 s per 1e9 planned FLOPs: 2e12 FLOPs (2000 s) fits, 4e12 does not
    assert run_fits(600, 3600, 2e12, 1e-9) and not run_fits(600, 3600, 4e12, 1e-9)
    assert run_fits(600, 3600, 1e20, None)  # nothing measured yet: a run starts while time is left
    assert not run_fits(3600, 3600, 1.0, None)
    logs: list = []
    out = tmp_path / "study"
    assert run_loop_scaling(study(tiny_cfg), out, stop_after_min=0, log=logs.append) is None
    assert "stopping before budget 3e+09, seed 0" in logs[-1] and "0 runs done" in logs[-1]
    assert not list(out.glob("budget_*"))  # nothing started, nothing to resume
    with pytest.raises(ConfigError, match="--stop-after -1 must be >= 0"):
        run_loop_scaling(study(tiny_cfg), out, stop_after_min=-1, log=logs.append)


def test_an_interrupted_run_resumes_to_the_same_curve(tiny_cfg, tmp_path, monkeypatch):
    import loopmdm.experiments.loop_scaling_run as ls
    from loopmdm.errors import LoopMDMError

    cfg = study(tiny_cfg)
    data = prepare_data(cfg.run.data, cfg.run.model.vocab_size, cfg.run.model.max_seq_len)
    cfg.run.model.vocab_size = data.tokenizer.vocab_size
    rp = budget_plans(cfg)[1].run("loopmdm")
    val = FixedValidation.of(cfg, data)
    quiet = lambda s: None  # noqa: E731
    ls.train_run(rp, 0, tmp_path / "whole", data, cfg, val, False, quiet)
    init = ls._StudyTrainer.__init__

    # a signal after step 25: the step is saved, the run refused as finished
    def stop_midway(self, *args, **kwargs):
        init(self, *args, **kwargs)
        step = self._step

        def step_fn(idx, loops):
            out = step(idx, loops)
            self.stop_requested = self.step + 1 >= 25
            return out

        self._step = step_fn

    monkeypatch.setattr(ls._StudyTrainer, "__init__", stop_midway)
    with pytest.raises(LoopMDMError, match="stopped at step 25"):
        ls.train_run(rp, 0, tmp_path / "cut", data, cfg, val, False, quiet)
    monkeypatch.setattr(ls._StudyTrainer, "__init__", init)
    # resumed from step 25
    info = ls.train_run(rp, 0, tmp_path / "cut", data, cfg, val, False, quiet)
    whole = read_curve(tmp_path / "whole" / "metrics.jsonl")
    assert (
        not info["reused"]
        and info["trained_steps"] == rp.steps - 25  # what the --stop-after estimate counts
        and info["curve"]["steps"] == whole.steps
        and info["curve"]["steps"][-1] == rp.steps
    )
    assert info["curve"]["nelbo"] == pytest.approx(whole.nelbo, abs=1e-5)
    again = ls.train_run(rp, 0, tmp_path / "cut", data, cfg, val, False, quiet)
    assert again["reused"] and again["curve"] == info["curve"]


def test_the_software_record_names_the_code_commit(tmp_path):
    """``__version__`` is fixed between releases, so results name the git commit of the code (None outside a
    checkout, e.g. an installed wheel)."""
    import re

    from loopmdm.experiments.provenance import git_commit, software_versions

    assert git_commit(tmp_path) is None
    commit = software_versions()["loopmdm_git_commit"]
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit)
