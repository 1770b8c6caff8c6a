"""Interop: the protocol's own clients against ``sqlstream serve --http``.

- Python: ``durable-streams`` (PyPI): create, append, catch-up, live tail (SSE).
- TypeScript: ``@durable-streams/client`` (npm, installed with the conformance suite into
  the tests' cache folder): create, append, catch-up, live tail, and an idempotent
  producer across a server SIGKILL (exactly once).

Records written by the clients are checked through the Python API on the same file.
Without node/npm the TypeScript tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_procs import start_logged

ds = pytest.importorskip("durable_streams")
pytest.importorskip("uvicorn")

import sqlstream  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TS_CLIENT_VERSION = "0.2.6"


class Served:
    """``sqlstream serve --http`` in a child process (restartable on the same port)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        # Its log goes to a file (tests/helpers_procs.py): nobody reads a pipe after the first line.
        self.proc, line = start_logged(
            [sys.executable, "-m", "sqlstream", "--db", self.path, "serve", "--http", f"127.0.0.1:{self.port}"],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, log=Path(self.path + ".serve.log"), marker=" at http://")
        self.url = line.split(" at ")[1].split("/v1/stream")[0]
        self.port = int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    path = str(tmp_path / "interop.db")
    with sqlstream.open(path):
        pass
    server = Served(path)
    server.start()
    yield server
    server.stop()


def test_python_client_create_append_catch_up_and_live_tail(served: Served) -> None:
    url = served.url + "/v1/stream/py"
    stream = ds.DurableStream.create(url, content_type="application/json")
    stream.append({"n": 1})
    stream.append({"n": 2})
    with ds.stream(url, offset="-1", live=False) as res:
        assert res.read_json() == [{"n": 1}, {"n": 2}]
        tail = res.offset
    seen: list[object] = []

    def tail_live() -> None:
        with ds.stream(url, offset=tail, live="sse") as live:
            for item in live.iter_json():
                seen.append(item)
                if len(seen) == 2:
                    return

    reader = threading.Thread(target=tail_live, daemon=True)
    reader.start()
    time.sleep(0.3)
    with sqlstream.open(served.path) as db:
        db.stream("py").append({"n": 3})  # from Python, straight into the file
    stream.append({"n": 4})              # and through the client
    reader.join(15)
    assert seen == [{"n": 3}, {"n": 4}]
    with sqlstream.open(served.path) as db:
        assert [r.value for r in db.stream("py").read()] == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]
    stream.close()


# ----------------------------------------------------------------- TypeScript


def _node_modules() -> Path:
    base = os.environ.get("SQLSTREAM_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sqlstream-tests")
    folder = Path(base) / "ds-conformance-0.3.6"
    client = folder / "node_modules" / "@durable-streams" / "client" / "package.json"
    if not client.exists():
        if shutil.which("npm") is None or shutil.which("node") is None:
            if os.environ.get("CI"):
                pytest.fail("node/npm missing: CI must run the TypeScript interop tests (.ci/run installs them)")
            pytest.skip("node/npm not installed")
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "package.json").exists():
            (folder / "package.json").write_text('{"private": true}\n')
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", f"@durable-streams/client@{TS_CLIENT_VERSION}"],
                       cwd=folder, check=True, capture_output=True, timeout=600)
    return folder


def _node(folder: Path, script: str, *args: str) -> list[object]:
    """Run an ES module in the folder holding the client; its stdout lines are JSON."""
    file = folder / f"interop-{os.getpid()}-{threading.get_ident()}.mjs"
    file.write_text(script)
    try:
        proc = subprocess.run(["node", str(file), *args], cwd=folder, capture_output=True, text=True, timeout=120)
    finally:
        file.unlink()
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


