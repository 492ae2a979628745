"""The viewer's HTTP API without a browser: streaming, validation, time limit, concurrency, disconnects."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

pytest.importorskip("fastapi")
import torch  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from loopmdm.checkpoint import load_model  # noqa: E402
from loopmdm.sampling import LOOP_POLICIES, SAMPLERS, generate  # noqa: E402
from loopmdm.serve import create_app  # noqa: E402
from loopmdm.serve.server import serve_in_thread  # noqa: E402
from loopmdm.viz.assets import ASSETS  # noqa: E402


@pytest.fixture(scope="module")
def loaded(tiny_run):
    return load_model(tiny_run)


@pytest.fixture(scope="module")
def client(tiny_run):
    with TestClient(create_app(tiny_run, timeout_s=30, max_steps=64)) as c:
        yield c


def events_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def slow(delay_s: float):
    """``generate`` that sleeps ``delay_s`` after each denoising step (a model much bigger than the tiny one)."""
    steps_run: list[tuple[int, float]] = []  # (worker thread, time) of every step

    def slow_generate(model, tokenizer, *, on_step, **kw):
        def step(info):
            steps_run.append((threading.get_ident(), time.monotonic()))
            time.sleep(delay_s)
            on_step(info)

        return generate(model, tokenizer, on_step=step, **kw)

    slow_generate.steps_run = steps_run
    return slow_generate


# ---------------------------------------------------------------------------------------------- page + info
def test_page_and_assets_are_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for ref in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert ref.startswith("/static/") or ref.startswith("data:"), ref
    for name in ASSETS:
        r = client.get(f"/static/{name}")
        assert r.status_code == 200, name
        assert "http://" not in r.text and "https://" not in r.text and "//cdn" not in r.text, name
    assert client.get("/static/secret.py").status_code == 404
    assert client.get("/static/nothere.js").json()["code"] == "not_found"


def test_info_lists_samplers_policies_and_checkpoint_defaults(client, loaded):
    _, _, cfg = loaded
    info = client.get("/api/info").json()
    assert [s["name"] for s in info["samplers"]] == SAMPLERS.names()
    assert [p["name"] for p in info["policies"]] == LOOP_POLICIES.names()
    fixed = next(p for p in info["policies"] if p["name"] == "fixed")
    assert fixed["options"] == [
        {"name": "loops", "type": "int", "default": cfg.diffusion.s_max, "choices": None}
    ]
    schedule = next(p for p in info["policies"] if p["name"] == "schedule")
    assert {o["name"]: o["choices"] for o in schedule["options"]}["shape"] == [
        "hump",
        "linear",
        "inverse",
        "constant",
    ]
    assert info["model"]["max_seq_len"] == cfg.model.max_seq_len
    assert info["limits"] == {"timeout_s": 30, "max_steps": 64, "max_samples": 4, "max_loops": 64}


# ---------------------------------------------------------------------------------------------- streaming
def test_stream_has_every_step_and_matches_generate(client, loaded):
    model, tok, cfg = loaded
    body = {
        "prompt": "def compute_",
        "steps": 6,
        "num_samples": 2,
        "seed": 3,
        "policy": "schedule",
        "policy_options": {"s_min": 1, "s_max": 3},
    }
    r = client.post("/api/generate", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    ev = events_of(r.text)
    assert [e["type"] for e in ev] == ["start"] + ["step"] * 6 + ["done"]
    start, steps, done = ev[0], ev[1:-1], ev[-1]
    assert [s["step"] for s in steps] == list(range(1, 7)) and all(
        s["total_steps"] == 6 for s in steps
    )

    direct = generate(
        model,
        tok,
        num_samples=2,
        steps=6,
        prompt="def compute_",
        seed=3,
        policy="schedule",
        policy_options={"s_min": 1, "s_max": 3},
        schedule=cfg.diffusion.schedule,
        record_trajectory=True,
    )
    # the server samples exactly what the library samples
    assert done["tokens"] == direct.tokens.tolist()
    assert done["texts"] == direct.texts
    assert (
        done["report"]["loops_per_step"]
        == [s["loops"] for s in steps]
        == direct.report.loops_per_step
    )

    prompt_ids = [tok.bos_id] + tok.encode("def compute_")
    given = torch.tensor(start["given"], dtype=torch.bool)
    assert given[:, : len(prompt_ids)].all() and not given[:, len(prompt_ids) :].any()
    mask = tok.mask_id
    prev = torch.full_like(direct.tokens, mask)
    for s in steps:  # MDLM: a revealed token never changes; the revealed mask only grows
        x, rev = torch.tensor(s["tokens"]), torch.tensor(s["revealed"], dtype=torch.bool)
        assert torch.equal(rev, x != mask)
        kept = prev != mask
        assert torch.equal(x[kept], prev[kept])
        prev = x
    assert not (prev == mask).any() and prev.tolist() == done["tokens"]

    traj = done["trajectory"]
    rs = torch.tensor(traj["reveal_step"])  # 1-based on the wire, -1 = given
    assert torch.equal(rs == -1, given)
    for n in range(2):
        for i in range(rs.shape[1]):
            if rs[n, i] > 0:
                first = next(k for k, s in enumerate(steps, 1) if s["revealed"][n][i])
                assert rs[n, i] == first
    assert traj["cumulative_flops"] == pytest.approx([s["flops_so_far"] for s in steps])
    assert steps[-1]["flops_so_far"] == pytest.approx(done["report"]["flops"])
    pieces = {}
    for e in ev:
        pieces.update(e.get("pieces", {}))
    assert {str(i) for row in done["tokens"] for i in row} <= set(pieces)


# ---------------------------------------------------------------------------------------------- bad input
BAD = [
    ({"steps": 0}, "steps must be >= 1"),
    ({"steps": "many"}, "steps must be a whole number"),
    ({"steps": 65}, "exceeds this server's limit of 64"),
    ({"prompt": "def compute_alpha(beta): return beta " * 6}, "not shorter than the window"),
    ({"template": "def compute(alpha): return alpha"}, "no span to fill"),
    ({"template": "def [MASK:0](alpha)"}, "must fill at least one token"),
    ({"template": "def [MASK:-1](alpha)"}, "marker '[MASK:-1]' is malformed"),
    ({"template": "def [MASK 2](alpha)"}, "write [MASK:n] with n a whole number"),
    ({"template": "[MASK:40]"}, "longer than the model window"),
    ({"prompt": "def", "template": "[MASK:3]"}, "not both"),
    ({"length": 999}, "must be an integer in 1..32"),
    ({"sampler": "magic"}, "unknown sampler 'magic'"),
    ({"policy": "fixed", "policy_options": {"loopz": 2}}, "unknown option 'loopz'"),
    ({"policy": "fixed", "policy_options": {"loops": 0}}, "loops=0 must be an integer >= 1"),
    ({"top_p": 1.5}, "top_p must be <= 1"),
    ({"temperature": -1}, "temperature must be >= 0"),
    ({"colour": "red"}, "colour is not an option"),
    (
        {"sampler": "confidence", "sampler_options": {"order": ["x"]}},
        "sampler_options.order must be a number, true / false, a string or null (got ['x'])",
    ),
]


@pytest.mark.parametrize("body,phrase", BAD, ids=[p for _, p in BAD])
def test_bad_options_get_a_one_line_422(client, body, phrase):
    r = client.post("/api/generate", json=body)
    assert r.status_code == 422, r.text
    err = r.json()
    assert phrase in err["error"], err
    assert "\n" not in err["error"] and "Traceback" not in r.text and err["code"] == "bad_request"


def test_malformed_json_body_gets_a_one_line_422(client):
    r = client.post(
        "/api/generate", content=b"{steps: 3", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["error"].startswith(
        "the request body is not valid JSON"
    )


# ---------------------------------------------------------------------------------------------- time limit
def test_request_over_the_time_limit_is_cancelled_mid_stream(tiny_run):
    gen = slow(0.05)
    with TestClient(create_app(tiny_run, timeout_s=0.6, generate_fn=gen)) as c:
        t0 = time.monotonic()
        r = c.post("/api/generate", json={"steps": 200})
        elapsed = time.monotonic() - t0
        ev = events_of(r.text)
        assert r.status_code == 200 and ev[0]["type"] == "start" and ev[1]["type"] == "step"
        assert ev[-1]["type"] == "error" and ev[-1]["code"] == "timeout"
        assert "limit of 0.6 s" in ev[-1]["message"] and "\n" not in ev[-1]["message"]
        # stopped at a step boundary, long before step 200
        assert elapsed < 5.0 and len(gen.steps_run) < 100
        ok = c.post("/api/generate", json={"steps": 2})  # the worker is free again
        assert events_of(ok.text)[-1]["type"] == "done"


def test_request_over_the_time_limit_before_its_first_step_gets_408(tiny_run):
    with TestClient(create_app(tiny_run, timeout_s=0.05, generate_fn=slow(0.3))) as c:
        r = c.post("/api/generate", json={"steps": 3})
        assert r.status_code == 408 and r.json()["code"] == "timeout"


# ---------------------------------------------------------------------------------------------- concurrency
def _stream(url: str, body: dict, out: dict, key: str) -> None:
    import httpx2 as httpx  # the HTTP client FastAPI's TestClient uses here

    with httpx.Client(timeout=60) as c:
        out[key] = events_of(c.post(url + "/api/generate", json=body).text)


def test_two_concurrent_requests_equal_sequential_ones(tiny_run, loaded):
    model, tok, cfg = loaded
    bodies = {
        "a": {
            "steps": 24,
            "seed": 1,
            "policy": "converge",
            "policy_options": {"threshold": 0.02, "s_max": 3},
        },
        "b": {
            "steps": 20,
            "seed": 2,
            "template": "def [MASK:3](alpha):\n    [MASK:6]",
            "sampler": "confidence",
            "policy": "per_token",
        },
    }
    gen = slow(0.005)  # interleave the two runs step by step
    with serve_in_thread(create_app(tiny_run, generate_fn=gen, max_workers=2)) as url:
        out: dict = {}
        threads = [
            threading.Thread(target=_stream, args=(url, b, out, k)) for k, b in bodies.items()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    spans = {}
    for ident, t in gen.steps_run:
        lo, hi = spans.get(ident, (t, t))
        spans[ident] = (min(lo, t), max(hi, t))
    (a0, a1), (b0, b1) = spans.values()  # two worker threads ...
    assert a0 < b1 and b0 < a1  # ... whose generations really overlapped in time
    for key, body in bodies.items():
        ev = out[key]
        assert ev[-1]["type"] == "done", ev[-1]
        kw = {k: v for k, v in body.items() if k not in ("steps",)}
        direct = generate(
            model,
            tok,
            steps=body["steps"],
            schedule=cfg.diffusion.schedule,
            **({"policy_options": {"s_max": cfg.diffusion.s_max}} | kw),
        )
        assert ev[-1]["tokens"] == direct.tokens.tolist(), key
        assert ev[-1]["report"]["loops_per_step"] == direct.report.loops_per_step, key


def test_client_disconnect_frees_the_worker(tiny_run):
    import httpx2 as httpx

    gen = slow(0.05)
    with serve_in_thread(
        create_app(tiny_run, generate_fn=gen, max_workers=1, timeout_s=60, max_steps=1000)
    ) as url:
        with httpx.Client(timeout=30) as c:
            with c.stream("POST", url + "/api/generate", json={"steps": 400}) as r:
                lines = r.iter_lines()
                assert json.loads(next(lines))["type"] == "start"
                assert json.loads(next(lines))["type"] == "step"
            # the stream is closed: the 400-step job must stop within a step or two
            t0 = time.monotonic()
            second = c.post(url + "/api/generate", json={"steps": 2})
            assert events_of(second.text)[-1]["type"] == "done"
            assert time.monotonic() - t0 < 5.0
    assert len(gen.steps_run) < 20


# ---------------------------------------------------------------------------------------------- precision
def test_precision_reaches_every_generation_and_bad_values_are_one_line(tiny_run, capsys):
    from helpers import run_cli

    seen = []

    def recording(model, tokenizer, *, precision="fp32", **kw):
        seen.append(precision)
        return generate(model, tokenizer, precision=precision, **kw)

    with TestClient(create_app(tiny_run, precision="bf16", generate_fn=recording)) as c:
        r = c.post("/api/generate", json={"steps": 2})
        assert events_of(r.text)[-1]["type"] == "done" and seen == ["bf16"]
    code, _, err = run_cli(["serve", "--checkpoint", tiny_run, "--precision", "fp16"], capsys)
    assert code == 2 and "--precision 'fp16' is unknown; use fp32 or bf16" in err
    assert len(err.strip().splitlines()) == 1
