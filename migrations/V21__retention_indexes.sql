-- migration: expand, outside a transaction
-- The retention sweep's candidates (V20), by when they finished: finished runs (completed,
-- failed or cancelled; a blocked run waits for a person, and is kept) not compacted yet, and
-- compacted runs (which alone are deleted: a run is compacted before it is deleted).
-- Only finished runs are in them, and each run leaves the first when it is compacted, so a pass
-- reads the oldest entries and stops. A finishing update already changes runs_status_idx's key,
-- so it was never HOT: the first index costs it one more entry, and nothing else on the hot
-- path. Built CONCURRENTLY, outside a transaction (see V9).
CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_uncompacted_idx ON runs (finished_at)
    WHERE compacted_at IS NULL AND status IN ('completed', 'failed', 'cancelled');
CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_compacted_idx ON runs (finished_at)
    WHERE compacted_at IS NOT NULL;