TS_BASICS = """
import { DurableStream } from "@durable-streams/client"
const url = process.argv[2]
const stream = await DurableStream.create({ url, contentType: "application/json" })
await stream.append(JSON.stringify({ from: "ts", n: 1 }))
await stream.append(JSON.stringify({ from: "ts", n: 2 }))
const res = await stream.stream({ offset: "-1", live: false })
console.log(JSON.stringify(await res.json()))
const live = await stream.stream({ offset: res.offset, live: "sse" })
console.log(JSON.stringify("listening"))
const got = []
await new Promise((resolve) => {
  live.subscribeJson(async (batch) => {
    for (const item of batch.items) got.push(item)
    if (got.length >= 1) resolve()
  })
})
live.cancel()
console.log(JSON.stringify(got))
"""


def test_typescript_client_create_append_catch_up_and_live_tail(served: Served) -> None:
    folder = _node_modules()
    url = served.url + "/v1/stream/ts"
    appended = threading.Event()

    def append_later() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with sqlstream.open(served.path) as db:
                if db.query("SELECT count(*) FROM streams WHERE name = 'ts'").rows[0][0]:
                    if db.stream("ts").info().next_offset >= 2:
                        time.sleep(0.5)  # the client is reading and subscribing now
                        db.stream("ts").append({"from": "python"})
                        appended.set()
                        return
            time.sleep(0.05)

    helper = threading.Thread(target=append_later)
    helper.start()
    lines = _node(folder, TS_BASICS, url)
    helper.join(30)
    assert appended.is_set()
    assert lines[0] == [{"from": "ts", "n": 1}, {"from": "ts", "n": 2}]
    assert lines[-1] == [{"from": "python"}]


TS_PRODUCER = """
import { DurableStream, IdempotentProducer } from "@durable-streams/client"
const [url, from, to] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])]
const stream = new DurableStream({ url, contentType: "application/json" })
const producer = new IdempotentProducer(stream, "uploader", { epoch: 0, lingerMs: 0, maxInFlight: 1 })
// One message per batch (flush after each), so message i always travels as seq i: a
// producer that lost track after a crash resends from 0 and the server drops repeats.
for (let i = from; i < to; i++) {
  producer.append(JSON.stringify({ i }))
  await producer.flush()
}
await producer.detach()
console.log(JSON.stringify("done"))
"""


def test_typescript_idempotent_producer_is_exactly_once_across_a_server_sigkill(served: Served) -> None:
    folder = _node_modules()
    url = served.url + "/v1/stream/up"
    with sqlstream.open(served.path) as db:
        db.create_stream("up", metadata={"content_type": "application/json"})
    assert _node(folder, TS_PRODUCER, url, "0", "10") == ["done"]
    served.kill()      # SIGKILL right after the acknowledged appends
    served.start()     # same file, same port
    # The producer restarts without knowing what was stored: it resends 0..9, then goes on.
    assert _node(folder, TS_PRODUCER, url, "0", "15") == ["done"]
    with sqlstream.open(served.path) as db:
        assert [r.value for r in db.stream("up").read(0, 100)] == [{"i": i} for i in range(15)]


def test_python_client_with_producer_headers_is_exactly_once_across_a_server_sigkill(served: Served) -> None:
    """durable-streams 0.1 has no producer object: its per-request headers carry the
    protocol's Producer-* headers, one batch (seq) per append."""
    url = served.url + "/v1/stream/pyprod"
    ds.DurableStream.create(url, content_type="application/json").close()

    def send(upto: int) -> None:
        for i in range(upto):
            headers = {"Producer-Id": "py", "Producer-Epoch": "0", "Producer-Seq": str(i)}
            with ds.DurableStream(url, content_type="application/json", headers=headers, batching=False) as s:
                s.append({"i": i})

    send(6)
    served.kill()
    served.start()
    send(9)  # a restarted producer resends 0..5 (duplicates), then 6..8
    with sqlstream.open(served.path) as db:
        assert [r.value for r in db.stream("pyprod").read(0, 100)] == [{"i": i} for i in range(9)]
