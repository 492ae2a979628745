"""Config: presets, YAML, --set overrides and one-line validation errors."""

import pytest

from loopmdm.config import PRESETS, load_config, parse_override, preset
from loopmdm.errors import ConfigError


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_validate(name):
    cfg = preset(name).validate()
    assert cfg.model.n_h + cfg.model.n_m + cfg.model.n_o == cfg.model.n_layers


def test_paper_preset_matches_the_paper():
    m, d = preset("paper").model, preset("paper").diffusion
    assert (m.n_layers, m.d_model, m.n_h, m.n_m, m.n_o, m.max_seq_len, d.s_max) == (
        12,
        768,
        1,
        2,
        9,
        1024,
        12,
    )
    b = preset("paper-baseline").diffusion
    assert b.loop_dist == "fixed" and b.s_fixed == 1


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  d_model: 128\n  n_heads: 4\ntrain:\n  betas: [0.9, 0.95]\n")
    cfg = load_config(
        "tiny", f, ["diffusion.s_max=6", "train.ema=0.99", "model.backprop_depth=null"]
    )
    assert cfg.model.d_model == 128 and cfg.diffusion.s_max == 6 and cfg.train.ema == 0.99
    assert cfg.train.betas == (0.9, 0.95)
    assert parse_override("a.b=1") == {"a": {"b": 1}}


@pytest.mark.parametrize(
    "override,match",
    [
        ("model.n_m=5", "add up to n_layers"),
        ("model.n_h=-1", "must be >= 0"),
        ("diffusion.s_max=0", "s_max"),
        ("model.d_model=abc", "integer"),
        ("model.nope=1", "unknown config key 'model.nope'"),
        ("nope.x=1", "unknown config key 'nope'"),
        ("diffusion.schedule=zigzag", "choose one of: cosine, linear, loglinear"),
        ("train.precision=fp8", "precision"),
        ("model.time_conditioning=film", "time_conditioning"),
        ("train.batch_size=0", "batch_size"),
        ("model.d_model=100", "heads"),
        ("model.backprop_depth=2", "input_injection"),
        ("novalue", "section.key=value"),
    ],
)
def test_bad_configs_one_line(override, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config("tiny", None, [override])
    assert "\n" not in str(e.value)


def test_cross_field_rules(tmp_path):
    with pytest.raises(ConfigError, match="backprop_depth=9 exceeds"):
        load_config("tiny", None, ["model.input_injection=true", "model.backprop_depth=9"])
    with pytest.raises(
        ConfigError, match="has no diffusion time; set model.time_conditioning=none"
    ):
        load_config(
            "tiny",
            None,
            ["diffusion.objective=ar", "model.causal=true", "diffusion.t_sampler=uniform"],
        )
    from loopmdm.diffusion.schedules import SCHEDULES

    with pytest.raises(ConfigError, match="unknown noise schedule"):
        # an unhashable name (a YAML list reaching a registry directly)
        SCHEDULES.get(["loglinear"])
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("huge")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("tiny", tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("tiny", bad)
