-- migration: expand, outside a transaction
-- The index the claim walks from V14 on: queued runs by queue and requirement set, each range in
-- claim order (priority, then oldest). A worker's claim reads one range per queue it serves and
-- set it meets, at most one batch from each, so runs it cannot serve cost it nothing and the
-- claim stays flat at any backlog.
--
-- Built CONCURRENTLY, outside a transaction (see V9). Like runs_claimable_idx it holds queued
-- runs only: a run gets an entry when it is queued and none while it is held or finished.
-- runs_claimable_idx stays while the previous release may still claim with it; a later contract
-- step drops it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_claimable_by_queue_idx
    ON runs (queue, requirement_set, priority DESC, queued_at, run_id)
    WHERE status = 'queued';
