-- sqlstream schema, version 6: state of the NATS JetStream relay (sqlstream.streaming.jetstream).

-- A stable, random identity of this database file. The relay puts it in every message it
-- forwards (origin header, Nats-Msg-Id), so two files never share message ids, and the
-- same file resending after a crash produces the same ids (dropped by the server's
-- duplicate window). A backup copy keeps the id of the file it copies.
INSERT INTO counters (name, value) VALUES ('file_id', random() & 9223372036854775807)
ON CONFLICT (name) DO NOTHING;

-- Forward relay: what may have been published without a PubAck yet. Blocks (txn numbers)
-- in (cursor, h1] were first published no earlier than at1, those in (h1, h2] no earlier
-- than at2 (µs since epoch). At start the relay compares the older bound with the
-- server's duplicate window: a resend of records published longer ago than the window
-- could be stored twice, so it refuses instead.
CREATE TABLE jetstream_sent (
    service  TEXT    PRIMARY KEY,
    h1       INTEGER NOT NULL,
    at1      INTEGER NOT NULL,
    h2       INTEGER NOT NULL,
    at2      INTEGER NOT NULL
) WITHOUT ROWID;

-- Reverse relay (jetstream-source): the highest JetStream stream sequence stored locally,
-- written in the same transaction as the records it stores.
CREATE TABLE jetstream_sources (
    service     TEXT    PRIMARY KEY,
    js_stream   TEXT    NOT NULL,
    sequence    INTEGER NOT NULL,
    stored      INTEGER NOT NULL,                  -- messages stored (duplicates excluded)
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;
