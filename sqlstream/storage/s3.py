"""The S3 storage driver (optional extra ``s3``: ``pip install 'sqlstream[s3]'``, boto3).

``{"driver": "s3", "bucket": "archives", "prefix": "prod/", "endpoint_url": ...,
"region_name": ..., "aws_access_key_id": ..., "aws_secret_access_key": ...,
"create_bucket": False, "max_attempts": 5, "connect_timeout": ..., "read_timeout": ...}``. Credentials not given are found the usual boto3 way
(environment, profile, instance role). Works with S3-compatible servers
(``endpoint_url``); the tests run it against moto's server on 127.0.0.1.

S3 objects appear atomically, so ``put_object`` is a single PUT for bytes and a managed
(multipart) upload for iterables; a failed multipart upload is aborted. ``cat_objects``
uses server-side ``UploadPartCopy`` when S3 allows it (every part but the last at least
5 MiB), so large archives are concatenated without passing through this process;
otherwise the sources are streamed through and uploaded as one object.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..errors import InvalidArgument, ObjectNotFound, StorageError
from . import CHUNK_SIZE, Chunk, Data, ObjectInfo, StorageDriver, check_path, chunk_spec, iter_data

log = logging.getLogger("sqlstream.storage")

MIN_PART = 5 * 1024 * 1024  # S3's minimum size of every multipart part but the last
MAX_COPY_PART = 5 * 1024 * 1024 * 1024  # S3's maximum size of one copied part

_CLIENT_OPTIONS = ("endpoint_url", "region_name", "aws_access_key_id", "aws_secret_access_key", "aws_session_token")


def _boto3() -> Any:
    try:
        import boto3  # type: ignore[import-untyped]
    except ImportError as exc:
        raise StorageError("the s3 driver needs boto3", hint="pip install 'sqlstream[s3]'") from exc
    return boto3


class _IterReader(io.RawIOBase):
    """A read-only file object over an iterator of bytes (for managed uploads)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._pieces)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buffer))
        b[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


class S3Driver(StorageDriver):
    """Objects in an S3 bucket under an optional key prefix."""

    name = "s3"
    OPTIONS = frozenset({"bucket", "prefix", "max_attempts", "connect_timeout", "read_timeout", "create_bucket",
                         *_CLIENT_OPTIONS})

    def __init__(self, conf: Mapping[str, Any] | None = None, **options: Any) -> None:
        super().__init__(conf, **options)
        boto3 = _boto3()
        from botocore.config import Config  # type: ignore[import-untyped]

        self.bucket = self.conf.get("bucket")
        if not isinstance(self.bucket, str) or not self.bucket:
            raise InvalidArgument("the s3 driver needs 'bucket'")
        prefix = self.conf.get("prefix", "") or ""
        if prefix:
            prefix = check_path(prefix.rstrip("/")) + "/"
        self.prefix = prefix
        kwargs = {k: self.conf[k] for k in _CLIENT_OPTIONS if self.conf.get(k) is not None}
        self._botocore_errors = self._error_classes()
        with self._errors("connect"):
            retries = {"max_attempts": int(self.conf.get("max_attempts", 5)), "mode": "standard"}
            timeouts = {k: float(self.conf[k]) for k in ("connect_timeout", "read_timeout") if k in self.conf}
            self.s3 = boto3.client("s3", config=Config(retries=retries, **timeouts), **kwargs)
            if self.conf.get("create_bucket"):
                try:
                    self.s3.head_bucket(Bucket=self.bucket)
                except self._botocore_errors[0]:
                    self.s3.create_bucket(Bucket=self.bucket)

    @staticmethod
    def _error_classes() -> tuple[type[Exception], type[Exception]]:
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

        return ClientError, BotoCoreError

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        client_error, core_error = self._botocore_errors
        try:
            yield
        except client_error as exc:
            code = exc.response.get("Error", {}).get("Code", "?")  # type: ignore[attr-defined]
            raise StorageError(f"s3 {what} in bucket {self.bucket!r} failed: {code}: {exc}") from exc
        except core_error as exc:
            raise StorageError(f"s3 {what} in bucket {self.bucket!r} failed: {exc}",
                               hint="check endpoint_url, credentials and the network") from exc

    def _is_missing(self, exc: Exception) -> bool:
        if not isinstance(exc, self._botocore_errors[0]):
            return False
        error = exc.response.get("Error", {})  # type: ignore[attr-defined]
        return str(error.get("Code")) in ("404", "NoSuchKey", "NotFound")

    def _key(self, path: str, *, allow_root: bool = False) -> str:
        return self.prefix + check_path(path, allow_root=allow_root)

    def describe(self, path: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{path}"

    def _head(self, path: str) -> dict[str, Any] | None:
        key = self._key(path)
        try:
            return self.s3.head_object(Bucket=self.bucket, Key=key)  # type: ignore[no-any-return]
        except Exception as exc:
            if self._is_missing(exc):
                return None
            with self._errors(f"HEAD {key}"):
                raise

    # ----------------------------------------------------------------- the interface

    def list_objects(self, path: str) -> list[ObjectInfo]:
        rel = check_path(path, allow_root=True)
        prefix = self.prefix + (rel + "/" if rel else "")
        out: dict[str, ObjectInfo] = {}
        with self._errors(f"LIST {prefix}"):
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/"
            )
            for page in pages:
                for cp in page.get("CommonPrefixes", []):
                    name = cp["Prefix"][len(prefix):].rstrip("/")
                    if name:
                        out[name] = ObjectInfo(path=(rel + "/" if rel else "") + name, name=name, ctime=None, isdir=True)
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(prefix):]
                    if name and name not in out:
                        out[name] = ObjectInfo(
                            path=(rel + "/" if rel else "") + name, name=name,
                            ctime=obj["LastModified"].timestamp(), isdir=False,
                        )
        return [out[k] for k in sorted(out)]

    def get_object_size(self, path: str) -> int | None:
        head = self._head(path)
        return None if head is None else int(head["ContentLength"])

    def put_object(self, path: str, data: Data, uuid: str | None = None) -> None:
        key = self._key(path)
        with self._errors(f"PUT {key}"):
            if isinstance(data, (bytes, bytearray, memoryview)):
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=bytes(data))
            else:
                # Managed upload: multipart above its threshold, aborted if `data` raises.
                self.s3.upload_fileobj(_IterReader(iter_data(data)), self.bucket, key)
        log.debug("s3 put_object %s (upload %s)", self.describe(path), uuid)

    def get_object(self, path: str) -> bytes | None:
        size, pieces = self.stream_object(path)
        return None if pieces is None else b"".join(pieces)

    def stream_object(self, path: str) -> tuple[int | None, Iterator[bytes] | None]:
        key = self._key(path)
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if self._is_missing(exc):
                return None, None
            with self._errors(f"GET {key}"):
                raise
        body = response["Body"]

        def pieces() -> Iterator[bytes]:
            with self._errors(f"GET {key}"):
                try:
                    yield from body.iter_chunks(CHUNK_SIZE)
                finally:
                    body.close()

        return int(response["ContentLength"]), pieces()

    def delete_object(self, path: str) -> None:
        key = self._key(path)
        with self._errors(f"DELETE {key}"):
            self.s3.delete_object(Bucket=self.bucket, Key=key)

    def move_object(self, src_path: str, dst_path: str, uuid: str | None = None) -> None:
        src, dst = self._key(src_path), self._key(dst_path)
        if self._head(src_path) is None:
            raise ObjectNotFound(f"no object {self.describe(src_path)} to move")
        if src == dst:
            return
        with self._errors(f"COPY {src} -> {dst}"):
            self.s3.copy({"Bucket": self.bucket, "Key": src}, self.bucket, dst)  # multipart past 5 GiB
            self.s3.delete_object(Bucket=self.bucket, Key=src)
        log.debug("s3 move_object %s -> %s (upload %s)", src_path, self.describe(dst_path), uuid)

    def cat_objects(self, path: str, chunks: Sequence[Chunk], uuid: str | None = None) -> None:
        target = self._key(path)
        sources = []
        for src, want_size, md5 in (chunk_spec(c) for c in chunks):
            head = self._head(src)
            if head is None:
                raise ObjectNotFound(f"cat_objects: no object {self.describe(src)}")
            size = int(head["ContentLength"])
            if want_size is not None and size != want_size:
                raise StorageError(f"cat_objects: {src!r} has {size} bytes, not the expected {want_size}")
            if md5 is not None and self._md5(src, head) != md5:
                raise StorageError(f"cat_objects: {src!r} does not match its md5 {md5}")
            sources.append((src, size))
        parts = [(src, size) for src, size in sources if size]
        if len(parts) == 1 and len(sources) == len({s for s, _ in sources}):
            self.move_object(parts[0][0], path, uuid)
        elif parts and all(size >= MIN_PART for _, size in parts[:-1]):
            self._copy_parts(target, parts)
        else:
            def concatenated() -> Iterator[bytes]:
                for src, _ in parts:
                    _, pieces = self.stream_object(src)
                    if pieces is None:
                        raise ObjectNotFound(f"cat_objects: {self.describe(src)} vanished while being read")
                    yield from pieces

            self.put_object(path, concatenated(), uuid)
        for src, _ in sources:
            if self._key(src) != target:
                self.delete_object(src)
        log.debug("s3 cat_objects %s from %d chunks (upload %s)", self.describe(path), len(sources), uuid)

    def _md5(self, src: str, head: Mapping[str, Any]) -> str:
        etag = str(head.get("ETag", "")).strip('"')
        if len(etag) == 32 and "-" not in etag:
            return etag.lower()  # a single-part upload's ETag is its MD5
        digest = hashlib.md5(usedforsecurity=False)
        _, pieces = self.stream_object(src)
        for piece in pieces or ():
            digest.update(piece)
        return digest.hexdigest()

    def _copy_parts(self, target: str, parts: list[tuple[str, int]]) -> None:
        """Concatenate server-side with UploadPartCopy (no bytes pass through here)."""
        with self._errors(f"multipart copy to {target}"):
            upload = self.s3.create_multipart_upload(Bucket=self.bucket, Key=target)["UploadId"]
            try:
                done = []
                number = 1
                for src, size in parts:
                    for start in range(0, size, MAX_COPY_PART):
                        end = min(size, start + MAX_COPY_PART) - 1
                        got = self.s3.upload_part_copy(
                            Bucket=self.bucket, Key=target, UploadId=upload, PartNumber=number,
                            CopySource={"Bucket": self.bucket, "Key": self._key(src)},
                            CopySourceRange=f"bytes={start}-{end}",
                        )
                        done.append({"PartNumber": number, "ETag": got["CopyPartResult"]["ETag"]})
                        number += 1
                self.s3.complete_multipart_upload(
                    Bucket=self.bucket, Key=target, UploadId=upload, MultipartUpload={"Parts": done}
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    self.s3.abort_multipart_upload(Bucket=self.bucket, Key=target, UploadId=upload)
                raise

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.s3.close()
