-- sqlstream schema, version 9: the commit sequence number is derived, not counted per append.
--
-- An append no longer writes the `counters` row (one b-tree page fewer per commit). The
-- last txn given out is the larger of `counters.txn`, now a floor written only when
-- records that may carry the highest number are deleted (trim, retention, stream
-- deletion), and the txn of each stream's last record (one primary-key seek per stream:
-- a stream's txn never decreases with its offset). sqlstream's writers use this same
-- view (sqlstream.append.last_txn) when another connection committed since their own
-- last commit; otherwise they continue from their cached number.
CREATE VIEW last_txn AS
SELECT max(
    coalesce((SELECT value FROM counters WHERE name = 'txn'), 0),
    coalesce((SELECT max((SELECT c.txn FROM chunks c WHERE c.stream_id = s.id
                          ORDER BY c.offset DESC LIMIT 1)) FROM streams s), 0)
) AS txn;

-- As in version 8, with `head` read from last_txn.
DROP VIEW streaming_progress;
CREATE VIEW streaming_progress AS
SELECT
    c.service,
    c.kind,
    c.height,
    t.txn                                                             AS head,
    CASE WHEN c.kind = 'jetstream-source' THEN s.pending
         ELSE max(0, t.txn - c.height) END                            AS lag,
    strftime('%Y-%m-%dT%H:%M:%fZ', max(c.updated_at, coalesce(s.updated_at, 0)) / 1e6, 'unixepoch') AS updated,
    c.last_error,
    strftime('%Y-%m-%dT%H:%M:%fZ', c.error_at / 1e6, 'unixepoch')     AS error_time,
    s.js_stream                                                       AS source,
    s.sequence                                                        AS source_sequence,
    s.stored                                                          AS source_stored
FROM streaming_cursors c
JOIN last_txn t
LEFT JOIN jetstream_sources s ON s.service = c.service;

-- An append writes only its chunk rows: a stream's next offset, byte length and last
-- append time are derived from its last record, and the streams columns hold them only as
-- of the last create, trim, seal or renumber (exact for a stream with no records left).
-- streams_now is streams with the three columns as they are now: max(column, from the last
-- record), one primary-key seek per column read. Read them through it (or stream_stats).
-- (Scalar subqueries rather than a LEFT JOIN on the last record: SQLite re-prepares a
-- statement that binds a parameter against such a join on every run, ~20 µs.)
-- The last record's payload bytes: length() of a BLOB column (and typeof()) read the size
-- from the record header without loading the value; length() of TEXT counts characters,
-- so text and JSON are measured as BLOB (their UTF-8 bytes, the database encoding), which
-- loads that one value. Not octet_length(): it needs SQLite 3.43, and these views must
-- read the same with older SQLite builds (Python's sqlite3, the sqlite3 shell, Datasette).
CREATE VIEW streams_now AS
SELECT
    s.id,
    s.name,
    s.created_at,
    s.sealed_at,
    s.write_secret,
    s.first_offset,
    max(s.next_offset, coalesce((SELECT l.offset + 1 FROM chunks l WHERE l.stream_id = s.id
                                  ORDER BY l.offset DESC LIMIT 1), 0))       AS next_offset,
    s.first_position,
    max(s.byte_length, coalesce((SELECT l.position + CASE WHEN typeof(l.data) = 'blob' THEN length(l.data)
                                                         ELSE length(CAST(l.data AS BLOB)) END
                                   FROM chunks l WHERE l.stream_id = s.id
                                  ORDER BY l.offset DESC LIMIT 1), 0))       AS byte_length,
    coalesce((SELECT max(coalesce(s.last_append_at, l.timestamp), l.timestamp) FROM chunks l
               WHERE l.stream_id = s.id ORDER BY l.offset DESC LIMIT 1),
             s.last_append_at)                                               AS last_append_at,
    s.max_count,
    s.max_age,
    s.max_bytes,
    s.metadata,
    s.keep_unacked,
    s.dedup_seconds,
    s.dedup_records,
    s.trim_offset,
    s.trim_bytes,
    s.trim_time
FROM streams s;

-- As in version 4, reading the stream's ends from streams_now.
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
    (SELECT count(*) FROM dedup d WHERE d.stream_id = streams_now.id) AS dedup_ids
FROM streams_now;

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
FROM subscriptions s JOIN streams_now st ON st.id = s.stream_id;
