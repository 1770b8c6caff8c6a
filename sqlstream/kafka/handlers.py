"""The Kafka APIs, mapped onto the file: one coroutine per API key.

Each handler takes the decoded request and returns a dict for
:func:`sqlstream.kafka.protocol.build`, written once for every version the listener
serves (fields a version lacks are dropped). Storage runs on the AsyncDatabase's worker
through :meth:`sqlstream.aio.AsyncDatabase.run_sync`; Fetch long-polls with
:meth:`~sqlstream.aio.AsyncDatabase.wait_for`, woken by commits from any process.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field
from typing import Any

from ..aio import AsyncDatabase
from ..errors import DamagedRecord, PayloadTooLarge, SqlstreamError, StreamSealed
from ..validation import check_seconds
from .groups import Coordinator, GroupError
from .protocol import SUPPORTED, Request
from .records import BatchError, decode_batches, encode_batches
from .store import Fetched, KafkaRefused, KafkaStore, Topic, valid_topic_name

__all__ = ["Handlers", "Settings", "Session"]

log = logging.getLogger("sqlstream.kafka")

NONE = 0
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
INVALID_TOPIC = 17
INVALID_REQUIRED_ACKS = 21
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
UNSUPPORTED_VERSION = 35
INVALID_REQUEST = 42
INVALID_RECORD = 87
SASL_AUTHENTICATION_FAILED = 58
INVALID_REPLICATION_FACTOR = 38
KAFKA_STORAGE_ERROR = 56


@dataclass
class Settings:
    """What a listener is configured with (the ``[kafka]`` table; README "Kafka")."""

    host: str = "127.0.0.1"
    port: int = 9092
    advertised_host: str | None = None
    advertised_port: int | None = None
    auto_create_topics: bool = True
    default_partitions: int = 1
    max_request_bytes: int = 100 * 1024 * 1024
    max_connections: int = 256
    sasl_username: str | None = None
    sasl_password: str | None = None
    insecure: bool = False
    group_initial_delay: float = 0.1
    #: Seconds a connection may wait between requests (Kafka's connections.max.idle.ms,
    #: 9 minutes); a request being handled (a long poll, a JoinGroup) is not idleness.
    idle_timeout: float = 540.0
    #: Seconds from connecting to a completed SASL authentication, when SASL is on.
    auth_timeout: float = 10.0
    #: Seconds for a request frame to arrive whole once its first byte has.
    frame_timeout: float = 60.0
    #: Seconds after its last produce (or its InitProducerId) that an idempotent
    #: producer's state may be forgotten (Kafka's transactional.id.expiration.ms, 7 days).
    producer_expiry: float = 7 * 24 * 3600.0

    #: Seconds between two expiry runs (Kafka's producer.id.expiration.check.interval.ms).
    producer_expiry_check: float = 600.0

    #: The options that are durations in seconds (finite, > 0; checked by :meth:`check`).
    SECONDS = ("idle_timeout", "auth_timeout", "frame_timeout", "producer_expiry", "producer_expiry_check",
               "group_initial_delay")

    def check(self) -> None:
        """Raise ``InvalidArgument`` for a duration that is not finite and > 0."""
        for name in self.SECONDS:
            check_seconds(getattr(self, name), name, positive=name != "group_initial_delay")

    @property
    def sasl(self) -> bool:
        return self.sasl_password is not None


@dataclass
class Session:
    """Per connection: the peer and the SASL state."""

    peer: str
    authenticated: bool = False
    mechanism: str | None = None
    auth_failed: bool = False  # the listener closes the connection after answering
    extra: dict[str, Any] = field(default_factory=dict)


class Handlers:
    """Every API the listener serves, over one file."""

    def __init__(self, adb: AsyncDatabase, settings: Settings, port: int) -> None:
        self.adb = adb
        self.store = KafkaStore(adb.sync)
        self.settings = settings
        self.port = port
        self.groups = Coordinator(initial_delay=settings.group_initial_delay)
        self.max_record_bytes = adb.sync.engine.max_record_bytes

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await self.adb.run_sync(fn, *args)

    async def handle(self, req: Request, session: Session) -> dict[str, Any] | None:
        """The response dict for ``req``; None for Produce with acks=0 (no response)."""
        name = SUPPORTED[req.api_key][0]
        method = getattr(self, "api_" + name)
        result: dict[str, Any] | None = await method(req, session)
        return result

    # ------------------------------------------------------------------ handshake

    async def api_ApiVersions(self, req: Request, session: Session) -> dict[str, Any]:
        return {"error_code": NONE, "api_keys": [
            {"api_key": k, "min_version": lo, "max_version": hi} for k, (_, lo, hi) in sorted(SUPPORTED.items())]}

    async def api_SaslHandshake(self, req: Request, session: Session) -> dict[str, Any]:
        mech = req.body.mechanism
        if mech != "PLAIN":
            return {"error_code": UNSUPPORTED_SASL_MECHANISM, "mechanisms": ["PLAIN"]}
        session.mechanism = mech
        session.extra["sasl_version"] = req.version
        return {"error_code": NONE, "mechanisms": ["PLAIN"]}

    async def api_SaslAuthenticate(self, req: Request, session: Session) -> dict[str, Any]:
        if session.mechanism != "PLAIN":
            return {"error_code": ILLEGAL_SASL_STATE, "error_message": "SaslHandshake (PLAIN) first"}
        ok = self.check_plain(bytes(req.body.auth_bytes))
        if not ok:
            log.warning("kafka: %s failed SASL/PLAIN authentication", session.peer)
            session.auth_failed = True  # as Kafka: no second guess on this connection
            return {"error_code": SASL_AUTHENTICATION_FAILED, "error_message": "authentication failed: "
                    "wrong username or password"}
        session.authenticated = True
        return {"error_code": NONE, "auth_bytes": b"", "session_lifetime": 0}

    def check_plain(self, token: bytes) -> bool:
        """RFC 4616: [authzid] NUL authcid NUL passwd."""
        parts = token.split(b"\0")
        if len(parts) != 3 or self.settings.sasl_password is None:
            return False
        user, password = parts[1], parts[2]
        want_user = (self.settings.sasl_username or "").encode()
        return hmac.compare_digest(password, self.settings.sasl_password.encode()) and (
            not want_user or hmac.compare_digest(user, want_user))

    # ------------------------------------------------------------------ metadata

    def _broker(self) -> dict[str, Any]:
        host = self.settings.advertised_host or (self.settings.host if self.settings.host not in ("0.0.0.0", "::", "")
                                                 else "127.0.0.1")
        return {"node_id": 0, "host": host, "port": self.settings.advertised_port or self.port, "rack": None}

    async def _topic(self, name: str, create: bool) -> Topic | None:
        create = create and self.settings.auto_create_topics
        result: Topic | None = await self._run(lambda: self.store.topic(
            name, create=create, partitions=self.settings.default_partitions))
        return result

    @staticmethod
    def _topic_meta(topic: Topic) -> dict[str, Any]:
        return {"error_code": NONE, "name": topic.name, "topic_id": topic.topic_id, "is_internal": False,
                "partitions": [{"error_code": NONE, "partition_index": p, "leader_id": 0, "leader_epoch": 0,
                                "replica_nodes": (0,), "isr_nodes": (0,), "offline_replicas": ()}
                               for p in range(topic.partitions)],
                "topic_authorized_operations": -2147483648}

    async def api_Metadata(self, req: Request, session: Session) -> dict[str, Any]:
        wanted = req.body.topics
        out = []
        if wanted is None or (req.version == 0 and not wanted):
            out = [self._topic_meta(t) for t in await self._run(self.store.topics)]
        else:
            auto = getattr(req.body, "allow_auto_topic_creation", True)
            for t in wanted:
                topic = await self._topic(t.name, auto) if t.name else None
                if topic is None:
                    code = INVALID_TOPIC if t.name and not valid_topic_name(t.name) else UNKNOWN_TOPIC_OR_PARTITION
                    out.append({"error_code": code, "name": t.name, "partitions": []})
                else:
                    out.append(self._topic_meta(topic))
        return {"brokers": [self._broker()], "cluster_id": "sqlstream", "controller_id": 0, "topics": out,
                "cluster_authorized_operations": -2147483648}

    async def api_FindCoordinator(self, req: Request, session: Session) -> dict[str, Any]:
        b = self._broker()
        key_type = getattr(req.body, "key_type", 0)
        if key_type != 0:
            msg = "transactions are not supported by this listener (no transaction coordinator)"
            code, node = INVALID_REQUEST, -1
        else:
            msg, code, node = None, NONE, 0
        keys = getattr(req.body, "coordinator_keys", None) or [getattr(req.body, "key", "")]
        return {"error_code": code, "error_message": msg, "node_id": node, "host": b["host"] if node == 0 else "",
                "port": b["port"] if node == 0 else -1,
                "coordinators": [{"key": k, "node_id": node, "host": b["host"] if node == 0 else "",
                                  "port": b["port"] if node == 0 else -1, "error_code": code,
                                  "error_message": msg} for k in keys]}

    async def api_DescribeConfigs(self, req: Request, session: Session) -> dict[str, Any]:
        results = []
        for res in req.body.resources:
            configs: dict[str, str] = {}
            code, msg = NONE, None
            if res.resource_type == 2:  # topic
                topic = await self._topic(res.resource_name, False)
                if topic is None:
                    code, msg = UNKNOWN_TOPIC_OR_PARTITION, f"no topic {res.resource_name!r}"
                else:
                    configs = {"cleanup.policy": "delete", "compression.type": "producer",
                               "message.timestamp.type": "CreateTime",
                               "max.message.bytes": str(self.max_record_bytes), "retention.ms": "-1",
                               "min.insync.replicas": "1"}
            elif res.resource_type == 4:  # broker
                configs = {"auto.create.topics.enable": str(self.settings.auto_create_topics).lower(),
                           "num.partitions": str(self.settings.default_partitions),
                           "message.max.bytes": str(self.max_record_bytes), "default.replication.factor": "1",
                           "offsets.topic.replication.factor": "1"}
            else:
                code, msg = INVALID_REQUEST, f"resource type {res.resource_type} has no configs here"
            keys = res.configuration_keys
            results.append({"error_code": code, "error_message": msg, "resource_type": res.resource_type,
                            "resource_name": res.resource_name,
                            "configs": [{"name": k, "value": v, "read_only": True, "config_source": 5,
                                         "is_sensitive": False, "is_default": False, "config_type": 0}
                                        for k, v in configs.items() if keys is None or k in keys]})
        return {"results": results}

    # ------------------------------------------------------------------ admin

    async def api_CreateTopics(self, req: Request, session: Session) -> dict[str, Any]:
        out = []
        for t in req.body.topics:
            parts = t.num_partitions if t.num_partitions > 0 else self.settings.default_partitions
            item = {"name": t.name, "error_code": NONE, "error_message": None, "num_partitions": parts,
                    "replication_factor": 1, "configs": None}
            if t.replication_factor not in (-1, 1):
                item.update(error_code=INVALID_REPLICATION_FACTOR,
                            error_message="this listener is one broker: replication factor 1 (or -1)")
            elif t.assignments:
                item.update(error_code=INVALID_REQUEST, error_message="manual partition assignments are not supported")
            elif not req.body.validate_only:
                try:
                    topic = await self._run(self.store.create_topic, t.name, parts)
                    item["topic_id"] = topic.topic_id
                except KafkaRefused as exc:
                    item.update(error_code=exc.code, error_message=str(exc))
            out.append(item)
        return {"topics": out}

    async def api_DeleteTopics(self, req: Request, session: Session) -> dict[str, Any]:
        names = list(getattr(req.body, "topic_names", None) or [t.name for t in getattr(req.body, "topics", ())])
        out = []
        for name in names:
            item = {"name": name, "error_code": NONE, "error_message": None}
            if name is None:
                item.update(error_code=UNKNOWN_TOPIC_OR_PARTITION, error_message="delete by topic id is not supported")
            else:
                try:
                    await self._run(self.store.delete_topic, name)
                except KafkaRefused as exc:
                    item.update(error_code=exc.code, error_message=str(exc))
                except SqlstreamError as exc:
                    item.update(error_code=INVALID_REQUEST, error_message=str(exc))
            out.append(item)
        return {"responses": out}

    async def api_CreatePartitions(self, req: Request, session: Session) -> dict[str, Any]:
        out = []
        for t in req.body.topics:
            item = {"name": t.name, "error_code": NONE, "error_message": None}
            if t.assignments:
                item.update(error_code=INVALID_REQUEST, error_message="manual partition assignments are not supported")
            elif not req.body.validate_only:
                try:
                    await self._run(self.store.add_partitions, t.name, t.count)
                except KafkaRefused as exc:
                    item.update(error_code=exc.code, error_message=str(exc))
            out.append(item)
        return {"results": out}

    # ------------------------------------------------------------------ produce

    async def api_Produce(self, req: Request, session: Session) -> dict[str, Any] | None:
        body = req.body
        acks = body.acks
        if body.transactional_id is not None:
            return self._produce_all(body, INVALID_REQUEST, "transactions are not supported by this listener")
        if acks not in (0, 1, -1):
            return self._produce_all(body, INVALID_REQUIRED_ACKS, f"acks={acks}: use 0, 1 or -1 (all)")
        responses = []
        for t in body.topic_data:
            topic = await self._topic(t.name, True)
            parts = []
            for p in t.partition_data:
                parts.append(await self._produce_partition(topic, t.name, p.index, p.records, req.version))
            responses.append({"name": t.name, "partition_responses": parts})
        if acks == 0:
            return None
        return {"responses": responses}

    @staticmethod
    def _produce_all(body: Any, code: int, msg: str) -> dict[str, Any]:
        return {"responses": [{"name": t.name, "partition_responses": [
            {"index": p.index, "error_code": code, "base_offset": -1, "error_message": msg}
            for p in t.partition_data]} for t in body.topic_data]}

    async def _produce_partition(self, topic: Topic | None, name: str, partition: int,
                                 records: bytes | None, version: int) -> dict[str, Any]:
        resp: dict[str, Any] = {"index": partition, "error_code": NONE, "base_offset": -1, "log_append_time": None,
                                "log_start_offset": -1}
        if topic is None or not 0 <= partition < topic.partitions:
            resp.update(error_code=UNKNOWN_TOPIC_OR_PARTITION, error_message=f"no partition {partition} of {name!r}")
            return resp
        try:
            batches = decode_batches(records or b"", max_record_bytes=self.max_record_bytes,
                                     max_batch_bytes=self.settings.max_request_bytes)
        except BatchError as exc:
            log.warning("kafka: produce to %s/%d refused: %s", name, partition, exc)
            code = MESSAGE_TOO_LARGE if "limit" in str(exc) else CORRUPT_MESSAGE
            resp.update(error_code=code, error_message=str(exc))
            return resp
        # Kafka's contract (ProduceRequest.validateRecords, every version served here, 3+):
        # a partition's record set is exactly one batch, refused with INVALID_RECORD
        # otherwise before anything is stored. So a partition's records are stored whole
        # or not at all (one transaction, see KafkaStore.produce), and each partition of a
        # request succeeds or fails on its own, as in Kafka.
        if len(batches) != 1:
            resp.update(error_code=INVALID_RECORD, error_message=(
                f"Produce requests with version {version} are only allowed to contain exactly one record batch "
                f"per partition (got {len(batches)})"))
            return resp
        [batch] = batches
        if batch.transactional or batch.control:
            resp.update(error_code=INVALID_RECORD, error_message="transactional batches are not supported")
            return resp
        stream = topic.stream(partition)
        try:
            got = await self._run(self.store.produce, stream, batch)
        except KafkaRefused as exc:
            log.info("kafka: produce to %s refused: %s", stream, exc)
            resp.update(error_code=exc.code, error_message=str(exc))
            return resp
        except PayloadTooLarge as exc:
            resp.update(error_code=MESSAGE_TOO_LARGE, error_message=str(exc))
            return resp
        except StreamSealed as exc:
            resp.update(error_code=INVALID_REQUEST, error_message=str(exc))
            return resp
        except SqlstreamError as exc:
            log.warning("kafka: produce to %s refused: %s", stream, exc)
            resp.update(error_code=KAFKA_STORAGE_ERROR, error_message=str(exc))
            return resp
        resp.update(base_offset=got.base_offset, log_start_offset=got.log_start)
        return resp

    # ------------------------------------------------------------------ fetch

    async def api_Fetch(self, req: Request, session: Session) -> dict[str, Any]:
        body = req.body
        wanted = []
        for t in body.topics:
            topic = await self._topic(t.topic, False)
            for p in t.partitions:
                wanted.append((t.topic, topic, p.partition, p.fetch_offset, p.partition_max_bytes))
        max_bytes = body.max_bytes if body.max_bytes > 0 else 50 * 1024 * 1024
        max_bytes = min(max_bytes, self.settings.max_request_bytes)
        min_bytes = max(0, body.min_bytes)
        wait = body.max_wait.total_seconds()

        def read_all() -> list[tuple[Any, ...]]:
            out: list[tuple[Any, ...]] = []
            budget = max_bytes
            first = True  # no records yet: Kafka's one record over the budget (KIP-74), only here
            for name, topic, partition, offset, pmax in wanted:
                if topic is None or not 0 <= partition < topic.partitions:
                    out.append((name, partition, UNKNOWN_TOPIC_OR_PARTITION, None))
                    continue
                try:
                    got = self.store.read(topic.stream(partition), offset, max(1, min(pmax, budget)),
                                          at_least_one=first)
                except DamagedRecord as exc:  # a record whose value is lost (foreign SQL): this partition only
                    log.warning("fetch of %s-%d at %d: %s", name, partition, offset, exc)
                    out.append((name, partition, KAFKA_STORAGE_ERROR, None))
                    continue
                if got is None:
                    out.append((name, partition, UNKNOWN_TOPIC_OR_PARTITION, None))
                    continue
                first = first and not got.records
                budget = max(0, budget - got.size)
                code = 1 if not got.log_start <= offset <= got.high_watermark else NONE  # OFFSET_OUT_OF_RANGE
                out.append((name, partition, code, got))
            return out

        def enough() -> list[tuple[Any, ...]] | None:
            result = read_all()
            total = sum(r[3].size for r in result if r[3] is not None)
            if total >= max(1, min_bytes) or any(r[2] != NONE for r in result):
                return result
            return None

        result = await self.adb.wait_for(enough, wait) if wait > 0 else None
        if result is None:
            result = await self._run(read_all)
        by_topic: dict[str, list[dict[str, Any]]] = {}
        for name, partition, code, got in result:
            by_topic.setdefault(name, []).append(_fetch_partition(partition, code, got))
        return {"error_code": NONE, "session_id": 0,
                "responses": [{"topic": n, "partitions": ps} for n, ps in by_topic.items()]}

    # ------------------------------------------------------------------ offsets

    async def api_ListOffsets(self, req: Request, session: Session) -> dict[str, Any]:
        out = []
        for t in req.body.topics:
            topic = await self._topic(t.name, False)
            parts = []
            for p in t.partitions:
                parts.append(await self._list_offset(topic, p.partition_index, p.timestamp))
            out.append({"name": t.name, "partitions": parts})
        return {"topics": out}

    async def _list_offset(self, topic: Topic | None, partition: int, ts: int) -> dict[str, Any]:
        item: dict[str, Any] = {"partition_index": partition, "error_code": NONE, "timestamp": -1, "offset": -1,
                                "leader_epoch": 0, "old_style_offsets": ()}
        if topic is None or not 0 <= partition < topic.partitions:
            item["error_code"] = UNKNOWN_TOPIC_OR_PARTITION
            return item
        stream = topic.stream(partition)
        ends = await self._run(self.store.ends, stream)
        if ends is None:
            item["error_code"] = UNKNOWN_TOPIC_OR_PARTITION
        elif ts == -1:       # latest
            item["offset"] = ends[1]
        elif ts == -2:       # earliest
            item["offset"] = ends[0]
        elif ts == -3:       # max timestamp (KIP-734): not tracked per record; the last record
            item["offset"] = max(ends[0], ends[1] - 1) if ends[1] > ends[0] else -1
        elif ts < 0:
            item["error_code"] = UNSUPPORTED_VERSION
        else:
            found = await self._run(self.store.offset_for_time, stream, ts)
            if found is not None:
                item["offset"], item["timestamp"] = found
        return item

    async def api_OffsetCommit(self, req: Request, session: Session) -> dict[str, Any]:
        body = req.body
        generation = getattr(body, "generation_id_or_member_epoch", getattr(body, "generation_id", -1))
        code = NONE
        try:
            self.groups.check_commit(body.group_id, body.member_id, generation)
        except GroupError as exc:
            code = exc.code
        rows = []
        for t in body.topics:
            for p in t.partitions:
                rows.append((t.name, p.partition_index, p.committed_offset,
                             getattr(p, "committed_leader_epoch", None), p.committed_metadata))
        if code == NONE and rows:
            await self._run(self.store.commit_offsets, body.group_id, rows)
        return {"topics": [{"name": t.name, "partitions": [{"partition_index": p.partition_index, "error_code": code}
                                                           for p in t.partitions]} for t in body.topics]}

    async def api_OffsetFetch(self, req: Request, session: Session) -> dict[str, Any]:
        body = req.body
        committed = await self._run(self.store.committed, body.group_id)
        if body.topics is None:
            names: dict[str, list[int]] = {}
            for (topic, partition) in committed:
                names.setdefault(topic, []).append(partition)
        else:
            names = {t.name: list(t.partition_indexes) for t in body.topics}
        out = []
        for name, partitions in names.items():
            parts = []
            for p in partitions:
                offset, epoch, meta = committed.get((name, p), (-1, None, ""))
                parts.append({"partition_index": p, "committed_offset": offset,
                              "committed_leader_epoch": -1 if epoch is None else epoch,
                              "metadata": meta, "error_code": NONE})
            out.append({"name": name, "partitions": parts})
        return {"topics": out, "error_code": NONE}

    # ------------------------------------------------------------------ groups

    async def api_JoinGroup(self, req: Request, session: Session) -> dict[str, Any]:
        b = req.body
        session_ms = int(b.session_timeout.total_seconds() * 1000)
        rebalance = getattr(b, "rebalance_timeout", None)
        rebalance_ms = int(rebalance.total_seconds() * 1000) if rebalance is not None else session_ms
        try:
            got = await self.groups.join(
                b.group_id, b.member_id, getattr(b, "group_instance_id", None), "", session.peer,
                session_ms, rebalance_ms, b.protocol_type, [(p.name, bytes(p.metadata)) for p in b.protocols],
                require_known_member=req.version >= 4)
        except GroupError as exc:
            return {"error_code": exc.code, "generation_id": -1, "protocol_name": None, "protocol_type": None,
                    "leader": "", "member_id": exc.member_id, "members": []}
        return {"error_code": NONE, "generation_id": got.generation, "protocol_type": got.protocol_type,
                "protocol_name": got.protocol, "leader": got.leader, "member_id": got.member_id,
                "members": [{"member_id": m, "group_instance_id": i, "metadata": meta} for m, i, meta in got.members]}

    async def api_SyncGroup(self, req: Request, session: Session) -> dict[str, Any]:
        b = req.body
        try:
            ptype, proto, assignment = await self.groups.sync(
                b.group_id, b.member_id, b.generation_id, [(a.member_id, bytes(a.assignment)) for a in b.assignments])
        except GroupError as exc:
            return {"error_code": exc.code, "assignment": b""}
        return {"error_code": NONE, "protocol_type": ptype, "protocol_name": proto, "assignment": assignment}

    async def api_Heartbeat(self, req: Request, session: Session) -> dict[str, Any]:
        b = req.body
        try:
            self.groups.heartbeat(b.group_id, b.member_id, b.generation_id)
        except GroupError as exc:
            return {"error_code": exc.code}
        return {"error_code": NONE}

    async def api_LeaveGroup(self, req: Request, session: Session) -> dict[str, Any]:
        b = req.body
        members = [m.member_id for m in getattr(b, "members", ())] or [getattr(b, "member_id", "")]
        results = []
        for mid in members:
            try:
                self.groups.leave(b.group_id, mid)
                results.append({"member_id": mid, "error_code": NONE})
            except GroupError as exc:
                results.append({"member_id": mid, "error_code": exc.code})
        top = results[0]["error_code"] if len(results) == 1 and not hasattr(b, "members") else NONE
        return {"error_code": top, "members": results}

    async def api_DescribeGroups(self, req: Request, session: Session) -> dict[str, Any]:
        out = []
        for gid in req.body.groups:
            d = self.groups.describe(gid)
            out.append({"error_code": NONE, "group_id": gid, "group_state": d["state"],
                        "protocol_type": d["protocol_type"], "protocol_data": d["protocol"],
                        "members": [{"member_id": m, "group_instance_id": i, "client_id": c, "client_host": h,
                                     "member_metadata": meta, "member_assignment": a}
                                    for m, i, c, h, meta, a in d["members"]],
                        "authorized_operations": -2147483648})
        return {"groups": out}

    async def api_ListGroups(self, req: Request, session: Session) -> dict[str, Any]:
        return {"error_code": NONE, "groups": [
            {"group_id": gid, "protocol_type": self.groups.describe(gid)["protocol_type"],
             "group_state": self.groups.describe(gid)["state"]} for gid in self.groups.groups]}

    async def api_InitProducerId(self, req: Request, session: Session) -> dict[str, Any]:
        if req.body.transactional_id is not None:
            # No transaction coordinator: refused, as the README says.
            return {"error_code": INVALID_REQUEST, "producer_id": -1, "producer_epoch": -1}
        pid, epoch = await self._run(self.store.init_producer)
        return {"error_code": NONE, "producer_id": pid, "producer_epoch": epoch}


def _fetch_partition(partition: int, code: int, got: Fetched | None) -> dict[str, Any]:
    item: dict[str, Any] = {"partition_index": partition, "error_code": code, "high_watermark": -1,
                            "last_stable_offset": -1, "log_start_offset": -1, "aborted_transactions": None,
                            "preferred_read_replica": -1, "records": b""}
    if got is not None:
        item.update(high_watermark=got.high_watermark, last_stable_offset=got.high_watermark,
                    log_start_offset=got.log_start)
        if got.records and code == NONE:
            item["records"] = encode_batches(got.records)
    return item
