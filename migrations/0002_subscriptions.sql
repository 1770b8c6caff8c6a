-- sqlstream schema, version 2: subscriptions (consumer groups), their pending deliveries,
-- and named reader positions.

-- AUTOINCREMENT: ids are never reused, so a handle to a deleted subscription (or reader)
-- can never act on a new one created under the same name.
CREATE TABLE subscriptions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT    NOT NULL UNIQUE,
    stream_id       INTEGER NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    ack_timeout     REAL    NOT NULL CHECK (ack_timeout > 0),          -- seconds
    max_unacked     INTEGER NOT NULL CHECK (max_unacked > 0),
    max_deliveries  INTEGER CHECK (max_deliveries IS NULL OR max_deliveries > 0),
    dead_letter     TEXT,                                              -- stream name, or NULL
    start_offset    INTEGER NOT NULL,                                  -- fixed at creation
    next_offset     INTEGER NOT NULL,                                  -- delivery frontier: never delivered from here on
    acked           INTEGER NOT NULL DEFAULT 0,                        -- records acked so far
    dead_lettered   INTEGER NOT NULL DEFAULT 0,                        -- records moved to dead_letter
    created_at      INTEGER NOT NULL                                   -- µs since epoch
);

-- Delivered but not yet acked. A row leaves on ack, or when dead-lettered. A record is
-- claimable again once its deadline has passed; a nack releases it (consumer NULL) with
-- its deadline set to when it may be redelivered.
CREATE TABLE deliveries (
    subscription_id INTEGER NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    offset          INTEGER NOT NULL,
    consumer        TEXT,                                              -- NULL once nacked
    attempts        INTEGER NOT NULL CHECK (attempts > 0),
    delivered_at    INTEGER NOT NULL,                                  -- µs, last delivery
    deadline        INTEGER NOT NULL,                                  -- µs; redelivered after this
    last_error      TEXT,
    PRIMARY KEY (subscription_id, offset)
) WITHOUT ROWID;
CREATE INDEX deliveries_by_deadline ON deliveries (subscription_id, deadline);

-- Named reader positions (no acks): the next offset the reader returns.
CREATE TABLE cursors (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    stream_id   INTEGER NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL CHECK (position >= 0),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- For people with the sqlite3 shell: one row per subscription, one per pending record.
-- "now" is computed with julianday(), which every SQLite version has.
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
JOIN streams st ON st.id = s.stream_id;
