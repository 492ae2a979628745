"""``loopmdm experiment reasoning``: calibration first (plain MDM, validation only), the comparison only when the
calibration chose a model, runs and scores reused on a second call."""

from __future__ import annotations

import json

import pytest

from helpers import run_cli
from loopmdm.errors import ConfigError
from loopmdm.experiments.reasoning import run_reasoning
from loopmdm.experiments.reasoning_config import TaskSpec, load_reasoning_config
from loopmdm.outputs import check_output


def tiny_config(target: float):
    cfg = load_reasoning_config("laptop")
    cfg.tasks = [
        TaskSpec(
            "hops",
            "vars",
            {
                "mode": "query",
                "kind": "hops",
                "statements": [6, 7],
                "literals": 3,
                "n_train": 40,
                "n_val": 10,
                "n_test": 6,
                "train_levels": [0, 1, 2],
                "test_levels": [0, 1, 2, 3],
                "seed": 0,
            },
            "depth",
            1,
            32,
        )
    ]
    cfg.candidates = [{"d_model": 32, "n_heads": 2, "n_layers": 3}]
    cfg.run.model.n_layers, cfg.run.model.n_h, cfg.run.model.n_m, cfg.run.model.n_o = 3, 1, 1, 1
    cfg.run.train.batch_size = 16
    cfg.calibration_steps, cfg.target, cfg.s_max = 60, target, 3
    cfg.seeds, cfg.steps, cfg.loops = [0], [1, 0], [1, 3, 6]
    cfg.policies = {"converge": {"threshold": 0.05, "s_max": 4}}
    cfg.models = ["mdm", "loopmdm", "deeper", "loopmdm-ds"]  # (a)-(d); amendment 2 has its own test
    return cfg.validate()


def test_calibration_then_comparison_and_reuse(tmp_path):
    cfg = tiny_config(target=0.0)  # any accuracy passes: the comparison runs
    res = run_reasoning(cfg, tmp_path, log=lambda s: None)
    entry = res["tasks"]["hops"]
    cal = json.loads((tmp_path / "hops" / "calibration.json").read_text())
    assert cal["chosen"] == {"shape": cfg.candidates[0], "baseline_steps": 60} and cal["level"] == 1
    runs = {r["name"]: r["steps"] for r in entry["plan"]["runs"]}
    # equal training FLOPs: LoopMDM takes fewer steps
    assert runs["mdm"] == 60 and runs["loopmdm"] < 60
    per = entry["per_seed"][0]
    assert set(per) == {"mdm", "loopmdm", "deeper", "loopmdm-ds"}
    # deep supervision's extra tail passes counted
    assert per["loopmdm-ds"]["flops"] > per["loopmdm"]["flops"]
    looped = {(r["steps"], r["loops"], r["group"]) for r in per["loopmdm"]["scores"]}
    # S up to 2 S_max; level 3 was never trained
    assert (1, 6, 3) in looped and (0, 1, "all") in looped
    assert {r["group"] for r in per["mdm"]["scores"]} == {"all", 0, 1, 2, 3}
    assert {r["loops"] for r in per["mdm"]["scores"]} == {1}
    assert per["loopmdm"]["policies"] and all("mean_loops" in r for r in per["loopmdm"]["policies"])
    assert not per["mdm"]["policies"]
    assert (tmp_path / "results.json").is_file() and "hops" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "hops_loopmdm.png").is_file()
    # accuracy against training FLOPs: validation exact match at every evaluation, the FLOPs ratio read from it
    for info in per.values():
        curve = info["exact_match_curve"]
        assert len(curve["exact_match"]) >= cfg.n_evals and curve["flops"][-1] == info["flops"]
        assert all(0.0 <= a <= 1.0 for a in curve["exact_match"])
    assert set(entry["flops_ratio"]) == {"loopmdm", "loopmdm-ds"}
    assert entry["flops_ratio"]["loopmdm"]["seeds"] == 1
    assert (tmp_path / "hops_exact_match_vs_flops.png").is_file()
    assert "FLOPs ratio to the plain MDM" in (tmp_path / "summary.md").read_text()
    # accuracy against inference FLOPs: each model's cheapest-best (T, S) cells, table and figure
    assert set(entry["inference_frontier"]) == set(per)
    assert (tmp_path / "hops_exact_match_vs_inference_flops.png").is_file()
    assert "Exact match against inference FLOPs" in (tmp_path / "summary.md").read_text()
    # the pre-registered checks name LoopMDM; deep supervision gets the same ones beside them
    assert any("loopmdm beats mdm" in k for k in entry["checks"])
    assert any("loopmdm-ds beats mdm" in k for k in entry["checks_more"]["loopmdm-ds vs mdm"])
    stamp = (tmp_path / "hops" / "seed_0" / "mdm" / "scores.json").stat().st_mtime_ns
    again = run_reasoning(tiny_config(target=0.0), tmp_path, log=lambda s: None)
    assert again["tasks"]["hops"]["summary"] == entry["summary"]
    assert (tmp_path / "hops" / "seed_0" / "mdm" / "scores.json").stat().st_mtime_ns == stamp
    # the weights deleted (or the study moved as its records): the same report, nothing retrained
    import shutil

    for ckpt in tmp_path.glob("hops/**/checkpoints"):
        shutil.rmtree(ckpt)
    records = run_reasoning(tiny_config(target=0.0), tmp_path, log=lambda s: None)
    assert records["tasks"]["hops"]["summary"] == entry["summary"]
    assert not list(tmp_path.glob("hops/**/checkpoints"))
    changed = tiny_config(target=0.0)
    changed.run.train.lr *= 2  # scores made with another config are not reused as this one's
    with pytest.raises(ConfigError, match="holds a run with another config .*train.lr"):
        run_reasoning(changed, tmp_path, log=lambda s: None)


