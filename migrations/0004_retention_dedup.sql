-- sqlstream schema, version 4: retention, idempotent appends (dedup), and the views for
-- people reworked (stream_stats gains the retention settings, subscription_stats the age
-- of the oldest pending record). docs/sql.md documents the views; docs/architecture.md
-- the retention and dedup design.

-- Retention settings beside max_count/max_age/max_bytes (0001).
-- keep_unacked: retention never trims a record some subscription of the stream has not
-- acked (pending, or not delivered yet).
ALTER TABLE streams ADD COLUMN keep_unacked INTEGER NOT NULL DEFAULT 0 CHECK (keep_unacked = 0 OR keep_unacked = 1);

-- The dedup window: a dedup_id is remembered for dedup_seconds and for the next
-- dedup_records records of the stream, whichever ends first.
ALTER TABLE streams ADD COLUMN dedup_seconds REAL NOT NULL DEFAULT 86400.0 CHECK (dedup_seconds > 0);
ALTER TABLE streams ADD COLUMN dedup_records INTEGER NOT NULL DEFAULT 100000 CHECK (dedup_records > 0);

-- Retention triggers. The append statement returns whether one fired (next_offset past
-- trim_offset, byte_length past trim_bytes, or the new record's timestamp at or past
-- trim_time), so an append to a stream within its limits costs no statement for
-- retention, and a stream without limits (all three NULL) costs nothing at all.
-- Retention recomputes them whenever it runs: they sit a margin past the limits, so
-- trims come in batches. They are hints; db.maintain() enforces the limits exactly.
ALTER TABLE streams ADD COLUMN trim_offset INTEGER;
ALTER TABLE streams ADD COLUMN trim_bytes INTEGER;
ALTER TABLE streams ADD COLUMN trim_time INTEGER;                -- µs since epoch
-- Streams created with limits before this version: retention runs at their next append.
UPDATE streams SET trim_offset = first_offset + max_count WHERE max_count IS NOT NULL;
UPDATE streams SET trim_bytes = first_position + max_bytes WHERE max_bytes IS NOT NULL;
UPDATE streams SET trim_time = 0 WHERE max_age IS NOT NULL;

-- Idempotent appends: one row per remembered dedup_id. Rows outlive the records they
-- name (a retried append of a trimmed record is still recognised); they leave when
-- they fall out of the window (pruned as appends happen and by db.maintain()) or with
-- the stream.
CREATE TABLE dedup (
    stream_id   INTEGER NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    dedup_id    TEXT    NOT NULL,
    offset      INTEGER NOT NULL,                 -- offset of the record first appended with it
    created_at  INTEGER NOT NULL,                 -- µs since epoch
    PRIMARY KEY (stream_id, dedup_id)
) WITHOUT ROWID;
-- Pruning walks a stream's entries oldest first (offsets and times grow together).
CREATE INDEX dedup_by_offset ON dedup (stream_id, offset, created_at);

DROP VIEW stream_stats;
CREATE VIEW stream_stats AS
SELECT
    name,
    first_offset,
    next_offset,
    next_offset - first_offset                                     AS records,
    byte_length - first_position                                   AS bytes,
    byte_length                                                    AS total_bytes,
    sealed_at IS NOT NULL                                          AS sealed,
    write_secret IS NOT NULL                                       AS secret,
    strftime('%Y-%m-%dT%H:%M:%fZ', created_at / 1e6, 'unixepoch')     AS created,
    strftime('%Y-%m-%dT%H:%M:%fZ', last_append_at / 1e6, 'unixepoch') AS last_append,
    strftime('%Y-%m-%dT%H:%M:%fZ', sealed_at / 1e6, 'unixepoch')      AS sealed_time,
    max_count,
    max_age,
    max_bytes,
    keep_unacked,
    (SELECT count(*) FROM dedup d WHERE d.stream_id = streams.id)   AS dedup_ids
FROM streams;

-- As in 0002, plus oldest_pending_age: seconds since the oldest pending record (the
-- lowest pending offset; timestamps never decrease along a stream) was appended.
DROP VIEW subscription_stats;
CREATE VIEW subscription_stats AS
SELECT
    s.name,
    st.name                                                          AS stream,
    s.start_offset,
    s.next_offset                                                    AS delivered_up_to,
    max(0, st.next_offset - max(s.next_offset, st.first_offset))     AS lag,
    (SELECT count(*) FROM deliveries d WHERE d.subscription_id = s.id) AS pending,
    (SELECT count(*) FROM deliveries d WHERE d.subscription_id = s.id
        AND d.deadline <= (julianday('now') - 2440587.5) * 86400000000.0) AS expired,
    (SELECT round((julianday('now') - 2440587.5) * 86400.0 - c.timestamp / 1e6, 3)
       FROM chunks c
      WHERE c.stream_id = s.stream_id
        AND c.offset = (SELECT min(d.offset) FROM deliveries d WHERE d.subscription_id = s.id)) AS oldest_pending_age,
    coalesce((SELECT min(d.offset) FROM deliveries d WHERE d.subscription_id = s.id),
             s.next_offset)                                          AS acked_frontier,
    s.acked,
    s.dead_lettered,
    (SELECT count(DISTINCT d.consumer) FROM deliveries d WHERE d.subscription_id = s.id) AS consumers,
    s.ack_timeout,
    s.max_unacked,
    s.max_deliveries,
    s.dead_letter,
    strftime('%Y-%m-%dT%H:%M:%fZ', s.created_at / 1e6, 'unixepoch')  AS created
FROM subscriptions s JOIN streams st ON st.id = s.stream_id;
