-- sqlstream schema, version 8: the reverse JetStream relay's position in streaming_progress.

-- Messages the durable consumer still held for the relay after the last one it stored
-- (the JetStream metadata's num_pending); NULL before its first batch.
ALTER TABLE jetstream_sources ADD COLUMN pending INTEGER;

-- As in version 5, plus the position of a jetstream-source service: the JetStream stream,
-- the highest sequence stored, how many messages it stored. Its `lag` is the messages
-- left on the server (as of `updated`), not local commits: local commits are not its work.
DROP VIEW streaming_progress;
CREATE VIEW streaming_progress AS
SELECT
    c.service,
    c.kind,
    c.height,
    t.value                                                           AS head,
    CASE WHEN c.kind = 'jetstream-source' THEN s.pending
         ELSE max(0, t.value - c.height) END                          AS lag,
    strftime('%Y-%m-%dT%H:%M:%fZ', max(c.updated_at, coalesce(s.updated_at, 0)) / 1e6, 'unixepoch') AS updated,
    c.last_error,
    strftime('%Y-%m-%dT%H:%M:%fZ', c.error_at / 1e6, 'unixepoch')     AS error_time,
    s.js_stream                                                       AS source,
    s.sequence                                                        AS source_sequence,
    s.stored                                                          AS source_stored
FROM streaming_cursors c
JOIN counters t ON t.name = 'txn'
LEFT JOIN jetstream_sources s ON s.service = c.service;
