"""Run the service under uvicorn: HTTP/1.1 (h11, which the zero-copy path knows), optional TLS,
graceful stop on SIGTERM (running downloads get ``shutdown_timeout`` seconds to finish)."""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chiron.errors import EnvironmentProblem, UsageError
from chiron.service.settings import Settings


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 8443
    certfile: Path | None = None
    keyfile: Path | None = None
    shutdown_timeout: float = 30.0
    keep_alive: int = 15
    fd: int | None = None  # an already bound socket (systemd socket activation, tests)


def config(settings: Settings, listen: Listen) -> object:
    """The uvicorn Config for ``settings`` (the application is made here: the database is opened)."""
    import uvicorn

    from chiron.service.app import create_app
    from chiron.service.zerocopy import ZeroCopyMiddleware

    if (listen.certfile is None) != (listen.keyfile is None):
        raise UsageError("--certfile and --keyfile go together")
    for path in (listen.certfile, listen.keyfile):
        if path is not None and not path.is_file():
            raise UsageError(f"{path}: no such file")
    app = ZeroCopyMiddleware(create_app(settings))
    return uvicorn.Config(
        app,
        host=listen.host,
        port=listen.port,
        fd=listen.fd,
        http="h11",
        ws="none",
        lifespan="on",
        access_log=False,  # the service writes its own JSON access log (no token ever appears in it)
        log_level="warning",
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=listen.keep_alive,
        timeout_graceful_shutdown=int(listen.shutdown_timeout),
        ssl_certfile=str(listen.certfile) if listen.certfile else None,
        ssl_keyfile=str(listen.keyfile) if listen.keyfile else None,
        ssl_version=ssl.PROTOCOL_TLS_SERVER,
        backlog=2048,
    )


def serve(settings: Settings, listen: Listen, announce: Callable[[], None] = lambda: None) -> None:
    """Serve until SIGTERM or SIGINT; ``announce`` runs once the database, the sources' trust anchor and
    the port are known to be usable (before that, a problem is an error, not a half-started service)."""
    import uvicorn

    cfg = config(settings, listen)
    server = uvicorn.Server(cfg)  # type: ignore[arg-type]
    if listen.fd is None:
        _check_port(listen.host, listen.port)
    announce()
    server.run()
    if not server.started:
        raise EnvironmentProblem(f"the service did not start on {listen.host}:{listen.port} (see the messages above)")


def _check_port(host: str, port: int) -> None:
    """A clear error before uvicorn's own, for the commonest start-up failure."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EnvironmentProblem(f"{host}:{port} is already in use", hint="choose another --port") from None
            raise EnvironmentProblem(f"cannot listen on {host}:{port}: {exc.strerror}") from None
