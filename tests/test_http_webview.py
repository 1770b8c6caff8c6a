"""The live web view (GET /) in a real headless browser: Debian's chromium.

The page is opened on a stream (``/?stream=NAME``); once its SSE tail is connected (the
server counts it as a live connection), a record is appended through the Python API; the
DOM chromium dumps when it stops must show that record. Without chromium the test skips,
except under CI, where it fails (.ci/run installs it).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")

import sqlstream  # noqa: E402
from sqlstream.http import HttpConfig  # noqa: E402
from sqlstream.http.server import HttpServer  # noqa: E402


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: CI must run the web view test (.ci/run installs it)")
    pytest.skip("chromium is not installed")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[HttpServer, str]]:
    path = str(tmp_path / "view.db")
    with sqlstream.open(path) as db:
        db.create_stream("events", metadata={"content_type": "application/json"}).append({"old": True})
    srv = HttpServer(path, "127.0.0.1", 0, HttpConfig())
    srv.start()
    yield srv, path
    srv.stop(10)


class Browser:
    """Headless chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
    NUL-terminated JSON on the child's fds 3 and 4), so no extra client library is needed."""

    #: How long one DevTools call may wait for its reply: a browser that neither answers nor
    #: closes the pipe fails the test with its own log instead of blocking the run for ever.
    REPLY_WAIT = 60.0

    def __init__(self, binary: str, profile: Path) -> None:
        self._log = profile.with_suffix(".log")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds() -> None:  # in the child: the pipe ends at fds 3 (commands) and 4 (replies)
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        # --disable-dev-shm-usage: containers often give /dev/shm 64 MiB, where chromium's
        # renderer stalls or crashes; its shared memory goes to /tmp instead.
        with open(self._log, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-extensions", f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
                stdout=log, stderr=log, preexec_fn=fds, close_fds=False)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next = 0

    def call(self, method: str, params: dict[str, object] | None = None, session: str | None = None) -> dict[str, object]:
        self._next += 1
        message: dict[str, object] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                if not select.select([self._from_child], [], [], self.REPLY_WAIT)[0]:
                    raise RuntimeError(f"chromium did not answer {method} in {self.REPLY_WAIT:.0f} s; "
                                       f"its log: {self._log.read_text(errors='replace')[-2000:]!r}")
                chunk = os.read(self._from_child, 65536)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply["result"])

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)


@pytest.mark.slow
def test_the_page_shows_a_record_appended_after_it_loaded(served: tuple[HttpServer, str], tmp_path: Path) -> None:
    server, path = served
    browser = Browser(_chromium(), tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", {"url": f"{server.url}/?stream=events"})["targetId"]
        session = str(browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"])

        def tail_text() -> str:
            result = browser.call("Runtime.evaluate", {"expression": "document.getElementById('tail').textContent + "
                                                                     "'|' + document.getElementById('status').textContent"},
                                  session)
            return str(dict(result["result"]).get("value", ""))  # type: ignore[call-overload]

        deadline = time.monotonic() + 30
        while "(live)" not in tail_text() or server.app.live < 1:  # the page's EventSource is connected
            assert time.monotonic() < deadline, f"the page never opened its live tail: {tail_text()!r}"
            time.sleep(0.05)
        assert "old" not in tail_text()  # the tail starts at "now"
        with sqlstream.open(path) as db:
            db.stream("events").append({"appended": "after the page loaded"})
        while '{"appended":"after the page loaded"}' not in tail_text():
            assert time.monotonic() < deadline, f"the record never appeared: {tail_text()!r}"
            time.sleep(0.05)
    finally:
        browser.close()
