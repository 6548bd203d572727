"""A trivial garrison service under uvicorn in its own process: the target of client benchmarks.

``python -m bench._echo [--cpu N]`` binds 127.0.0.1 on a free port, prints the port on stdout and
serves ``GET /ping -> {"pong": true}`` from a garrison :class:`~garrison.service.Service` until
SIGTERM. :func:`echo_server` starts it from a benchmark and stops it (by its pid) afterwards.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["echo_server", "pin"]


def pin(cpu: int | None) -> set[int] | None:
    """Pin this process to ``cpu`` when it is one we may use; the previous set (None: no-op)."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    before = os.sched_getaffinity(0)
    if cpu not in before:
        return None
    os.sched_setaffinity(0, {cpu})
    return before


def _app() -> Any:
    from garrison.service import Service

    svc = Service("echo")

    @svc.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"pong": True}

    return svc.asgi()


def _serve(cpu: int | None) -> None:
    pin(cpu)
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    # uvicorn's defaults, as `garrison run` serves (httptools and uvloop when installed), but
    # connections kept alive across the pauses between a benchmark's rounds.
    config = uvicorn.Config(
        _app(),
        log_level="warning",
        access_log=False,
        lifespan="on",
        backlog=2048,
        timeout_keep_alive=120,
    )
    server = uvicorn.Server(config)
    print(sock.getsockname()[1], flush=True)
    server.run(sockets=[sock])


@contextmanager
def echo_server(cpu: int | None = None, start_timeout: float = 20.0) -> Iterator[str]:
    """Run the echo service in a child process (pinned to ``cpu``); yield its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._echo", *(["--cpu", str(cpu)] if cpu is not None else [])],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"echo server did not start (exit status {proc.poll()})")
        url = f"http://127.0.0.1:{int(line)}"
        _wait_ready(url, proc, start_timeout)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"echo server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"echo server at {url} not ready within {timeout:.0f}s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cpu", type=int, default=None, help="pin the server to this CPU")
    _serve(parser.parse_args().cpu)
