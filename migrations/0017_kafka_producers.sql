-- sqlstream schema: one producer-state table for every front. The Kafka
-- listener's idempotent producers move from kafka_producer_state into `producers` (the
-- core's, also used by Stream.append_fenced and the HTTP front), named `kafka:<producer
-- id>`, with `recent`: the producer's last batches on that stream, so a retried batch is
-- recognised with the offsets it was stored at.

-- JSON [[first_seq, last_seq, first_offset, next_offset], ...], newest last (at most 5).
-- (json_extract "#-1" and an ORDER BY inside json_group_array need SQLite 3.44+: apsw>=3.44 bundles it.)
ALTER TABLE producers ADD COLUMN recent TEXT;

-- kafka_producer_state.batches held [[first_seq, last_seq, base_offset], ...] (newest
-- last; Kafka sequences wrap at 2**31): the batch's end offset is base + its record count.
INSERT INTO producers (stream_id, producer, epoch, seq, updated_at, recent)
SELECT
    s.stream_id,
    'kafka:' || s.producer_id,
    s.epoch,
    json_extract(s.batches, '$[#-1][1]'),
    CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER),
    (SELECT json_group_array(json_array(
                json_extract(b.value, '$[0]'), json_extract(b.value, '$[1]'), json_extract(b.value, '$[2]'),
                json_extract(b.value, '$[2]') + 1
                    + (json_extract(b.value, '$[1]') - json_extract(b.value, '$[0]') + 2147483648) % 2147483648)
            ORDER BY CAST(b.key AS INTEGER))
     FROM json_each(s.batches) AS b)
FROM kafka_producer_state AS s
WHERE json_array_length(s.batches) > 0;

DROP TABLE kafka_producer_state;
