"""End to end in a real browser: headless Chromium (Debian's package) driven by Playwright's Python client
opens the viewer served on 127.0.0.1 with the tiny checkpoint, in two tabs generating at once.

Screenshots are written under the test's tmp dir and, when LOOPMDM_ARTIFACTS is set, into that folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytest.importorskip("fastapi", reason="the viewer needs the [serve] extra (fastapi, uvicorn)")
pytest.importorskip(
    "playwright.sync_api", reason="Playwright's Python client is missing (pip install playwright)"
)
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(
        f"Chromium not found at {CHROMIUM} (Debian: apt-get install chromium)",
        allow_module_level=True,
    )

import torch  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from loopmdm.checkpoint import load_model  # noqa: E402
from loopmdm.sampling import generate  # noqa: E402
from loopmdm.serve import create_app  # noqa: E402
from loopmdm.serve.server import serve_in_thread  # noqa: E402
from loopmdm.viz.trajectory_html import write_trajectory_html  # noqa: E402


def save_artifact(src: Path) -> None:
    dest = os.environ.get("LOOPMDM_ARTIFACTS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, Path(dest) / src.name)


@pytest.fixture(scope="module")
def browser():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()
    torch.set_num_threads(before)


def open_viewer(context, url: str):
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=15_000)
    return page, errors


def check_finished(page, steps: int) -> None:
    assert page.locator("#status").get_attribute("data-state") == "done", page.inner_text("#status")
    assert page.locator(".lv-tok").count() > 0
    assert page.locator(".lv-tok.lv-mask").count() == 0  # every mask filled
    assert page.locator(".loop-pt").count() == steps  # one chart point per denoising step
    assert page.locator(".lv-slider").get_attribute("max") == str(steps)
    assert page.locator(".final-text").first.inner_text().strip()


def test_two_tabs_generate_at_once_and_bad_input_is_shown(tiny_run, browser, tmp_path):
    with serve_in_thread(create_app(tiny_run, timeout_s=60)) as url:
        context = browser.new_context(viewport={"width": 1360, "height": 1000})
        a, a_errors = open_viewer(context, url)
        b, b_errors = open_viewer(context, url)
        a.fill("#prompt", "def compute_")
        a.fill("#steps", "12")
        a.select_option("#policy", "schedule")
        a.select_option("#popt-shape", "linear")
        b.fill("#template", "def [MASK:4](alpha, beta=None):\n    [MASK:6]\n    return alpha")
        b.fill("#steps", "8")
        b.select_option("#sampler", "confidence")
        b.select_option("#policy", "per_token")
        a.click("#generate")
        b.click("#generate")
        for page in (a, b):
            page.wait_for_selector("#status[data-state='done']", timeout=30_000)
        check_finished(a, 12)
        check_finished(b, 8)
        assert a.locator(".lv-tok.lv-given").count() == 1 + len(
            load_model(tiny_run)[1].encode("def compute_")
        )
        assert b.locator(".lv-tok.lv-given").count() > 0
        a.bring_to_front()  # background tabs get no animation frames, which Playwright's actions wait for
        a.hover(".lv-seq .lv-tok:not(.lv-given) >> nth=0")
        tip = a.inner_text(".lv-tooltip")
        assert "confidence" in tip and "loops spent" in tip and "revealed at" in tip
        shot = tmp_path / "viewer.png"
        a.screenshot(path=str(shot), full_page=True)
        save_artifact(shot)

        a.locator(".lv-slider").fill("1")  # replay: after step 1 of 12 most tokens are still masked
        expect(a.locator(".loop-pt.lv-future")).to_have_count(11)
        assert a.locator(".lv-tok.lv-mask").count() > 0

        a.fill("#steps", "0")  # bad input: a visible one-line message, no hung request
        a.click("#generate")
        a.wait_for_selector("#status[data-state='error']", timeout=10_000)
        assert a.locator("#error").is_visible() and "steps must be >= 1" in a.inner_text("#error")
        a.fill("#steps", "4")
        a.fill("#template", "no span here")
        a.fill("#prompt", "")
        a.click("#generate")
        a.wait_for_function(
            "document.getElementById('error').textContent.includes('no span to fill')",
            timeout=10_000,
        )
        shot = tmp_path / "viewer_error.png"
        a.screenshot(path=str(shot), full_page=True)
        save_artifact(shot)
        assert not a_errors and not b_errors, a_errors + b_errors
        context.close()


def test_exported_html_replays_offline(tiny_run, browser, tmp_path):
    model, tok, cfg = load_model(tiny_run)
    out = generate(
        model,
        tok,
        steps=10,
        num_samples=2,
        prompt="def ",
        policy="converge",
        policy_options={"s_max": cfg.diffusion.s_max},
        record_trajectory=True,
    )
    path = write_trajectory_html(
        out, tok, tmp_path / "trajectory.html", meta={"model": {"s_max": cfg.diffusion.s_max}}
    )
    context = browser.new_context(viewport={"width": 1200, "height": 900}, offline=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=15_000)
    assert page.locator(".loop-pt").count() == 10 and page.locator(".lv-tok.lv-mask").count() == 0
    assert page.locator(".final-text").count() == 2
    # before step 1 only the given tokens (BOS + the prompt) are shown
    page.locator(".lv-slider").fill("0")
    n_given = 2 * (1 + len(tok.encode("def ")))
    expect(page.locator(".lv-tok.lv-mask")).to_have_count(page.locator(".lv-tok").count() - n_given)
    shot = tmp_path / "trajectory_export.png"
    page.screenshot(path=str(shot), full_page=True)
    save_artifact(shot)
    assert not errors, errors
    context.close()
