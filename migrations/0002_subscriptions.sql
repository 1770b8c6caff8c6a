-- sqlstream schema, version 2: subscriptions (consumer groups), their pending deliveries,
-- and named reader positions.

CREATE TABLE subscriptions (
    id              INTEGER PRIMARY KEY,
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

-- Delivered but not yet acked. A row leaves on ack, or when dead-lettered.
CREATE TABLE deliveries (
    subscription_id INTEGER NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    offset          INTEGER NOT NULL,
    consumer        TEXT    NOT NULL,
    attempts        INTEGER NOT NULL CHECK (attempts > 0),
    delivered_at    INTEGER NOT NULL,                                  -- µs, last delivery
    deadline        INTEGER NOT NULL,                                  -- µs; redelivered after this
    last_error      TEXT,
    PRIMARY KEY (subscription_id, offset)
) WITHOUT ROWID;
CREATE INDEX deliveries_by_deadline ON deliveries (subscription_id, deadline);

-- Named reader positions (no acks): the next offset the reader returns.
CREATE TABLE cursors (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    stream_id   INTEGER NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL CHECK (position >= 0),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
