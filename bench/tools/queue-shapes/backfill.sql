-- For the shapes whose statements keep the new tables themselves: what the seed left.
INSERT INTO run_queue
SELECT run_id, tenant_id, priority, queued_at, retry_after, concurrency_key
FROM runs WHERE status = 'queued';
UPDATE runs SET outcome = status WHERE status IN ('completed', 'failed', 'cancelled', 'blocked');
