"""The Kafka listener's safety rules: one loopback rule, connection timeouts that never
hang ``close()``, a partition's record set stored whole or not at all, producer state in
the public core API, and producer ids that expire.

Real listeners on free loopback ports over real files; raw frames where no client can
produce the case (a stalled frame, two batches for one partition).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

try:
    import kio  # noqa: F401  (the kafka extra; kio needs Python 3.11+)
except ImportError:
    if os.environ.get("CI") and sys.version_info >= (3, 11):
        raise  # in CI the test extra must have installed it
    pytest.skip("the Kafka listener needs the kafka extra (kio: Python 3.11+)", allow_module_level=True)

from hypothesis import given, strategies as st  # noqa: E402

from sqlstream import addresses  # noqa: E402
from sqlstream.errors import InvalidArgument  # noqa: E402
from sqlstream.http.server import check_listen  # noqa: E402
from sqlstream.kafka import Settings, check_bind  # noqa: E402


# ---------------------------------------------------------------------- one loopback rule


def _kafka_refuses(host: str) -> bool:
    try:
        check_bind(Settings(host=host))
    except InvalidArgument:
        return True
    return False


def _http_refuses(host: str) -> bool:
    try:
        check_listen(host, None, False)
    except InvalidArgument:
        return True
    return False


_HOSTS = st.sampled_from(["localhost", "LocalHost", "LOCALHOST", "127.0.0.1", "127.3.4.5", "::1", "0.0.0.0", "::",
                          "10.0.0.1", "example.com", "localhost.", "::ffff:127.0.0.1", "0:0:0:0:0:0:0:1"]) | st.text(
    max_size=20)


@given(_HOSTS)
def test_both_fronts_refuse_exactly_the_same_open_addresses(host):
    """Before, the Kafka front had its own rule: ``LOCALHOST`` was loopback for HTTP and
    an open address for Kafka."""
    assert _kafka_refuses(host) == _http_refuses(host) == (not addresses.is_loopback(host))


def test_the_kafka_front_does_not_import_the_http_front():
    code = "import sys, sqlstream.kafka.listener; print(sorted(m for m in sys.modules if m.startswith('sqlstream.http')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
