"""The FastAPI app: a static page, ``GET /api/info`` and ``POST /api/generate`` streaming NDJSON events.

Why FastAPI and not Gradio: the viewer needs a custom token-level rendering (colour by reveal step,
hover details, a loops/FLOPs chart, a replay slider) that Gradio's components do not offer without
custom JS anyway; FastAPI + one static page keeps the dependency small (two packages), works offline
(no CDN, no telemetry) and streams each denoising step as it happens.
"""

from __future__ import annotations

import inspect
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from ..errors import LoopMDMError
from .assets import read_asset
from .events import EventEncoder, PieceTable
from .jobs import GenerationJob
from .options import GenerateRequest, ServerLimits, describe_validation_error

log = logging.getLogger("loopmdm.serve")

STATUS = {"bad_request": 422, "timeout": 408, "cancelled": 409, "internal": 500}
MEDIA = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".js": "text/javascript; charset=utf-8"}


def _error(status: int, message: str, code: str = "bad_request") -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def _default_generate() -> Callable[..., Any]:
    from ..sampling import generate

    return generate


def _options_of(obj: Any) -> list[dict[str, Any]]:
    """Keyword options of a sampler / policy class (name, default, type) for the page's form."""
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return []
    out = []
    for p in params:
        if p.name in ("self", "model", "tokenizer", "cfg", "config") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = None if p.default is inspect.Parameter.empty else p.default
        if default is not None and not isinstance(default, (int, float, bool, str)):
            continue
        kind = type(default).__name__ if default is not None else "float"
        out.append({"name": p.name, "default": default, "type": kind})
    return out


def _registry_listing(kind_word: str, fallback: list[str]) -> list[dict[str, Any]]:
    """Samplers or loop policies found in ``loopmdm.sampling``'s registries, with their options."""
    from .. import sampling
    from ..registry import Registry

    for value in vars(sampling).values():
        if isinstance(value, Registry) and kind_word in value.kind.lower():
            return [{"name": n, "doc": (inspect.getdoc(value.get(n)) or "").split("\n")[0],
                     "options": _options_of(value.get(n))} for n in value.names()]
    return [{"name": n, "doc": "", "options": []} for n in fallback]


def create_app(checkpoint: str | Path, *, timeout_s: float = 60.0, max_workers: int = 2, max_steps: int = 1024,
               max_samples: int = 4, ema: bool = False, device: str = "cpu",
               generate_fn: Optional[Callable[..., Any]] = None) -> FastAPI:
    """The viewer app for one checkpoint (run folder or checkpoint folder).

    timeout_s: wall-clock limit of one request; past it the generation is cancelled at the next denoising step.
    max_workers: generations that run at once (each in its own thread; more requests wait their turn).
    max_steps / max_samples: the largest T and N one request may ask for.
    generate_fn: the sampler entry point (default ``loopmdm.sampling.generate``), replaceable for tests."""
    from ..checkpoint import load_model, resolve_checkpoint

    limits = ServerLimits(timeout_s=timeout_s, max_steps=max_steps, max_samples=max_samples)
    model, tokenizer, cfg = load_model(checkpoint, device=device, ema=ema)
    generate = generate_fn or _default_generate()
    pieces = PieceTable(tokenizer)
    model_info = {"checkpoint": str(resolve_checkpoint(checkpoint)), "max_seq_len": cfg.model.max_seq_len,
                  "parameters": model.num_parameters(), "n_h": cfg.model.n_h, "n_m": cfg.model.n_m,
                  "n_o": cfg.model.n_o, "s_max": cfg.diffusion.s_max, "objective": cfg.diffusion.objective,
                  "schedule": cfg.diffusion.schedule}
    executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="loopmdm-gen")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="LoopMDM viewer", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.model, app.state.tokenizer, app.state.config, app.state.limits = model, tokenizer, cfg, limits

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
        return {"model": model_info, "limits": vars(limits),
                "samplers": _registry_listing("sampler", ["ancestral"]),
                "policies": _registry_listing("polic", ["fixed"]),
                "defaults": GenerateRequest().model_dump()}

    @app.post("/api/generate")
    async def generate_endpoint(req: GenerateRequest) -> Response:
        req.check_limits(limits)
        kwargs = req.generate_kwargs()
        encoder = EventEncoder(tokenizer, pieces)
        job = GenerationJob(lambda on_step: generate(model, tokenizer, on_step=on_step, **kwargs), encoder,
                            limits.timeout_s)
        job.start(executor)
        first = await job.next_event()  # bad options fail before the first step: answer them as plain JSON
        if first["type"] == "error":
            return _error(STATUS.get(first["code"], 500), first["message"], first["code"])
        start = encoder.start(total_steps=req.steps, request=req.model_dump(), model_info=model_info)

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
                if not job.finished:
                    job.cancel()  # client went away mid-stream: free the worker at its next step

        return StreamingResponse(stream(), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return app


def _line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event, separators=(",", ":"), allow_nan=False) + "\n").encode()
