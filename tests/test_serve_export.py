"""Trajectory export without a browser (self-contained HTML, PNG strip, GIF) and the ``loopmdm serve`` command."""

from __future__ import annotations

import json
import re

import pytest
import torch

from loopmdm.checkpoint import load_model
from loopmdm.errors import ConfigError
from loopmdm.sampling import generate
from loopmdm.viz.trajectory_html import (
    render_trajectory_html,
    step_snapshots,
    viewer_data,
    write_trajectory,
)


@pytest.fixture(scope="module")
def loaded(tiny_run):
    return load_model(tiny_run)


@pytest.fixture(scope="module")
def output(loaded):
    model, tok, cfg = loaded
    return generate(
        model,
        tok,
        num_samples=2,
        steps=5,
        prompt="def </script><!-- compute_",
        seed=0,
        policy="schedule",
        policy_options={"s_max": 3},
        record_trajectory=True,
    )


def embedded_data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="lv-data">(.*?)</script>', page, re.S)
    assert m, "no embedded data"
    return json.loads(m.group(1))


def test_html_export_is_self_contained_and_carries_every_step(loaded, output, tmp_path):
    _, tok, _ = loaded
    path = write_trajectory(output, tok, tmp_path / "sub" / "t.html", meta={"model": {"s_max": 3}})
    page = path.read_text()
    assert "http://" not in page and "https://" not in page and "<link" not in page
    # the prompt's "</script>" cannot end a script early
    assert page.count("</script>") == page.count("<script")
    data = embedded_data(page)
    assert data == json.loads(json.dumps(viewer_data(output, tok, meta={"model": {"s_max": 3}})))
    steps = data["steps"]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5]
    assert steps[-1]["tokens"] == output.tokens.tolist() == data["done"]["tokens"]
    assert [s["loops"] for s in steps] == output.report.loops_per_step
    assert steps[-1]["flops_so_far"] == pytest.approx(output.report.flops)
    rs = output.trajectory.reveal_step
    assert data["done"]["trajectory"]["reveal_step"] == torch.where(rs >= 0, rs + 1, rs).tolist()
    assert data["start"]["given"] == (rs == -1).int().tolist()
    assert data["done"]["texts"] == output.texts


def test_snapshots_rebuilt_from_reveal_steps_equal_the_recorded_ones(loaded, output):
    _, tok, _ = loaded
    recorded = step_snapshots(output, tok.mask_id)
    saved = output.trajectory.snapshots
    output.trajectory.snapshots = []
    try:
        rebuilt = step_snapshots(output, tok.mask_id)
    finally:
        output.trajectory.snapshots = saved
    assert len(rebuilt) == len(recorded) == 5
    assert all(torch.equal(a, b) for a, b in zip(rebuilt, recorded))


def test_png_strip_and_gif_animation(loaded, output, tmp_path):
    from PIL import Image

    _, tok, _ = loaded
    png = write_trajectory(output, tok, tmp_path / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gif = write_trajectory(output, tok, tmp_path / "t.gif")
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 5  # one frame per denoising step


def test_export_errors_are_one_line(loaded, output, tmp_path):
    model, tok, _ = loaded
    plain = generate(model, tok, steps=2)
    with pytest.raises(ConfigError, match="record_trajectory=True"):
        render_trajectory_html(plain, tok)
    with pytest.raises(ConfigError, match="unknown format '.txt'"):
        write_trajectory(output, tok, tmp_path / "t.txt")


def test_serve_command_binds_loopback_and_passes_limits(tiny_run, monkeypatch):
    pytest.importorskip("fastapi")
    from typer.testing import CliRunner

    import loopmdm.serve.server as server
    from loopmdm.cli import app

    seen = {}

    def fake_run(web, sock, log_level="info"):
        seen["app"], seen["addr"] = web, sock.getsockname()
        sock.close()

    monkeypatch.setattr(server, "run_server", fake_run)
    result = CliRunner().invoke(
        app,
        [
            "serve",
            "--checkpoint",
            str(tiny_run),
            "--port",
            "0",
            "--timeout",
            "7.5",
            "--max-steps",
            "99",
        ],
    )
    assert result.exit_code == 0, result.output
    assert seen["addr"][0] == "127.0.0.1" and seen["addr"][1] > 0
    assert seen["app"].state.limits.timeout_s == 7.5 and seen["app"].state.limits.max_steps == 99

    bad = CliRunner().invoke(app, ["serve", "--checkpoint", str(tiny_run), "--port", "70000"])
    assert isinstance(bad.exception, ConfigError) and "--port 70000" in str(bad.exception)
    bad = CliRunner().invoke(app, ["serve", "--checkpoint", str(tiny_run), "--timeout", "0"])
    assert isinstance(bad.exception, ConfigError) and "timeout" in str(bad.exception)
