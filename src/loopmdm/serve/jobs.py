"""One generation request run in a worker thread, its denoising steps streamed to an asyncio consumer.

Each request owns its generator state, its event queue and a cancel flag. ``on_step`` (called by
``generate`` after every denoising step) checks the flag and the deadline and raises
:class:`GenerationCancelled`, so a request over the time limit, or whose client went away, stops at the
next step boundary and frees its worker. The model is shared read-only (eval mode, ``torch.no_grad``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Executor
from typing import Any, Callable, Optional

import torch

from ..errors import LoopMDMError
from ..viz.events import EventEncoder, error_event

log = logging.getLogger("loopmdm.serve")


class GenerationCancelled(LoopMDMError):
    """A generation was stopped before its last step: time limit reached or client disconnected."""

    def __init__(self, message: str, code: str = "cancelled"):
        super().__init__(message)
        self.code = code


class GenerationJob:
    """Runs ``run(on_step) -> SampleOutput`` in ``executor``; ``events()`` yields step / done / error events."""

    def __init__(
        self, run: Callable[[Callable[[Any], None]], Any], encoder: EventEncoder, timeout_s: float
    ):
        self.run = run
        self.encoder = encoder
        self.timeout_s = timeout_s
        self.cancel_flag = threading.Event()
        self.started = time.monotonic()
        self.deadline = self.started + timeout_s
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.finished = False

    # ---------------------------------------------------------------- worker thread side
    def _timeout_message(self) -> str:
        return (
            f"generation cancelled: it ran past this server's limit of {self.timeout_s:g} s "
            "(use fewer steps or samples, or restart the server with a larger --timeout)"
        )

    def _check(self) -> None:
        if self.cancel_flag.is_set():
            raise GenerationCancelled("generation cancelled: the client went away")
        if time.monotonic() > self.deadline:
            raise GenerationCancelled(self._timeout_message(), code="timeout")

    def _on_step(self, info: Any) -> None:
        self._check()
        self._emit(self.encoder.step(info, time.monotonic() - self.started))

    def _emit(self, event: dict[str, Any]) -> None:
        assert self.loop is not None
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the event loop is gone (server shutting down): stop at this step
            self.cancel_flag.set()
            raise GenerationCancelled("generation cancelled: the server is shutting down") from None

    def _work(self) -> None:
        try:
            with torch.no_grad():
                output = self.run(self._on_step)
            self._check()  # a run that ends after the deadline is still reported as over the limit
            event = self.encoder.done(output)
        except GenerationCancelled as e:
            event = error_event(e.code, str(e))
        except LoopMDMError as e:
            event = error_event(
                "bad_request", str(e).splitlines()[0] if str(e) else type(e).__name__
            )
        except Exception as e:  # a bug: log the traceback here, send the client one line
            log.exception("generation failed")
            first_line = str(e).splitlines()[0] if str(e) else ""
            event = error_event("internal", f"internal error: {type(e).__name__}: {first_line}")
        try:
            self._emit(event)
        except GenerationCancelled:
            pass

    # ---------------------------------------------------------------- event loop side
    def start(self, executor: Executor) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.run_in_executor(executor, self._work)

    def cancel(self) -> None:
        """Ask the worker to stop at its next step (client gone, or the consumer gave up)."""
        self.cancel_flag.set()

    async def next_event(self) -> dict[str, Any]:
        """The next event; an ``error`` event (code ``timeout``) if the worker is stuck past the deadline."""
        grace = 5.0  # a step in progress is allowed to finish before the consumer gives up on it
        try:
            event = await asyncio.wait_for(
                self.queue.get(), timeout=max(self.deadline - time.monotonic(), 0) + grace
            )
        except asyncio.TimeoutError:
            self.cancel()
            event = error_event("timeout", self._timeout_message())
        if event["type"] in ("done", "error"):
            self.finished = True
        return event
