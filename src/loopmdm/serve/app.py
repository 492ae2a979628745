"""The FastAPI app: a static page, ``GET /api/info`` and ``POST /api/generate`` streaming NDJSON events.

Why FastAPI and not Gradio: the viewer needs a custom token-level rendering (colour by reveal step,
hover details, a loops/FLOPs chart, a replay slider) that Gradio's components do not offer without
custom JS anyway; FastAPI + one static page keeps the dependency small (two packages), works offline
(no CDN, no telemetry) and streams each denoising step as it happens.
"""

from __future__ import annotations

import inspect
import json
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from .. import sampling
from ..checkpoint import load_model, resolve_checkpoint
from ..errors import LoopMDMError
from ..runtime import check_precision
from ..sampling import LOOP_POLICIES, SAMPLERS, build_canvas
from ..sampling import generate as default_generate
from ..viz.assets import read_asset
from ..viz.events import EventEncoder, PieceTable
from .jobs import GenerationJob
from .options import GenerateRequest, ServerLimits, describe_validation_error

STATUS = {"bad_request": 422, "timeout": 408, "cancelled": 409, "internal": 500}
MEDIA = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}


TEMPLATE_HELP = (
    "Infill: mark spans to generate with [MASK:n] (n tokens) or [MASK] (one token); the text "
    "around them is kept."
)
TEMPLATE_EXAMPLE = "def compute_[MASK:3](alpha, beta=None):\n    [MASK:8]\n    return alpha"


def _error(status: int, message: str, code: str = "bad_request") -> JSONResponse:
    """A one-line JSON error: ``{"error": message, "code": code}``."""
    return JSONResponse({"error": message, "code": code}, status_code=status)


def _line(event: dict[str, Any]) -> bytes:
    """One NDJSON line."""
    return (json.dumps(event, separators=(",", ":"), allow_nan=False) + "\n").encode()


def _choices(cls: Any, name: str) -> Optional[list[str]]:
    """Allowed values of a string option, where the sampling package lists them."""
    table = {
        "shape": sampling.SHAPES,
        "order": sampling.ORDERS.names(),
        "criterion": getattr(cls, "criteria", None),
    }
    values = table.get(name)
    return list(values) if values else None