def test_no_comparison_when_calibration_fails(tmp_path):
    res = run_reasoning(tiny_config(target=1.0), tmp_path, log=lambda s: None)
    entry = res["tasks"]["hops"]
    assert entry["calibration"]["chosen"] is None and "per_seed" not in entry
    assert not (tmp_path / "hops" / "seed_0").exists()  # no looped model was trained
    assert "no candidate reached the target" in (tmp_path / "summary.md").read_text()


def test_a_report_over_some_tasks_names_the_others(tmp_path):
    cfg = tiny_config(target=1.0)
    cfg.tasks.append(TaskSpec("hops2", "vars", dict(cfg.tasks[0].params), "depth", 1, 32))
    res = run_reasoning(cfg, tmp_path, tasks=["hops"], log=lambda s: None)
    assert res["tasks_left_out"] == ["hops2"] and set(res["tasks"]) == {"hops"}
    assert not (tmp_path / "hops2").exists()  # nothing of the other task was generated or trained
    assert json.loads((tmp_path / "results.json").read_text())["tasks_left_out"] == ["hops2"]
    assert (tmp_path / "summary.md").read_text().startswith("Tasks not in this report: hops2.")
    # restricting the models is a part of the training: no report
    (tmp_path / "results.json").unlink()
    assert run_reasoning(cfg, tmp_path, tasks=["hops"], models=["mdm"], log=lambda s: None) is None
    assert not (tmp_path / "results.json").exists()


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--tasks"):
        run_reasoning(tiny_config(0.0), tmp_path, tasks=["nope"], log=lambda s: None)
    code, _, err = run_cli(
        ["experiment", "reasoning", "--out", tmp_path / "x", "--models", "mdm,bogus"], capsys
    )
    assert code == 2 and err.strip().splitlines()[-1].startswith("error:") and "bogus" in err


