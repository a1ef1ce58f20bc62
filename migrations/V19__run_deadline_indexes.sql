-- migration: expand, outside a transaction
-- The deadline sweep's candidates (V18): runs never claimed that have a start deadline, and
-- unfinished runs that have a run deadline, each by deadline. Only such runs are in them, so
-- runs without deadlines, and finished runs however many, cost the sweep nothing. Built
-- CONCURRENTLY, outside a transaction (see V9).
CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_start_deadline_idx ON runs (start_deadline)
    WHERE start_deadline IS NOT NULL AND status = 'queued' AND lease_epoch = 0;
CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_run_deadline_idx ON runs (run_deadline)
    WHERE run_deadline IS NOT NULL
      AND status NOT IN ('completed', 'failed', 'blocked', 'cancelled');
