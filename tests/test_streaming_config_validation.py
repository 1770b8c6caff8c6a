"""Relay and archive options are validated when the config is loaded (issue 20, item 17).

A value the relay could not use -- a timeout of 0, NaN or -1 (then retried for ever), a
duplicate window of 1e300 or a max_in_flight of a billion (found only when it runs), an
unknown key inside an archive's ``storage`` table (silently ignored) -- must be refused by
``parse_config`` / ``load_config`` as a ``ConfigError`` naming the option, before
anything runs. No server is needed: nothing here connects.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sqlstream.errors import InvalidArgument, SqlstreamError
from sqlstream.streaming import load_config, parse_config
from sqlstream.streaming.config import ConfigError

pytest.importorskip("nats", reason="nats-py is not installed (pip install -e '.[test]')")

from sqlstream.streaming.jetstream import JetStreamForward, JetStreamSource  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def forward(**options: Any) -> dict[str, Any]:
    table: dict[str, Any] = {"service": "jetstream", "keys": ["*"], "stream": "EDGE", **options}
    return {"store": {"streamers": ["relay"]}, "streamers": {"relay": table}}


def source(**options: Any) -> dict[str, Any]:
    table: dict[str, Any] = {"service": "jetstream-source", "keys": ["commands"], "stream": "CMD", **options}
    return {"store": {"streamers": ["inbox"]}, "streamers": {"inbox": table}}


BAD_FORWARD = [
    ("ack_timeout", 0), ("ack_timeout", -1.0), ("ack_timeout", math.nan), ("ack_timeout", math.inf),
    ("connect_timeout", math.nan), ("connect_timeout", -1), ("connect_timeout", 0.0),
    ("backoff_max", 0), ("backoff_max", math.inf),
    ("duplicate_window", math.nan), ("duplicate_window", 1e300), ("duplicate_window", 0),
    ("max_in_flight", 0), ("max_in_flight", 10**9), ("max_in_flight", -5),
    # An integer too large for a float: a raw OverflowError from float() in the check.
    ("ack_timeout", 10**400), ("duplicate_window", 10**400), ("connect_timeout", 10**400),
    ("replicas", 0), ("replicas", 6),
    ("cursor_interval", -0.1), ("cursor_interval", math.nan),
    ("stream", "ED GE"), ("stream", "a.b"), ("stream", ""), ("stream", "x>"),
    ("subjects", ["edge..x"]), ("subjects", ["edge.>.x"]), ("subjects", ["a b"]),
    ("servers", []), ("servers", ["http://hub:4222"]),
    ("user", "edge"),  # without password
    ("tls_ca", "no-such-ca.pem"), ("creds", "no-such.creds"), ("nkey", "."),
    ("subject", "edge.{host}"), ("subject", "edge..{stream}"), ("subject", "edge.*.{stream}"),
]

BAD_SOURCE = [
    ("batch", 0), ("batch", 10**7), ("ack_wait", math.nan), ("ack_wait", -3),
    ("durable", "dev 1"), ("filter_subject", "cmd..x"), ("dead_letter", "bad name"),
    ("create", True),  # without subjects or a filter
    ("replicas", 9), ("connect_timeout", -1), ("ack_wait", 10**400),
]


@pytest.mark.parametrize(("key", "value"), BAD_FORWARD, ids=[f"{k}={v!r}"[:40] for k, v in BAD_FORWARD])
def test_a_forward_option_the_relay_cannot_use_is_refused_when_loaded(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(forward(**{key: value}), "relay.toml")
    assert info.value.key == key, info.value
    assert info.value.table == "streamers.relay"


@pytest.mark.parametrize(("key", "value"), BAD_SOURCE, ids=[f"{k}={v!r}"[:40] for k, v in BAD_SOURCE])
def test_a_source_option_the_relay_cannot_use_is_refused_when_loaded(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(source(**{key: value}), "source.toml")
    assert info.value.key == key, info.value


def test_a_source_with_two_local_streams_is_refused_when_loaded() -> None:
    data = source()
    data["streamers"]["inbox"]["keys"] = ["a", "b"]
    with pytest.raises(ConfigError) as info:
        parse_config(data, "source.toml")
    assert info.value.key == "keys"


def test_a_source_whose_dead_letter_stream_is_its_own_stream_is_refused_when_loaded() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(source(dead_letter="commands"), "source.toml")
    assert info.value.key == "dead_letter"


def test_the_python_api_refuses_the_same_values() -> None:
    """A service built without a config file (Runner(db, [JetStreamForward(...)])) checks too."""
    options = {key: spec.default for key, spec in JetStreamForward.OPTIONS.items()}
    options["stream"] = "EDGE"
    JetStreamForward("relay", ["*"], options)
    for key, value in BAD_FORWARD:
        with pytest.raises(InvalidArgument, match=key if key != "user" else "user and password"):
            JetStreamForward("relay", ["*"], {**options, key: value})
    with pytest.raises(InvalidArgument, match="dead_letter"):
        source_options = {key: spec.default for key, spec in JetStreamSource.OPTIONS.items()}
        JetStreamSource("inbox", ["commands"], {**source_options, "stream": "CMD", "dead_letter": "commands"})


def test_the_relay_options_at_their_limits_are_accepted() -> None:
    config = parse_config(forward(ack_timeout=3600, connect_timeout=0.001, duplicate_window=9e9, max_in_flight=65536,
                                  replicas=5, cursor_interval=0, subjects=["edge.>"], backoff_max=86400), "ok.toml")
    relay = config.build()[0]
    assert isinstance(relay, JetStreamForward) and relay.max_in_flight == 65536


numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**20, 10**20))


@given(key=st.sampled_from(["ack_timeout", "connect_timeout", "backoff_max", "duplicate_window", "cursor_interval",
                            "max_in_flight", "replicas"]),
       value=numbers)
def test_fuzzed_relay_numbers_are_either_usable_or_a_config_error_naming_them(key: str, value: Any) -> None:
    kind = JetStreamForward.OPTIONS[key].kind
    try:
        config = parse_config(forward(**{key: value}), "fuzz.toml")
    except ConfigError as exc:
        assert exc.key == key, exc
        return
    assert kind == "number" or isinstance(value, int)
    number = float(config.streamers[0].options[key])
    assert math.isfinite(number) and number >= 0
    assert number > 0 or key == "cursor_interval"
    config.build()  # what loads, builds


@given(value=numbers)
def test_fuzzed_source_batches_are_either_usable_or_a_config_error(value: Any) -> None:
    try:
        config = parse_config(source(batch=value), "fuzz.toml")
    except ConfigError as exc:
        assert exc.key == "batch"
        return
    assert 1 <= config.streamers[0].options["batch"] <= 10_000
    config.build()


def archive(storage: dict[str, Any]) -> dict[str, Any]:
    return {"store": {"streamers": ["archive"]},
            "streamers": {"archive": {"keys": ["*"], "dir": "archives", "storage": storage}}}


@pytest.mark.parametrize(("storage", "message"), [
    ({"driver": "filesystem", "root": "up", "rot": "x"}, "did you mean 'root'?"),
    ({"driver": "filesystem", "root": "up", "bucket": "b"}, "mode, root"),
    ({"driver": "sqlite", "path": "o.db", "paht": "p.db"}, "did you mean 'path'?"),
    ({"driver": "s3", "bucket": "b", "regoin_name": "eu"}, "did you mean 'region_name'?"),
])
def test_an_unknown_storage_key_of_the_archive_service_is_refused_when_loaded(
        storage: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(archive(storage), "archive.toml")
    assert info.value.key == "storage" and "has no option" in str(info.value) and message in str(info.value)


def test_the_known_storage_keys_load() -> None:
    parse_config(archive({"driver": "filesystem", "root": "up", "mode": 0o640}), "archive.toml")
    parse_config(archive({"driver": "s3", "bucket": "b", "region_name": "eu", "endpoint_url": "http://x"}), "a.toml")


@pytest.mark.multiprocess
def test_serve_status_with_an_unusable_option_is_one_error_line_and_no_traceback(tmp_path: Path) -> None:
    import sqlstream

    sqlstream.open(str(tmp_path / "app.db")).close()
    config = tmp_path / "relay.toml"
    config.write_text('[store]\nstreamers = ["relay"]\n[streamers.relay]\nservice = "jetstream"\nkeys = ["*"]\n'
                      'stream = "EDGE"\nconnect_timeout = nan\n')
    for mode in ("--status", "--once"):
        done = subprocess.run([sys.executable, "-m", "sqlstream", "--db", str(tmp_path / "app.db"), "serve",
                               "--config", str(config), mode], capture_output=True, text=True, timeout=60,
                              cwd=ROOT)
        assert done.returncode == 1, done
        assert done.stderr.startswith(f"Error: {config}: [streamers.relay] connect_timeout: must be a positive "
                                      "number of seconds, not nan"), done.stderr
        assert "Traceback" not in done.stderr


def test_config_errors_are_sqlstream_errors() -> None:
    assert issubclass(ConfigError, SqlstreamError)
    with pytest.raises(ConfigError):
        load_config(ROOT / "no-such-config.toml")


@pytest.mark.parametrize(("key", "value"), [("ack_timeout", "5"), ("max_in_flight", 2.5), ("stream", 7),
                                            ("subjects", "edge.>"), ("replicas", True)])
def test_the_python_api_refuses_values_of_the_wrong_type(key: str, value: Any) -> None:
    options = {k: spec.default for k, spec in JetStreamForward.OPTIONS.items()}
    options["stream"] = "EDGE"
    with pytest.raises(InvalidArgument, match=key):
        JetStreamForward("relay", ["*"], {**options, key: value})
