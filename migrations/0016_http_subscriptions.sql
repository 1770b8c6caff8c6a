-- sqlstream schema: Durable Streams subscriptions (sqlstream.http, the reserved
-- `__ds/subscriptions` API). A DS subscription links streams (a glob pattern and/or
-- explicit paths); behind each link whose stream exists is an ordinary sqlstream
-- subscription named `{id}@{path}`, which holds the cursor and the deliveries, so Python
-- consumers can share the group. These tables keep only what the protocol adds: the
-- configuration, the wake generation, the worker lease and the links.
CREATE TABLE ds_subscriptions (
    id            TEXT    PRIMARY KEY,
    type          TEXT    NOT NULL CHECK (type IN ('pull-wake', 'webhook')),
    pattern       TEXT,
    wake_stream   TEXT,
    webhook_url   TEXT,
    callback_base TEXT,                            -- webhook: the stream root URL of callback URLs
    lease_ttl_ms  INTEGER NOT NULL CHECK (lease_ttl_ms > 0),
    description   TEXT,
    config_hash   TEXT    NOT NULL,                -- sha256 of the normalised configuration
    created_at    INTEGER NOT NULL,                -- µs since epoch
    generation    INTEGER NOT NULL DEFAULT 0,      -- fencing counter: + 1 for every wake
    wake_id       TEXT,                            -- the wake in flight or claimed; NULL: idle
    holder        TEXT,                            -- the worker holding the lease
    token_hash    BLOB,                            -- sha256 of the lease's bearer token
    lease_until   INTEGER                          -- µs since epoch; the lease ends then
) WITHOUT ROWID;

CREATE TABLE ds_subscription_links (
    subscription  TEXT    NOT NULL REFERENCES ds_subscriptions (id) ON DELETE CASCADE,
    path          TEXT    NOT NULL,                -- the stream's name
    explicit      INTEGER NOT NULL DEFAULT 0 CHECK (explicit IN (0, 1)),
    glob          INTEGER NOT NULL DEFAULT 0 CHECK (glob IN (0, 1)),
    linked_at     INTEGER NOT NULL,                -- µs since epoch
    PRIMARY KEY (subscription, path)
) WITHOUT ROWID;
