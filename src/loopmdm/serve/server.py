"""Running the viewer app with uvicorn: in the foreground (``loopmdm serve``) or in a background thread
(tests, notebooks), always bound to an explicit host; loopback unless asked otherwise."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from ..errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket on (host, port); port 0 picks a free one. One-line ConfigError when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port or --host"
        ) from None
    return sock


def _server(app, log_level: str):
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2))


def run_server(app, sock: socket.socket, log_level: str = "info") -> None:
    """Serve ``app`` on an already bound socket (see ``bind_socket``) until interrupted."""
    try:
        _server(app, log_level).run(sockets=[sock])
    finally:
        sock.close()


@contextmanager
def serve_in_thread(
    app,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    start_timeout_s: float = 30.0,
) -> Iterator[str]:
    """Serve ``app`` from a daemon thread; yields the base URL (``http://127.0.0.1:PORT``), stops on exit."""
    sock = bind_socket(host, port)
    server = _server(app, log_level)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="loopmdm-serve"
    )
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the viewer server did not start")
        time.sleep(0.02)
    bound_host, bound_port = sock.getsockname()[:2]
    try:
        yield f"http://{'[' + bound_host + ']' if ':' in bound_host else bound_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
