-- sqlstream schema, version 14: producer fencing, writer sequences, stream lifetimes
-- (expiry and forks). The Durable Streams front (sqlstream.http) maps its idempotent
-- producers, Stream-Seq, TTL/Expires-At and forks onto these; the Python API uses them
-- too (Stream.append_fenced, Database.fork_stream, set_expiry, retire_stream). Each row
-- leaves with its stream.

-- Idempotent producers (Kafka style): the last accepted (epoch, seq) per producer and
-- stream, written in the same transaction as the records it covers.
CREATE TABLE producers (
    stream_id   INTEGER NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    producer    TEXT    NOT NULL CHECK (length(producer) > 0),
    epoch       INTEGER NOT NULL CHECK (epoch >= 0),
    seq         INTEGER NOT NULL CHECK (seq >= 0),
    updated_at  INTEGER NOT NULL,                 -- µs since epoch
    PRIMARY KEY (stream_id, producer)
) WITHOUT ROWID;

-- Writer coordination: the last writer sequence token accepted by a stream; a new one
-- must be greater (byte-wise), else the append is refused.
CREATE TABLE writer_seqs (
    stream_id   INTEGER PRIMARY KEY REFERENCES streams (id) ON DELETE CASCADE,
    seq         TEXT    NOT NULL
);

-- Lifetimes: a sliding TTL (seconds idle, renewed by touch) and/or an absolute expiry,
-- the fork a stream was made from, and soft deletion (a deleted stream that forks still
-- name; it is dropped with its last fork). A stream without a row has none of these.
CREATE TABLE stream_lifetimes (
    stream_id    INTEGER PRIMARY KEY REFERENCES streams (id) ON DELETE CASCADE,
    ttl          REAL    CHECK (ttl IS NULL OR ttl >= 0),
    expires_at   INTEGER,                         -- µs since epoch
    touched_at   INTEGER NOT NULL,                -- µs since epoch: the TTL counts from here
    source       TEXT,                            -- the stream this one was forked from
    fork_offset  INTEGER CHECK (fork_offset IS NULL OR fork_offset >= 0),
    deleted_at   INTEGER                          -- µs since epoch: soft-deleted
);
CREATE INDEX stream_lifetimes_by_source ON stream_lifetimes (source) WHERE source IS NOT NULL;
