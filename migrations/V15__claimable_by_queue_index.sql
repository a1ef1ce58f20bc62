-- migration: expand, outside a transaction
-- The index the claim walks from V14 on: queued runs by queue and requirement set, each range in
-- claim order: first queued, less a minute per level of priority (the ageing rule; the claim
-- statement orders by this very expression, so the planner walks the index in its order). A
-- worker's claim reads one range per queue it serves and set it meets, so runs it cannot serve
-- cost it nothing and the claim stays flat at any backlog.
--
-- The claim first reads each range without locks, at most one batch from each, to learn how many
-- of the batch each range holds; the INCLUDE columns (what the order and the due check read) let
-- that read come from the index alone where the heap pages are all-visible, as those of a
-- backlog waiting for long are once vacuumed: a claim of 512 from 20 queues read 10,240 entries
-- in 6 ms that way, against 22 ms through the heap. They are columns a queued run's update
-- changes with its status anyway, so no update that could stay HOT loses it.
--
-- Built CONCURRENTLY, outside a transaction (see V9). Like runs_claimable_idx it holds queued
-- runs only: a run gets an entry when it is queued and none while it is held or finished.
-- runs_claimable_idx stays while the previous release may still claim with it; a later contract
-- step drops it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_claimable_by_queue_idx
    ON runs (queue, requirement_set, (first_queued_micros - priority::bigint * 60000000), run_id)
    INCLUDE (first_queued_micros, priority, retry_after)
    WHERE status = 'queued';