def _options_of(cls: Any, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """Keyword options of a sampler / loop-policy class (name, type, default, choices) for the page's form;
    ``overrides`` replaces defaults (e.g. loops / s_max = the checkpoint's training S_max)."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return []
    out = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = None if p.default is inspect.Parameter.empty else p.default
        if default is not None and not isinstance(default, (int, float, bool, str)):
            continue
        default = overrides.get(p.name, default)
        kind = type(default).__name__ if default is not None else "float"
        out.append(
            {"name": p.name, "type": kind, "default": default, "choices": _choices(cls, p.name)}
        )
    return out


def _first_sentence(doc: Optional[str]) -> str:
    """The first sentence of a docstring, on one line, without reST backticks."""
    para = " ".join((doc or "").split("\n\n")[0].split()).replace("``", "")
    m = re.match(r"(.+?\.)(\s|$)", para)
    return m.group(1) if m else para


def _registry_listing(registry: Any, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """Every variant of a registry (``SAMPLERS``, ``LOOP_POLICIES``): name, first doc sentence, options."""
    return [
        {
            "name": n,
            "doc": _first_sentence(inspect.getdoc(registry.get(n))),
            "options": _options_of(registry.get(n), overrides),
        }
        for n in registry.names()
    ]


def _model_info(checkpoint: str | Path, model, cfg) -> dict[str, Any]:
    """What ``/api/info`` and every stream's start event say about the checkpoint."""
    return {
        "checkpoint": str(resolve_checkpoint(checkpoint)),
        "max_seq_len": cfg.model.max_seq_len,
        "parameters": model.num_parameters(),
        "n_h": cfg.model.n_h,
        "n_m": cfg.model.n_m,
        "n_o": cfg.model.n_o,
        "s_max": cfg.diffusion.s_max,
        "objective": cfg.diffusion.objective,
        "schedule": cfg.diffusion.schedule,
    }


def _default_policy_options(policy: str, loop_defaults: dict[str, int]) -> Optional[dict[str, int]]:
    """A request without policy options runs at the checkpoint's training S_max (``loops`` or ``s_max``,
    whichever the policy takes)."""
    accepted = inspect.signature(LOOP_POLICIES.get(policy)).parameters
    return {k: v for k, v in loop_defaults.items() if k in accepted} or None


def create_app(
    checkpoint: str | Path,
    *,
    timeout_s: float = 60.0,
    max_workers: int = 2,
    max_steps: int = 1024,
    max_samples: int = 4,
    ema: bool = False,
    device: str = "cpu",
    precision: str = "fp32",
    generate_fn: Optional[Callable[..., Any]] = None,
) -> FastAPI:
    """The viewer app for one checkpoint (run folder or checkpoint folder).

    timeout_s: wall-clock limit of one request; past it the generation is cancelled at the next denoising step.
    max_workers: generations that run at once (each in its own thread; more requests wait their turn).
    max_steps / max_samples: the largest T and N one request may ask for.
    device / precision: where the model runs, and ``"bf16"`` for the network under bf16 autocast.
    generate_fn: the sampler entry point (default ``loopmdm.sampling.generate``), replaceable for tests."""

    model, tokenizer, cfg = load_model(checkpoint, device=device, ema=ema)
    limits = ServerLimits(
        timeout_s=timeout_s,
        max_steps=max_steps,
        max_samples=max_samples,
        max_loops=max(
            64, 4 * cfg.diffusion.max_loops
        ),  # extrapolation up to 4 x the training S_max
    )
    check_precision(next(model.parameters()).device, precision, "--precision")
    generate = generate_fn or default_generate
    accepted = inspect.signature(generate).parameters
    extra_kwargs = {
        k: v
        for k, v in (("schedule", cfg.diffusion.schedule), ("precision", precision))
        if k in accepted
    }
    loop_defaults = {"loops": cfg.diffusion.max_loops, "s_max": cfg.diffusion.max_loops}
    pieces = PieceTable(tokenizer)
    model_info = _model_info(checkpoint, model, cfg)
    executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="loopmdm-gen")
    active: set[GenerationJob] = set()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for job in list(active):  # running generations stop at their next step
            job.cancel()
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="LoopMDM viewer", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.model, app.state.tokenizer, app.state.config, app.state.limits = (
        model,
        tokenizer,
        cfg,
        limits,
    )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, describe_validation_error(list(exc.errors())))

    @app.exception_handler(LoopMDMError)
    async def _library(request: Request, exc: LoopMDMError) -> JSONResponse:
        return _error(422, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> Response:
        return Response(read_asset("index.html"), media_type=MEDIA[".html"])

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        suffix = Path(name).suffix
        if suffix not in MEDIA:
            return _error(404, f"no static file {name!r}", code="not_found")
        try:
            return Response(read_asset(name), media_type=MEDIA[suffix])
        except LoopMDMError:
            return _error(404, f"no static file {name!r}", code="not_found")

    @app.get("/api/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        return {
            "model": model_info,
            "limits": vars(limits),
            "samplers": _registry_listing(SAMPLERS, {}),
            "policies": _registry_listing(LOOP_POLICIES, loop_defaults),
            "template_help": TEMPLATE_HELP,
            "template_example": TEMPLATE_EXAMPLE,
            "defaults": GenerateRequest().model_dump(),
        }

    @app.post("/api/generate")
    async def generate_endpoint(req: GenerateRequest) -> Response:
        req.check_limits(limits)
        kwargs = {**req.generate_kwargs(), **extra_kwargs}
        if not req.policy_options and req.policy in LOOP_POLICIES:
            kwargs["policy_options"] = _default_policy_options(req.policy, loop_defaults)
        # bad prompt / template / length: ConfigError -> 422
        canvas = build_canvas(
            tokenizer,
            req.num_samples,
            req.length,
            cfg.model.max_seq_len,
            prompt=req.prompt,
            template=req.template,
        )
        encoder = EventEncoder(tokenizer, pieces)
        job = GenerationJob(
            lambda on_step: generate(model, tokenizer, on_step=on_step, **kwargs),
            encoder,
            limits.timeout_s,
        )
        job.start(executor)
        active.add(job)
        try:
            # bad options fail before the first step: answer them as plain JSON
            first = await job.next_event()
        except BaseException:
            job.cancel()
            active.discard(job)
            raise
        if first["type"] == "error":
            active.discard(job)
            return _error(STATUS.get(first["code"], 500), first["message"], first["code"])
        echo = {**req.model_dump(), "policy_options": kwargs["policy_options"]}
        start = encoder.start(
            total_steps=req.steps, request=echo, model_info=model_info, given=~canvas.free
        )

        async def stream() -> AsyncIterator[bytes]:
            event = first
            try:
                yield _line(start)
                while True:
                    yield _line(event)
                    if event["type"] in ("done", "error"):
                        return
                    event = await job.next_event()
            finally:
                active.discard(job)
                if not job.finished:
                    job.cancel()  # client went away mid-stream: free the worker at its next step

        return StreamingResponse(
            stream(),
            media_type="application/x-ndjson",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return app
