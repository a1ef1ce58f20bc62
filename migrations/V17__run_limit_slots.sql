-- migration: expand, outside a transaction
-- One holder per slot of a limited automation and of a limited queue (V16): a claim that races
-- another for a slot fails on these indexes and claims again. Only held runs with a slot are in
-- them (a run that stops being held leaves them without a write), so unlimited runs pay nothing.
-- Built CONCURRENTLY, outside a transaction (see V9).
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS runs_one_holder_per_automation_slot
    ON runs (tenant_id, automation_id, automation_slot)
    WHERE automation_slot IS NOT NULL AND status IN ('running', 'pausing');
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS runs_one_holder_per_queue_slot
    ON runs (queue, queue_slot)
    WHERE queue_slot IS NOT NULL AND status IN ('running', 'pausing');
