-- sqlstream schema, version 10: write secrets are stored as their SHA-256 only, and the
-- views count records waiting behind their key (ordering 'key') in lag, not in pending.
--
-- Until version 9 streams.write_secret held the secret itself, so anyone who could read
-- the file (a Datasette page, `sqlstream sql`, the sqlite3 shell) could write the stream.
-- Now the column is write_secret_sha256: the lowercase hex SHA-256 of the secret's UTF-8
-- bytes (NULL: anyone may append). Secrets are random (144 bits), so a plain hash keeps
-- db.writer(secret) a unique-index lookup and cannot be turned back into the secret.
-- The rename keeps the column's UNIQUE index. sqlstream_sha256() exists only on the
-- connection sqlstream migrates with (sqlstream.connection.migrate), which also runs this
-- file with PRAGMA secure_delete on, so the old values' bytes are overwritten with zeros
-- where SQLite frees them; and the row 'secret_scrub' asks sqlstream to VACUUM the file
-- once after this migration, which rewrites every page (copies of the secrets that
-- earlier updates left in free space included). No view shows the hash.

DROP VIEW subscription_stats;
DROP VIEW stream_stats;
DROP VIEW streams_now;
DROP VIEW pending_deliveries;

ALTER TABLE streams RENAME COLUMN write_secret TO write_secret_sha256;
UPDATE streams SET write_secret_sha256 = sqlstream_sha256(write_secret_sha256)
 WHERE write_secret_sha256 IS NOT NULL;
INSERT INTO counters (name, value)
SELECT 'secret_scrub', 1 WHERE EXISTS (SELECT 1 FROM streams WHERE write_secret_sha256 IS NOT NULL);

-- As in version 9, with `secret` (1: writable only with its write secret) in place of
-- the write_secret column.
CREATE VIEW streams_now AS
SELECT
    s.id,
    s.name,
    s.created_at,
    s.sealed_at,
    s.write_secret_sha256 IS NOT NULL                                        AS secret,
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

CREATE VIEW stream_stats AS
SELECT
    name,
    first_offset,
    next_offset,
    next_offset - first_offset                                     AS records,
    byte_length - first_position                                   AS bytes,
    byte_length                                                    AS total_bytes,
    sealed_at IS NOT NULL                                          AS sealed,
    secret,
    strftime('%Y-%m-%dT%H:%M:%fZ', created_at / 1e6, 'unixepoch')     AS created,
    strftime('%Y-%m-%dT%H:%M:%fZ', last_append_at / 1e6, 'unixepoch') AS last_append,
    strftime('%Y-%m-%dT%H:%M:%fZ', sealed_at / 1e6, 'unixepoch')      AS sealed_time,
    max_count,
    max_age,
    max_bytes,
    keep_unacked,
    (SELECT count(*) FROM dedup d WHERE d.stream_id = streams_now.id) AS dedup_ids
FROM streams_now;

-- As in version 9, except for records waiting behind their key (deliveries.waiting = 1,
-- never delivered): `lag` (records not delivered yet) now counts them, `pending`
-- (delivered, not acked), `consumers` and `oldest_pending_age` no longer do, and
-- `waiting` shows how many there are (as SubscriptionInfo does).
CREATE VIEW subscription_stats AS
SELECT
    s.name,
    st.name                                                          AS stream,
    s.start_offset,
    s.next_offset                                                    AS delivered_up_to,
    max(0, st.next_offset - max(s.next_offset, st.first_offset))
      + (SELECT count(*) FROM deliveries d WHERE d.subscription_id = s.id AND d.waiting = 1) AS lag,
    (SELECT count(*) FROM deliveries d WHERE d.subscription_id = s.id AND d.waiting = 0) AS pending,
    (SELECT count(*) FROM deliveries d WHERE d.subscription_id = s.id
        AND d.deadline <= (julianday('now') - 2440587.5) * 86400000000.0) AS expired,
    (SELECT round((julianday('now') - 2440587.5) * 86400.0 - c.timestamp / 1e6, 3)
       FROM chunks c
      WHERE c.stream_id = s.stream_id
        AND c.offset = (SELECT min(d.offset) FROM deliveries d
                         WHERE d.subscription_id = s.id AND d.waiting = 0)) AS oldest_pending_age,
    coalesce((SELECT min(d.offset) FROM deliveries d WHERE d.subscription_id = s.id),
             s.next_offset)                                          AS acked_frontier,
    s.acked,
    s.dead_lettered,
    (SELECT count(DISTINCT d.consumer) FROM deliveries d
      WHERE d.subscription_id = s.id AND d.waiting = 0)             AS consumers,
    (SELECT count(*) FROM deliveries d WHERE d.subscription_id = s.id AND d.waiting = 1) AS waiting,
    s.ack_timeout,
    s.max_unacked,
    s.max_deliveries,
    s.dead_letter,
    strftime('%Y-%m-%dT%H:%M:%fZ', s.created_at / 1e6, 'unixepoch')  AS created
FROM subscriptions s JOIN streams_now st ON st.id = s.stream_id;

-- As in version 2, without the records waiting behind their key: they were never delivered.
CREATE VIEW pending_deliveries AS
SELECT
    s.name                                                           AS subscription,
    st.name                                                          AS stream,
    d.offset,
    d.consumer,
    d.attempts,
    strftime('%Y-%m-%dT%H:%M:%fZ', d.delivered_at / 1e6, 'unixepoch') AS delivered,
    strftime('%Y-%m-%dT%H:%M:%fZ', d.deadline / 1e6, 'unixepoch')     AS deadline,
    round((julianday('now') - 2440587.5) * 86400.0 - d.delivered_at / 1e6, 3) AS idle_seconds,
    d.deadline <= (julianday('now') - 2440587.5) * 86400000000.0      AS expired,
    d.last_error
FROM deliveries d
JOIN subscriptions s ON s.id = d.subscription_id
JOIN streams st ON st.id = s.stream_id
WHERE d.waiting = 0;
