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
