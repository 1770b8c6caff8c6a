"""The peers sqlstream is compared with: import checks and a private redis-server.

Every peer is optional. A missing one makes its contenders report "skipped" with the
reason; nothing is ever substituted for it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .harness import Skip


def need(module: str, package: str) -> Any:
    """Import ``module`` or raise Skip naming the PyPI package that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Skip(f"{package} is not installed (pip install -r benchmarks/requirements.txt)") from exc


def version_of(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return str(getattr(mod, "__version__", "?"))


@dataclass
class RedisServer:
    """A running private redis-server: where it listens, and a client factory."""

    host: str
    port: int
    version: str
    parser: str

    def client(self) -> Any:
        redis = need("redis", "redis")
        return redis.Redis(host=self.host, port=self.port, socket_timeout=30)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(enabled: bool = True) -> Iterator[RedisServer | str]:
    """Start redis-server on 127.0.0.1 (random free port, AOF ``appendfsync everysec``,
    data in a temporary directory) and stop it afterwards, even on error.

    Yields a RedisServer, or a str saying why Redis is skipped.
    """
    if not enabled:
        yield "disabled (--no-redis)"
        return
    binary = shutil.which("redis-server")
    if binary is None:
        yield "redis-server is not installed (apt-get install -y redis-server)"
        return
    try:
        redis = importlib.import_module("redis")
    except ImportError:
        yield "the redis client is not installed (pip install -r benchmarks/requirements.txt)"
        return
    datadir = tempfile.mkdtemp(prefix="sqlstream-bench-redis-")
    proc: subprocess.Popen[bytes] | None = None
    try:
        last_error = "did not start"
        for _attempt in range(3):  # a free port can be taken between probe and bind
            port = _free_port()
            proc = subprocess.Popen(
                [
                    binary,
                    "--bind", "127.0.0.1",
                    "--port", str(port),
                    "--dir", datadir,
                    "--appendonly", "yes",
                    "--appendfsync", "everysec",
                    "--save", "",
                    "--protected-mode", "yes",
                    "--daemonize", "no",
                    "--logfile", os.path.join(datadir, "redis.log"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    client.ping()
                    break
                except redis.ConnectionError as exc:
                    last_error = str(exc)
                    time.sleep(0.05)
            else:
                _stop(proc)
                proc = None
                continue
            info = client.info("server")
            client.close()
            try:
                from redis.utils import HIREDIS_AVAILABLE

                parser = "hiredis" if HIREDIS_AVAILABLE else "pure-Python parser"
            except ImportError:
                parser = "?"
            yield RedisServer("127.0.0.1", port, str(info.get("redis_version", "?")), parser)
            return
        yield f"redis-server failed to start: {last_error}"
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(datadir, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
