-- sqlstream schema: the Kafka-protocol listener's state (sqlstream.kafka).
-- A topic partition is a stream; these tables keep what Kafka knows and a stream does not.

-- Topics: a topic with one partition is the stream named like the topic; partitions
-- added later, or a topic created with several, are the streams `topic/1`, `topic/2`, ...
-- (partition 0 stays `first_stream`: the topic's name, or `topic/0` when the topic was
-- created with several partitions).
CREATE TABLE kafka_topics (
    name          TEXT    PRIMARY KEY,
    partitions    INTEGER NOT NULL CHECK (partitions >= 1),
    first_stream  TEXT    NOT NULL,
    topic_id      BLOB    NOT NULL CHECK (length(topic_id) = 16),
    created_at    INTEGER NOT NULL                 -- µs since epoch
) WITHOUT ROWID;

-- One row per record batch a Kafka producer wrote: the producer's timestamps (ms, kept
-- exactly, in any order) and the facts a chunk row cannot hold (binary keys, headers
-- that are not unique UTF-8 text, null values). `running_max` is the largest timestamp
-- of this and every earlier batch of the stream: never decreasing, so ListOffsets by
-- timestamp is one index seek.
CREATE TABLE kafka_batches (
    stream_id       INTEGER NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    base_offset     INTEGER NOT NULL,
    last_offset     INTEGER NOT NULL,
    base_timestamp  INTEGER NOT NULL,              -- ms since epoch (Kafka's CreateTime)
    max_timestamp   INTEGER NOT NULL,
    running_max     INTEGER NOT NULL,
    timestamps      TEXT,      -- JSON array: each record's timestamp - base_timestamp; NULL: all 0
    extras          TEXT,      -- JSON object: record index -> {"key": hex, "headers": [[name, hex|null]], "value": null}
    PRIMARY KEY (stream_id, base_offset),
    CHECK (last_offset >= base_offset)
) WITHOUT ROWID;
CREATE INDEX kafka_batches_by_time ON kafka_batches (stream_id, running_max);

-- Idempotent producers: ids handed out by InitProducerId, and per partition the last
-- batches' sequence numbers, written in the transaction that stores the batch, so a
-- retried batch is recognised even after the listener restarts.
CREATE TABLE kafka_producers (
    producer_id  INTEGER PRIMARY KEY,
    epoch        INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE TABLE kafka_producer_state (
    producer_id  INTEGER NOT NULL,
    stream_id    INTEGER NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    epoch        INTEGER NOT NULL,
    batches      TEXT    NOT NULL,   -- JSON [[first_sequence, last_sequence, base_offset], ...], newest last
    PRIMARY KEY (producer_id, stream_id)
) WITHOUT ROWID;

-- Committed consumer-group offsets (OffsetCommit), per group, topic and partition.
CREATE TABLE kafka_group_offsets (
    group_id      TEXT    NOT NULL,
    topic         TEXT    NOT NULL,
    partition     INTEGER NOT NULL,
    offset        INTEGER NOT NULL,
    leader_epoch  INTEGER,
    metadata      TEXT,
    committed_at  INTEGER NOT NULL,              -- µs since epoch
    PRIMARY KEY (group_id, topic, partition)
) WITHOUT ROWID;

-- For people: each group's position per partition, its stream and lag.
CREATE VIEW kafka_consumer_offsets AS
SELECT
    g.group_id,
    g.topic,
    g.partition,
    CASE WHEN g.partition = 0 THEN t.first_stream ELSE g.topic || '/' || g.partition END AS stream,
    g.offset,
    max(0, s.next_offset - g.offset)                                   AS lag,
    g.metadata,
    strftime('%Y-%m-%dT%H:%M:%fZ', g.committed_at / 1e6, 'unixepoch')  AS committed
FROM kafka_group_offsets g
LEFT JOIN kafka_topics t ON t.name = g.topic
LEFT JOIN streams_now s ON s.name = CASE WHEN g.partition = 0 THEN coalesce(t.first_stream, g.topic)
                                         ELSE g.topic || '/' || g.partition END;
