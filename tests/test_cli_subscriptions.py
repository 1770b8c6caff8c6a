"""The subscription and reader commands of the CLI, run in-process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from sqlstream.cli import main


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], db_path: str) -> Iterator[Any]:
    def runner(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main(["--db", db_path, *argv])
        out, err = capsys.readouterr()
        return status, out, err

    yield runner


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_subscribe_fetch_ack_nack_pending(run: Any) -> None:
    assert run("create", "orders")[0] == 0
    assert run("append", "orders", "a", "b", "c")[0] == 0
    status, out, _ = run("subscribe", "billing", "orders", "--ack-timeout", "60", "--json")
    assert status == 0
    created = jsonl(out)[0]
    assert created["created"] is True and created["stream"] == "orders" and created["lag"] == 3
    status, out, err = run("subscribe", "billing", "orders", "--exist-ok")
    assert status == 0 and "already exists" in out
    status, out, _ = run("fetch", "billing", "--max", "2", "--consumer", "w1", "--json")
    records = jsonl(out)
    assert [(r["offset"], r["value"], r["attempts"], r["subscription"]) for r in records] == [
        (0, "a", 1, "billing"), (1, "b", 1, "billing")
    ]
    status, out, err = run("ack", "billing", "0", "7", "--json")
    assert status == 0 and jsonl(out) == [{"subscription": "billing", "acked": [0], "ignored": [7]}]
    assert "ignored: 7" in err
    status, out, err = run("nack", "billing", "1", "--error", "oops", "--json")
    assert jsonl(out)[0]["nacked"] == [1]
    status, out, _ = run("pending", "billing", "--json")
    assert [(e["offset"], e["consumer"], e["last_error"]) for e in jsonl(out)] == [(1, None, "oops")]
    status, out, _ = run("fetch", "billing", "--ack")
    assert status == 0 and out.splitlines()[0].endswith("(attempt 2)") and len(out.splitlines()) == 2
    status, out, _ = run("subscriptions", "--json")
    info = jsonl(out)[0]
    assert (info["name"], info["acked"], info["pending"], info["lag"]) == ("billing", 3, 0, 0)
    status, out, _ = run("subscriptions")
    assert status == 0 and "billing" in out.splitlines()[2]
    status, out, _ = run("pending", "billing")
    assert status == 0 and out.splitlines()[0].split()[0] == "offset"


def test_errors_and_unsubscribe(run: Any) -> None:
    run("create", "orders")
    run("append", "orders", "a")
    status, _, err = run("fetch", "nope")
    assert status == 1 and err.startswith("Error: no subscription named 'nope'") and "Hint: " in err
    status, _, err = run("subscribe", "s", "missing")
    assert status == 1 and "Error: no stream named 'missing'" in err
    run("subscribe", "s", "orders")
    status, _, err = run("subscribe", "s", "orders")
    assert status == 1 and "--exist-ok" in err
    run("fetch", "s")
    status, _, err = run("unsubscribe", "s")
    assert status == 1 and "Hint: " in err and "--force" in err
    status, out, _ = run("unsubscribe", "s", "--force", "--json")
    assert status == 0 and jsonl(out) == [{"subscription": "s", "deleted": True, "dropped_pending": 1}]
    status, _, err = run("subscribe", "d", "orders", "--max-deliveries", "3")
    assert status == 1 and "dead_letter" in err
    assert run("ack", "s", "-1")[0] == 2  # a usage error


def test_reader(run: Any) -> None:
    run("create", "orders")
    run("append", "orders", "a", "b", "c")
    status, out, _ = run("reader", "ui", "orders", "--limit", "2", "--json")
    assert [r["value"] for r in jsonl(out)] == ["a", "b"]
    status, out, _ = run("reader", "ui")
    assert status == 0 and out.split("\t")[0] == "2"
    assert run("reader", "ui")[1] == ""
    status, out, _ = run("reader", "ui", "--seek", "1", "--json")
    assert jsonl(out) == [{"reader": "ui", "position": 1}]
    status, out, _ = run("reader", "--list", "--json")
    assert [(r["name"], r["stream"], r["position"], r["lag"]) for r in jsonl(out)] == [("ui", "orders", 1, 2)]
    status, _, err = run("reader", "nobody")
    assert status == 1 and "sqlstream reader NAME STREAM" in err
    status, out, _ = run("reader", "ui", "--delete")
    assert status == 0 and "deleted" in out
    assert run("reader")[0] == 1
