-- sqlstream schema, version 7: key-ordered delivery and subscription redrive.

-- ordering 'key': a record is not delivered while an earlier record of the same stream
-- with the same key is pending. redrive_offset: the offset of the dead-letter stream up
-- to which Subscription.redrive() has looked (so a redrive never moves a letter twice).
ALTER TABLE subscriptions ADD COLUMN ordering TEXT NOT NULL DEFAULT 'none'
    CHECK (ordering = 'none' OR ordering = 'key');
ALTER TABLE subscriptions ADD COLUMN redrive_offset INTEGER NOT NULL DEFAULT 0;

-- Under ordering 'key' every deliveries row carries its record's key (NULL otherwise),
-- and a record taken past the delivery frontier while an earlier record of its key was
-- pending is a row with waiting = 1: never delivered yet, held by nobody, deadline at the
-- largest integer (no expiry path ever picks it), released by a claim once its key has no
-- delivered row left. Keeping it in `deliveries` means retention (keep_unacked), the
-- acked frontier and deletes treat it like any other unsettled record.
ALTER TABLE deliveries ADD COLUMN key TEXT;
ALTER TABLE deliveries ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0 CHECK (waiting = 0 OR waiting = 1);

-- Partial: rows of unordered subscriptions (key NULL) cost nothing here.
CREATE INDEX deliveries_by_key ON deliveries (subscription_id, key, waiting, offset) WHERE key IS NOT NULL;
