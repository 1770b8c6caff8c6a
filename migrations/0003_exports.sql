-- sqlstream schema, version 3: export bookkeeping (db.export / trim_exported) and the
-- objects of the sqlite storage driver.

-- One row per named export. Its progress is per stream (export_streams).
CREATE TABLE exports (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    directory   TEXT    NOT NULL,                 -- where its archives are staged (and kept)
    created_at  INTEGER NOT NULL,                 -- µs since epoch
    updated_at  INTEGER NOT NULL
);

-- Per export and stream: records below exported_offset are in archives this export has
-- committed to (complete and fsynced under their working names); records below
-- delivered_offset are in closed archives (final name, or uploaded). delivered_offset is
-- the frontier trim_exported() may trim up to.
CREATE TABLE export_streams (
    export_id         INTEGER NOT NULL REFERENCES exports (id) ON DELETE CASCADE,
    stream_id         INTEGER NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    exported_offset   INTEGER NOT NULL CHECK (exported_offset >= 0),
    delivered_offset  INTEGER NOT NULL CHECK (delivered_offset >= 0),
    CHECK (delivered_offset <= exported_offset),
    PRIMARY KEY (export_id, stream_id)
) WITHOUT ROWID;

-- Archives an export wrote. 'pending': committed, still under its working name (a crash
-- here is finished by the next run); 'closed': under its final name or uploaded.
CREATE TABLE export_files (
    id          INTEGER PRIMARY KEY,
    export_id   INTEGER NOT NULL REFERENCES exports (id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,                 -- final file name (no directory)
    working     TEXT    NOT NULL,                 -- path of the complete working file
    destination TEXT,                             -- storage object path, NULL: local file
    location    TEXT,                             -- where the closed archive is
    state       TEXT    NOT NULL CHECK (state IN ('pending', 'closed')),
    records     INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,                 -- size of the archive as stored
    created_at  INTEGER NOT NULL,
    closed_at   INTEGER
);
CREATE INDEX export_files_by_state ON export_files (export_id, state);

-- Which offsets of which stream each archive holds: [first_offset, next_offset).
CREATE TABLE export_ranges (
    file_id       INTEGER NOT NULL REFERENCES export_files (id) ON DELETE CASCADE,
    stream_id     INTEGER NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    first_offset  INTEGER NOT NULL,
    next_offset   INTEGER NOT NULL,
    CHECK (first_offset < next_offset),
    PRIMARY KEY (file_id, stream_id)
) WITHOUT ROWID;

-- The sqlite storage driver. An object is an ordered list of segments; each segment is
-- a sealed byte stream (a row of `streams` named `_objects/<hex>`, its bytes in
-- `chunks`). cat_objects() builds the new object's segment list from the sources'
-- segments and deletes the sources' rows, so no payload byte is copied; move_object()
-- updates `path`. A stream no segment refers to any more is deleted in the same
-- transaction. RESTRICT keeps delete_stream() from cutting a stored object short.
CREATE TABLE storage_objects (
    id          INTEGER PRIMARY KEY,
    path        TEXT    NOT NULL UNIQUE,
    size        INTEGER NOT NULL CHECK (size >= 0),
    created_at  INTEGER NOT NULL                  -- µs since epoch
);

CREATE TABLE storage_segments (
    object_id  INTEGER NOT NULL REFERENCES storage_objects (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    stream_id  INTEGER NOT NULL REFERENCES streams (id) ON DELETE RESTRICT,
    PRIMARY KEY (object_id, seq)
) WITHOUT ROWID;
CREATE INDEX storage_segments_by_stream ON storage_segments (stream_id);
