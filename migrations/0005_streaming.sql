-- sqlstream schema, version 5: durable cursors of the streaming services (`sqlstream serve`,
-- sqlstream.streaming). A service's block (height) is a commit's txn number; `height` is the
-- last block the service finished (its output complete, and fsynced when it asked for that).

CREATE TABLE streaming_cursors (
    service     TEXT    PRIMARY KEY,                -- the streamer's name in the config
    kind        TEXT    NOT NULL,                   -- the service type ('file', 'archive', ...)
    height      INTEGER NOT NULL CHECK (height >= 0),
    updated_at  INTEGER NOT NULL,                   -- µs since epoch
    last_error  TEXT,                               -- NULL once a block succeeds again
    error_at    INTEGER                             -- µs since epoch of last_error
) WITHOUT ROWID;

-- Progress and lag per service: lag counts commits (txn numbers) after the service's
-- height, whether or not they touch the streams the service exposes.
CREATE VIEW streaming_progress AS
SELECT
    c.service,
    c.kind,
    c.height,
    t.value                                                           AS head,
    max(0, t.value - c.height)                                        AS lag,
    strftime('%Y-%m-%dT%H:%M:%fZ', c.updated_at / 1e6, 'unixepoch')   AS updated,
    c.last_error,
    strftime('%Y-%m-%dT%H:%M:%fZ', c.error_at / 1e6, 'unixepoch')     AS error_time
FROM streaming_cursors c, counters t
WHERE t.name = 'txn';
