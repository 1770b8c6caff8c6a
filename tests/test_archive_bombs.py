"""Decompression bombs: a small file that declares or inflates to a huge record.

Every archive read is bounded by ``max_record_bytes`` before the bytes are read or
inflated, so memory stays near the limit whatever the file claims, and zstd reading is
linear in the bytes read. The bombs are built here from a few KiB of compressed data.
"""

from __future__ import annotations

import gzip
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

import sqlstream
from sqlstream.archive import FLAG_ZLIB, MAGIC, ArchiveReader, import_archives, pack
from sqlstream.errors import ArchiveError, PayloadTooLarge, RecordTooLarge

MiB = 1024 * 1024
BOMB = 64 * MiB  # what the bombs inflate to; the reader's default limit is 16 MiB
META = {"stream": "s", "offset": "0", "position": "0", "timestamp": "1.0", "content_type": "bytes"}


def _meta_block(meta: dict[str, str]) -> bytes:
    strings = [x.encode() for kv in meta.items() for x in kv]
    return struct.pack(f"<i{len(strings)}i", len(meta) * 4, *map(len, strings)) + b"".join(strings)


def _zeros(total: int, sink: Callable[[bytes], object]) -> None:
    chunk = bytes(MiB)
    for _ in range(total // MiB):
        sink(chunk)


def big_record_stream(payload_size: int, sink: Callable[[bytes], object]) -> None:
    """Feed a version-1 record holding ``payload_size`` zero bytes to ``sink``, in pieces."""
    meta = _meta_block(META)
    sink(struct.pack("<ihiii", MAGIC, 1, len(meta), payload_size + 4, 0) + meta + struct.pack("<i", payload_size))
    _zeros(payload_size, sink)


def gzip_bomb(path: Path, payload_size: int = BOMB) -> Path:
    with gzip.open(path, "wb", compresslevel=1) as f:
        big_record_stream(payload_size, f.write)
    return path


def zstd_archive(path: Path, payload_size: int = BOMB) -> Path:
    zstandard = pytest.importorskip("zstandard")
    with open(path, "wb") as raw, zstandard.ZstdCompressor(level=1).stream_writer(raw) as f:
        big_record_stream(payload_size, f.write)
    return path


def read_all(path: Path, **kwargs: object) -> list[tuple[dict[str, str], bytes]]:
    with ArchiveReader(path, **kwargs) as reader:  # type: ignore[arg-type]
        return list(reader)


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak Python memory while ``fn`` runs (bytes objects included)."""
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def expect_refused(path: Path) -> None:
    with pytest.raises(RecordTooLarge) as info:
        read_all(path)
    assert isinstance(info.value, ArchiveError) and isinstance(info.value, PayloadTooLarge)


def test_a_gzip_bomb_is_refused_with_memory_bounded_by_the_limit(tmp_path: Path) -> None:
    path = gzip_bomb(tmp_path / "bomb.events.gz")
    assert path.stat().st_size < 1 * MiB  # small on disk, 64 MiB inside
    assert peak_bytes(lambda: expect_refused(path)) < 24 * MiB


def test_a_zlib_flagged_record_bomb_is_refused_with_memory_bounded_by_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "bomb.events"
    path.write_bytes(pack(META, bytes(BOMB), compress=True))
    assert path.stat().st_size < 1 * MiB
    # zlib inflates into blocks it joins at the end: about twice the limit at the peak.
    assert peak_bytes(lambda: expect_refused(path)) < 40 * MiB
    # Within the limit the record reads back whole.
    (got,) = read_all(path, max_record_bytes=BOMB)
    assert got[1] == bytes(BOMB)


def test_a_zlib_flagged_record_over_the_limit_is_refused_even_when_the_declared_length_is_small(
    tmp_path: Path,
) -> None:
    """The declared (compressed) length passes the check; inflation is what is bounded."""
    path = tmp_path / "b.events"
    path.write_bytes(pack(META, bytes(2 * MiB), compress=True))
    with pytest.raises(RecordTooLarge):
        read_all(path, max_record_bytes=MiB)
    assert read_all(path, max_record_bytes=2 * MiB)[0][1] == bytes(2 * MiB)


def test_a_zstd_bomb_is_refused_with_memory_bounded_by_the_limit(tmp_path: Path) -> None:
    path = zstd_archive(tmp_path / "bomb.events.zst")
    assert path.stat().st_size < 64 * 1024
    started = time.monotonic()
    assert peak_bytes(lambda: expect_refused(path)) < 40 * MiB  # 1 MiB pieces skipped, 16 MiB per feed at most
    assert time.monotonic() - started < 60


@pytest.mark.slow
def test_reading_a_large_zstd_record_is_linear_not_quadratic(tmp_path: Path) -> None:
    """32 MiB read back in seconds (it was quadratic: 50 MiB took 1.6 s, 200 MiB 33 s)."""
    size = 32 * MiB
    path = zstd_archive(tmp_path / "big.events.zst", size)
    started = time.monotonic()
    (got,) = read_all(path, max_record_bytes=size)
    assert len(got[1]) == size and got[1].count(0) == size
    assert time.monotonic() - started < 60  # generous: a few tenths of a second on a quiet machine


def test_import_of_a_bomb_raises_and_stores_nothing(tmp_path: Path) -> None:
    gzip_bomb(tmp_path / "s-1.events.gz")
    with sqlstream.open(tmp_path / "r.db") as db:
        with pytest.raises(PayloadTooLarge):
            import_archives(db, "s-*.events*", tmp_path)
        assert all(i.next_offset == 0 for i in db.streams())
    # The database's own limit is the reader's: a larger one lets a trusted archive in.
    with sqlstream.open(tmp_path / "big.db", max_record_bytes=BOMB) as db:
        assert import_archives(db, "s-*.events*", tmp_path).imported == 1


def test_a_damaged_zlib_payload_is_corrupt_not_a_raw_error(tmp_path: Path) -> None:
    data = bytearray(zlib.compress(b"hello" * 1000))
    data[10] ^= 0xFF
    meta = _meta_block(META)
    raw = struct.pack("<i", len(data)) + bytes(data)
    head = struct.pack("<ih", MAGIC, 2) + struct.pack("<Iii", FLAG_ZLIB, len(meta), len(raw))
    record = head + struct.pack("<I", zlib.crc32(head)) + meta + raw + struct.pack("<I", zlib.crc32(raw, zlib.crc32(meta)))
    path = tmp_path / "d.events"
    path.write_bytes(record)
    with pytest.raises(ArchiveError):
        read_all(path)


def test_cli_archive_cat_refuses_a_bomb_with_a_usable_hint_and_takes_a_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sqlstream.cli import main

    path = tmp_path / "b.events"
    path.write_bytes(pack(META, bytes(2 * MiB), compress=True))
    assert main(["archive", "cat", str(path), "--max-record-bytes", str(MiB)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "--max-record-bytes" in err and "Traceback" not in err
    assert main(["archive", "cat", str(path), "--max-record-bytes", str(2 * MiB)]) == 0
    assert capsys.readouterr().out.count("\n") == 1
