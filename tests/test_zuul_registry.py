"""zuul-registry's real storage layer (``zuul_registry.storage.Storage`` from the PyPI
package, 1.3.0) running on sqlstream's storage drivers.

The drivers follow zuul-registry's ``StorageDriver`` interface; this test is the proof
with the client users actually run: the upload flow (start, three chunks streamed from a
thread, store with the digest check, which moves and concatenates the chunks with the
upload id as a third argument), blob reads, manifests, tags and prune's mark and sweep.

The package's server dependencies (cherrypy, openstacksdk, boto3...) are not needed by
its storage layer, so it is installed with ``pip install --no-deps --target`` into a
temporary directory together with ``sha256`` (the one module ``storage`` imports, through
``hasher``), unless both already import. The test skips, saying why, only when pip cannot
install them (no index reachable, no compiler for ``sha256``).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_once import once_per_run

from sqlstream.storage import StorageDriver, get_driver

ZUUL_VERSION = "1.3.0"
NS = "registry"


@pytest.fixture(scope="module")
def zuul_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The ``zuul_registry.storage`` module, installed without its server dependencies."""
    try:
        yield importlib.import_module("zuul_registry.storage")
        return
    except ImportError:
        pass
    failed: list[str] = []

    def install(target: Path) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--target", str(target), f"zuul-registry=={ZUUL_VERSION}", "sha256"],
            capture_output=True, text=True, timeout=300,
        )
        if proc.returncode != 0:
            failed.append(" ".join(proc.stderr.strip().splitlines()[-2:]))

    # Fetched once per run (helpers_once), whichever worker asks first.
    target = once_per_run(tmp_path_factory, "zuul-registry", install)
    if failed or not (target / "zuul_registry").is_dir():
        tail = failed[0] if failed else "an earlier attempt in this run failed"
        pytest.skip(f"cannot install zuul-registry=={ZUUL_VERSION} and sha256 with pip --no-deps: {tail}")
    sys.path.insert(0, str(target))
    try:
        yield importlib.import_module("zuul_registry.storage")
    finally:
        sys.path.remove(str(target))
        for name in [m for m in sys.modules if m == "sha256" or m.split(".")[0] == "zuul_registry"]:
            del sys.modules[name]


@pytest.fixture(params=["filesystem", "sqlite"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageDriver]:
    config = ({"driver": "filesystem", "root": str(tmp_path / "objects")} if request.param == "filesystem"
              else {"driver": "sqlite", "path": str(tmp_path / "objects.db")})
    drv = get_driver(config)
    try:
        yield drv
    finally:
        drv.close()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _objects(driver: StorageDriver, path: str) -> list[str]:
    """Every object (not directory) under ``path``, recursively."""
    out: list[str] = []
    for info in driver.list_objects(path):
        out.extend(_objects(driver, info.path) if info.isdir else [info.path])
    return sorted(out)


def _upload(storage: Any, chunks: list[bytes]) -> str:
    """zuul's chunked blob upload, as its HTTP handlers drive it; returns the digest."""
    uuid = storage.start_upload(NS)
    done = 0
    for chunk in chunks:
        start, end = storage.upload_chunk(NS, uuid, io.BytesIO(chunk))
        assert (start, end) == (done, done + len(chunk))
        done = end
    digest = _digest(b"".join(chunks))
    storage.store_upload(NS, uuid, digest)
    return digest


def test_zuul_registry_upload_flow_runs_on_every_driver(zuul_storage: Any, driver: StorageDriver) -> None:
    storage = zuul_storage.Storage(driver, {})
    # Three chunks, one larger than zuul's 4 KiB read size, and bytes that are not UTF-8.
    chunks = [b"\x00\xff" * 5000, b"layer-part-2", bytes(range(256)) * 3]
    blob = b"".join(chunks)
    digest = _upload(storage, chunks)
    assert storage.blob_size(NS, digest) == len(blob)
    assert storage.get_blob(NS, digest) == blob
    size, pieces = storage.stream_blob(NS, digest)
    assert size == len(blob) and b"".join(pieces) == blob
    # The upload's chunks and metadata are gone once the blob is stored (the filesystem
    # driver may keep empty directories, as zuul's own does).
    assert _objects(driver, f"{NS}/uploads") == []
    assert _objects(driver, f"{NS}/blobs/{digest}") == [f"{NS}/blobs/{digest}/data"]

    # A wrong digest is refused by zuul, and the upload stays in place.
    uuid = storage.start_upload(NS)
    storage.upload_chunk(NS, uuid, io.BytesIO(b"abc"))
    with pytest.raises(Exception, match="Digest does not match"):
        storage.store_upload(NS, uuid, _digest(b"other"))
    assert storage.blob_size(NS, _digest(b"abc")) is None


def test_zuul_registry_manifests_tags_and_prune_on_every_driver(zuul_storage: Any, driver: StorageDriver) -> None:
    storage = zuul_storage.Storage(driver, {"expiration": 3600})
    layer = _upload(storage, [b"a" * 10, b"b" * 10, b"c" * 10])
    config = b'{"architecture": "amd64"}'
    storage.put_blob(NS, _digest(config), config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "config": {"digest": _digest(config)},
        "layers": [{"digest": layer}],
    }).encode()
    storage.put_blob(NS, _digest(manifest), manifest)
    index = json.dumps({"application/vnd.docker.distribution.manifest.v2+json": _digest(manifest)}).encode()
    storage.put_manifest(NS, "app", "latest", index)
    storage.put_manifest(NS, "app", "v1", index)
    assert storage.get_manifest(NS, "app", "latest") == index
    assert sorted(o.name for o in storage.list_tags(NS, "app")) == ["latest", "v1"]

    orphan = b"no manifest points here"
    storage.put_blob(NS, _digest(orphan), orphan)
    abandoned = storage.start_upload(NS)
    storage.upload_chunk(NS, abandoned, io.BytesIO(b"never finished"))

    storage.prune(dry_run=False)  # everything is younger than an hour: nothing goes
    assert storage.get_blob(NS, _digest(orphan)) == orphan

    # Uploads and unreferenced blobs expire now; manifests (an hour) stay, and so do
    # the blobs they reference: zuul's mark and sweep over our listings.
    storage.upload_exp = -60
    storage.prune(dry_run=True)
    assert storage.get_blob(NS, _digest(orphan)) == orphan
    storage.prune(dry_run=False)
    assert storage.get_blob(NS, _digest(orphan)) is None
    assert _objects(driver, f"{NS}/uploads") == []
    for kept in (layer, _digest(config), _digest(manifest)):
        assert storage.get_blob(NS, kept) is not None, kept
    assert storage.get_blob(NS, layer) == b"a" * 10 + b"b" * 10 + b"c" * 10
    assert sorted(o.name for o in storage.list_tags(NS, "app")) == ["latest", "v1"]
