"""Helpers for e2e tests: free loopback ports, starting real service processes, waiting."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx


def free_port_block(n: int) -> int:
    """A base port such that base .. base+n-1 are all free on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no block of free ports found")


def wait_ready(urls: Sequence[str], timeout: float = 30.0, path: str = "/readyz") -> None:
    """Wait until every URL answers 200 on ``path``; raise with the ones that did not."""
    pending = list(urls)
    end = time.monotonic() + timeout
    while pending and time.monotonic() < end:
        for url in list(pending):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + path, timeout=1.0).status_code == 200:
                    pending.remove(url)
        if pending:
            time.sleep(0.1)
    if pending:
        raise TimeoutError(f"not ready after {timeout}s: {pending}")


@contextlib.contextmanager
def run_processes(
    argvs: Sequence[Sequence[str]], env: Mapping[str, str], cwd: Path | None = None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start processes (each in its own session) and SIGTERM then SIGKILL them at the end."""
    procs = [
        subprocess.Popen(
            list(a),
            env={**os.environ, **env},
            cwd=cwd,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=None,
        )
        for a in argvs
    ]
    try:
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)


def service_argv(app_dir: Path, name: str, replica: int = 0) -> list[str]:
    """The command line serving one replica of a service."""
    return [
        sys.executable,
        "-m",
        "garrison",
        "run",
        name,
        "--app-dir",
        str(app_dir),
        "--replica",
        str(replica),
    ]