def test_the_study_refuses_a_foreign_folder_and_accepts_its_own(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("not an experiment")
    code, _, err = run_cli(
        ["experiment", "reasoning", "--out", tmp_path, "--tasks", "prefix-sum"], capsys
    )
    assert code == 2 and "not an experiment folder" in err
    from loopmdm.outputs import check_output

    own = tmp_path / "own"
    (own / "vars-hops-trace" / "data").mkdir(parents=True)
    (own / "summary.md").write_text("x")
    assert check_output(own, "experiment", dirs=["vars-hops-trace", "prefix-sum"]) == own


def test_an_amendment_appends_candidates_and_reuses_the_tried_ones(tmp_path):
    run_reasoning(tiny_config(target=1.0), tmp_path, log=lambda s: None)  # candidate 0 fails
    first = tmp_path / "hops" / "calibration_0" / "metrics.jsonl"
    stamp = first.stat().st_mtime_ns
    cfg = tiny_config(target=0.0)
    cfg.target = 1.0
    cfg.candidates.append({"d_model": 32, "n_heads": 2, "n_layers": 3, "steps": 30})
    cal = run_reasoning(cfg.validate(), tmp_path, log=lambda s: None)["tasks"]["hops"][
        "calibration"
    ]
    assert [
        c["shape"] for c in cal["tried"]
    ] == cfg.candidates and first.stat().st_mtime_ns == stamp
    assert (tmp_path / "hops" / "calibration_1").is_dir()
    cfg.candidates = cfg.candidates[::-1]
    with pytest.raises(ConfigError, match="candidates may only be appended"):
        run_reasoning(cfg, tmp_path, log=lambda s: None)


def test_a_candidates_own_budget_becomes_the_plain_models_steps(tmp_path):
    cfg = tiny_config(target=0.0)
    cfg.candidates = [{**cfg.candidates[0], "steps": 80}]
    cfg.models = ["mdm"]
    entry = run_reasoning(cfg.validate(), tmp_path, log=lambda s: None)["tasks"]["hops"]
    assert entry["calibration"]["chosen"]["baseline_steps"] == 80
    assert {r["name"]: r["steps"] for r in entry["plan"]["runs"]}["mdm"] == 80


@pytest.mark.parametrize(
    "candidate, match",
    [
        ({"d_model": 32, "width": 3}, "'width' is neither"),
        ({"d_model": 32, "steps": 0}, "candidate steps"),
        # refused before any task is written or candidate trained
        ({"d_model": 64, "n_heads": 3}, "candidate .*: model.d_model=64 must split into n_heads=3"),
    ],
)
def test_bad_candidates_are_refused(candidate, match):
    cfg = tiny_config(target=0.0)
    cfg.candidates = [candidate]
    with pytest.raises(ConfigError, match=match):
        cfg.validate()


def test_the_checks_read_the_pooled_counts_of_the_named_model():
    from loopmdm.experiments.reasoning_report import checks

    cfg = tiny_config(target=0.0)
    s_max, far = cfg.s_max, 2 * cfg.s_max

    def cell(correct, n=100):
        return {"correct": correct, "n": n}

    summary = {
        "mdm": {"1|1|all": cell(30)},
        "deeper": {"1|1|all": cell(22)},
        "loopmdm": {f"1|{s_max}|all": cell(10), f"1|{s_max}|9": cell(5), f"1|{far}|9": cell(9)},
        "loopmdm-ds": {f"1|{s_max}|all": cell(56), f"1|{s_max}|9": cell(8), f"1|{far}|9": cell(3)},
    }
    plain = checks(summary, cfg, [1, 2])
    assert plain["T=1: loopmdm beats mdm outside 95% intervals"] is False
    assert plain["T=1: loopmdm within 5 points of deeper"] is False
    assert plain["T=1, level 9: more loops than S_max help"] is True
    ds = checks(summary, cfg, [1, 2], "loopmdm-ds")
    assert ds["T=1: loopmdm-ds beats mdm outside 95% intervals"] is True
    assert ds["T=1: loopmdm-ds within 5 points of deeper"] is True
    assert ds["T=1, level 9: more loops than S_max help"] is False
    # a task without train_levels: the in-distribution checks only (it was max() of an empty list)
    assert not any("level" in k for k in checks(summary, cfg, []))


def test_amendment_2_controls_train_at_the_other_models_budgets(tmp_path):
    """mdm-long: the plain MDM trained to (d)'s logged FLOPs; loopmdm-ds-matched: (d) cut to the common budget."""
    cfg = tiny_config(target=0.0)
    cfg.models = ["mdm", "loopmdm-ds", "mdm-long", "loopmdm-ds-matched"]
    entry = run_reasoning(cfg.validate(), tmp_path, log=lambda s: None)["tasks"]["hops"]
    per = entry["per_seed"][0]
    flops = {name: per[name]["flops"] for name in per}
    steps = {r["name"]: r["steps"] for r in entry["plan"]["runs"]}
    assert flops["mdm-long"] == pytest.approx(flops["loopmdm-ds"], rel=0.03)
    assert flops["loopmdm-ds-matched"] == pytest.approx(flops["mdm"], rel=0.03)
    assert flops["loopmdm-ds-matched"] < flops["loopmdm-ds"] < flops["mdm-long"] * 1.03
    assert steps["mdm"] == 60 and per["mdm-long"]["steps"] > 60
    assert set(entry["checks_more"]) == {
        "loopmdm-ds vs mdm",
        "loopmdm-ds vs mdm-long",
        "loopmdm-ds-matched vs mdm",
    }
    with pytest.raises(ConfigError, match="must be a non-empty subset"):
        cfg.models = ["mdm", "mdm-longer"]
        cfg.validate()


def test_the_flops_ratio_is_read_from_the_exact_match_curves():
    """The plain MDM's final accuracy 0.6 is reached by the looped model at 2e12 FLOPs (a logged point) and by the
    plain MDM at 4e12: ratio 2; a seed whose looped model never gets there is None; a seed without curves is
    skipped (runs trained before the curve was logged)."""
    from loopmdm.experiments.reasoning_report import accuracy_flops_ratios

    def run(acc):
        return {"exact_match_curve": {"flops": [1e12, 2e12, 3e12, 4e12], "exact_match": acc}}

    per_seed = {
        0: {
            "mdm": run([0.1, 0.3, 0.5, 0.6]),
            "loopmdm": run([0.2, 0.6, 0.7, 0.8]),
            "deeper": run([0.1] * 4),
        },
        1: {"mdm": run([0.1, 0.3, 0.5, 0.6]), "loopmdm": run([0.1, 0.2, 0.3, 0.4])},
        2: {"mdm": {}, "loopmdm": {}},
    }
    r = accuracy_flops_ratios(per_seed)
    assert set(r) == {"loopmdm"}
    assert r["loopmdm"]["values"] == [pytest.approx(2.0), None]
    assert (r["loopmdm"]["n"], r["loopmdm"]["seeds"]) == (1, 2)


def test_the_inference_frontier_keeps_the_cells_no_cheaper_cell_beats():
    """Cells (T, S) by FLOPs per problem: 1e6 -> 10%, 2e6 -> 30%, 2e6 -> 20% (dominated at equal cost),
    4e6 -> 25% (dominated by a cheaper cell), 8e6 -> 50%; per-level cells are not on the frontier."""
    from loopmdm.experiments.reasoning_report import frontier_table, inference_frontier

    def cell(flops, correct):
        return {"flops_per_problem": {"mean": flops}, "correct": correct, "n": 100}

    cells = {
        "1|1|all": cell(1e6, 10),
        "1|2|all": cell(2e6, 30),
        "2|1|all": cell(2e6, 20),
        "1|4|all": cell(4e6, 25),
        "0|1|all": cell(8e6, 50),
        "1|1|4": cell(1e6, 99),
    }
    front = inference_frontier(cells)
    assert [(p["steps"], p["loops"]) for p in front] == [(1, 1), (1, 2), (0, 1)]
    assert [p["accuracy"] for p in front] == [0.1, 0.3, 0.5]
    assert "| m | 1 / 1: 1 -> 10.0 · 1 / 2: 2 -> 30.0 · 1/token / 1: 8 -> 50.0 |" in frontier_table(
        {"m": cells}
    )


def test_logging_exact_match_leaves_training_unchanged(tmp_path):
    """The study's trainer (validation exact match at every evaluation) trains the same weights as the plain one."""
    from loopmdm.data import prepare_data
    from loopmdm.data.answers import read_rows
    from loopmdm.experiments.reasoning import exact_match_trainer
    from loopmdm.experiments.reasoning_config import run_config, task_folder
    from loopmdm.tasks import write_task
    from loopmdm.train import train

    cfg = tiny_config(target=0.0)
    task = cfg.tasks[0]
    write_task(task_folder(tmp_path, task), task.family, **task.params)
    rc = run_config(cfg, task, tmp_path, cfg.candidates[0])
    rc.train.max_steps, rc.train.eval_every = 6, 3
    data = prepare_data(rc.data, rc.model.vocab_size, rc.model.max_seq_len, log=lambda s: None)
    rc.model.vocab_size = data.tokenizer.vocab_size
    val = read_rows(task_folder(tmp_path, task) / "val.jsonl", rc.data.answers, rc.data.text_field)
    logs = []
    for name, cls in (("plain", None), ("em", exact_match_trainer(val, rc, cfg))):
        extra = {} if cls is None else {"trainer_cls": cls}
        train(rc, tmp_path / name, progress=False, log=lambda s: None, data=data, **extra)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        logs.append([json.loads(x) for x in lines])
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]
    assert [r["step"] for r in logs[1] if "val_exact_match" in r] == [3, 6]
    assert not any("val_exact_match" in r for r in logs[0])


