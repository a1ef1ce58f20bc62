-- migration: expand, outside a transaction
-- A schedule's unfinished runs (V23), for its overlap policy: only runs a schedule started are
-- in it, and only until they finish. Built CONCURRENTLY, outside a transaction (see V9).
CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_schedule_unfinished_idx
    ON runs (tenant_id, automation_id, schedule_id)
    WHERE schedule_id IS NOT NULL AND status NOT IN ('completed', 'failed', 'blocked', 'cancelled');
