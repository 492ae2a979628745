"""``loopmdm serve``: the interactive denoising viewer in the browser (FastAPI + one static page)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError, install_hint
from .app import app, info
from .options import check_sampling_precision


@app.command()
def serve(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Run folder or checkpoint folder."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to bind (default loopback; 0.0.0.0 exposes it)."
    ),
    port: int = typer.Option(8000, "--port", help="TCP port (0 = any free port)."),
    timeout: float = typer.Option(
        60.0, "--timeout", help="Seconds one generation may run before it is cancelled."
    ),
    workers: int = typer.Option(2, "--workers", help="Generations that run at once (others wait)."),
    max_steps: int = typer.Option(
        1024, "--max-steps", help="Largest number of denoising steps T a request may ask."
    ),
    max_samples: int = typer.Option(
        4, "--max-samples", help="Largest number of samples N a request may ask."
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="torch CPU threads (default: torch's choice)."
    ),
    device: str = typer.Option("cpu", "--device", help="Device for the model, e.g. cpu or cuda."),
    precision: str = typer.Option(
        "fp32", "--precision", help="fp32 or bf16 (autocast of the network)."
    ),
    ema: bool = typer.Option(False, "--ema", help="Use EMA weights when present."),
) -> None:
    """Open a local web page that shows tokens being revealed step by step, with the loops S per step."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError(
            "loopmdm serve needs FastAPI and uvicorn: " + install_hint("serve")
        ) from None
    from ..serve import create_app
    from ..serve.server import bind_socket, is_loopback, run_server

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} must be in 0..65535")
    if workers < 1:
        raise ConfigError(f"--workers {workers} must be >= 1")
    check_sampling_precision(precision)
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads {threads} must be >= 1")
        import torch

        torch.set_num_threads(threads)
    sock = bind_socket(host, port)  # fail fast, before loading the model, when the address is taken
    try:
        web = create_app(
            checkpoint,
            timeout_s=timeout,
            max_workers=workers,
            max_steps=max_steps,
            max_samples=max_samples,
            ema=ema,
            device=device,
            precision=precision,
        )
    except BaseException:
        sock.close()
        raise
    if not is_loopback(host):
        info(
            f"warning: --host {host} makes the viewer reachable from other machines; it has no authentication"
        )
    shown = f"[{host}]" if ":" in host else host
    info(f"LoopMDM viewer on http://{shown}:{sock.getsockname()[1]}/  (Ctrl+C to stop)")
    run_server(web, sock)