def test_amendment_3_changes_only_the_recipe_models_seeds_and_curve_density():
    """``laptop-bell`` is the laptop study with the adopted time sampler; candidates, target, grid and tasks'
    data stay those of ``laptop`` (a pre-registered amendment changes only what it says)."""
    base, bell = load_reasoning_config("laptop"), load_reasoning_config("laptop-bell")
    assert (bell.run.diffusion.t_sampler, bell.run.diffusion.t_weighting) == ("bell", "paper")
    assert bell.models == ["mdm", "loopmdm", "deeper", "loopmdm-ds-matched"]
    assert (bell.seeds, bell.n_evals) == ([0, 1, 2, 3, 4], 12)
    assert [t.name for t in bell.tasks] == ["vars-hops-trace", "prefix-sum-interleaved"]
    same = {t.name: t for t in base.tasks}
    assert all(t == same[t.name] for t in bell.tasks)
    for f in (
        "candidates",
        "calibration_steps",
        "calibration_t",
        "target",
        "s_max",
        "steps",
        "loops",
    ):
        assert getattr(bell, f) == getattr(base, f), f
    bell.run.diffusion.t_sampler, bell.run.diffusion.t_weighting = "uniform", "exact"
    assert bell.run == base.run


@pytest.mark.parametrize("text", ['{"tried": [', "[1, 2]", '{"tried": [{"shape": {}}]}', "\udcff"])
def test_a_damaged_calibration_record_is_a_one_line_error(tmp_path, text):
    from loopmdm.experiments.reasoning_calibration import earlier_calibration

    path = tmp_path / "calibration.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError, match="is not a calibration record .* delete it to calibrate"):
        earlier_calibration(path, [{"d_model": 128}])


def test_an_interim_report_trains_nothing_and_keeps_only_complete_seeds(tmp_path):
    def cfg():
        c = tiny_config(target=0.0)
        c.seeds, c.models = [0, 1], ["mdm", "loopmdm"]
        return c

    quiet = {"log": lambda s: None}
    early = run_reasoning(cfg(), tmp_path, interim=True, **quiet)
    assert early["tasks"]["hops"]["calibration"]["complete"] is False
    assert not (tmp_path / "hops" / "calibration_0").exists()  # nothing trained
    assert "calibration still under way" in (tmp_path / "interim_summary.md").read_text()
    run_reasoning(cfg(), tmp_path, models=["mdm"], **quiet)  # calibration, then (a) for both seeds
    run_reasoning(cfg(), tmp_path, seeds=[0], models=["loopmdm"], **quiet)
    entry = run_reasoning(cfg(), tmp_path, interim=True, **quiet)["tasks"]["hops"]
    assert entry["seeds_complete"] == [0] and entry["seeds_partial"] == {1: ["mdm"]}
    assert list(entry["per_seed"]) == [0] and set(entry["summary"]) == {"mdm", "loopmdm"}
    assert not (tmp_path / "hops" / "seed_1" / "loopmdm").exists()
    text = (tmp_path / "interim_summary.md").read_text()
    assert "Interim: seeds [0] have every model" in text and "seed 1: mdm finished" in text
    # every finished run in a few numbers, the partial seed's included
    assert set(entry["runs"][0]) == {"mdm", "loopmdm"} and set(entry["runs"][1]) == {"mdm"}
    one = entry["runs"][1]["mdm"]
    assert one["test_loops"] == 1 and one["steps"] == 60 and one["val_nelbo"] > 0
    row = next(line for line in text.splitlines() if line.startswith("| loopmdm |"))
    assert row.endswith(" | - |") and "Every finished run" in text
    assert not (tmp_path / "results.json").exists()
    # the interim files are the experiment's own output: the CLI still resumes into this folder
    check_output(tmp_path, "experiment", dirs=["hops"])


def test_equal_steps_reads_the_plain_curve_at_the_other_models_last_step():
    """LoopMDM's last point (step 150) against the plain MDM's curve at step 150, halfway between its logged
    steps 100 and 200: NELBO (1.0 + 0.6) / 2 = 0.8, exact match 0.3; a seed without curves is skipped."""
    from loopmdm.experiments.reasoning_report import equal_steps, equal_steps_lines

    def run(steps, nelbo, em):
        return {
            "curve": {"steps": steps, "nelbo": nelbo},
            "exact_match_curve": {"steps": steps, "exact_match": em},
        }

    per_seed = {
        0: {
            "mdm": run([100, 200, 300], [1.0, 0.6, 0.4], [0.2, 0.4, 0.6]),
            "loopmdm": run([50, 150], [1.5, 0.9], [0.0, 0.1]),
            "mdm-long": run([200, 400], [0.7, 0.3], [0.3, 0.7]),
        },
        1: {"mdm": {}, "loopmdm": {}, "mdm-long": {}},
    }
    # mdm-long's last step, 400, lies past the plain curve's end: no reading (it was mdm's step-300 value)
    assert "mdm-long" not in equal_steps(per_seed)
    r = equal_steps(per_seed)["loopmdm"]
    assert r["steps"]["values"] == [150]
    assert r["nelbo_mdm"]["mean"] == pytest.approx(0.8) and r["nelbo_loopmdm"]["mean"] == 0.9
    assert r["exact_match_mdm"]["mean"] == pytest.approx(0.3)
    assert r["exact_match_loopmdm"]["mean"] == pytest.approx(0.1)
    line = (
        "NELBO loopmdm 0.900 vs mdm 0.800, exact match loopmdm 0.100 vs mdm 0.300 (mean of 1 seeds)"
    )
    assert equal_steps_lines({"loopmdm": r})[0].endswith(line)


def test_the_report_names_the_steps_of_every_trained_model():
    from loopmdm.experiments.reasoning_report import trained_steps

    entry = {
        "plan": {"runs": [{"name": "mdm", "steps": 300}, {"name": "loopmdm", "steps": 171}]},
        "per_seed": {0: {"mdm": {"steps": 300}, "loopmdm-ds-matched": {"steps": 141}}},
    }
    assert trained_steps(entry) == "mdm 300, loopmdm 171, loopmdm-ds-matched 141"


def test_the_policy_table_pools_the_loops_spent_per_level_over_seeds():
    from loopmdm.experiments.reasoning_report import policy_table

    def rec(group, loops, correct):
        return {
            "policy": "converge",
            "steps": 1,
            "group": group,
            "mean_loops": loops,
            "correct": correct,
            "n": 10,
        }

    per_seed = {
        0: {"mdm": {}, "loopmdm": {"policies": [rec(4, 2.0, 5), rec(8, 6.0, 1)]}},
        1: {"mdm": {}, "loopmdm": {"policies": [rec(4, 4.0, 3), rec(8, 8.0, 0)]}},
    }
    lines = policy_table(per_seed)
    assert lines[3] == "| model | policy | T | 4 | 8 |"
    assert lines[5] == "| loopmdm | converge | 1 | 3.0 (40) | 7.0 (5) |"
    assert policy_table({0: {"mdm": {}}}) == []


def test_a_run_outcome_reads_the_last_validation_point_and_test_cell_at_s_max():
    from loopmdm.experiments.reasoning_report import run_outcome, runs_table

    def cell(steps, loops, acc, group="all"):
        return {"steps": steps, "loops": loops, "group": group, "accuracy": acc}

    info = {
        "steps": 40,
        "curve": {"steps": [20, 40], "nelbo": [2.0, 1.5]},
        "exact_match_curve": {"steps": [20, 40], "exact_match": [0.1, 0.25]},
        "scores": [
            cell(1, 1, 0.1),
            cell(1, 4, 0.3),
            cell(1, 8, 0.9),
            cell(2, 4, 0.5),
            cell(1, 4, 0.7, 4),
        ],
    }
    out = run_outcome(info, T=1, s_max=4)
    assert out == {
        "steps": 40,
        "val_nelbo": 1.5,
        "val_exact_match": 0.25,
        "test_loops": 4,
        "test_exact_match": 0.3,
    }
    # a run trained before the exact-match curve existed
    old = run_outcome({**info, "exact_match_curve": None}, T=1, s_max=4)
    assert old["val_exact_match"] is None
    lines = runs_table({0: {"loopmdm": out}, 3: {}}, T=1)
    assert lines[-1] == "| loopmdm | 1.500 / 30.0 | - |"
