-- migration: expand, in a transaction
-- Stats without scanning history (issue 20): the count of finished runs (completed, failed,
-- cancelled) per tenant, queue and status, kept by the writes, so that GetStats reads a few
-- rows instead of every finished run. Unfinished runs are few, and still counted from
-- runs_status_idx.
--
-- Triggers rather than the statements: every release's writes move a count, the previous
-- release's during a rolling upgrade included, and a statement added later cannot forget to.
-- They fire only when a run enters or leaves a finished status (a completion, a failure, a
-- cancel, a recover, a deletion): claims, heartbeats and checkpoints never call them (the WHEN
-- clause is checked without calling the function).
--
-- A counter row updated by every completion would make concurrent completions of a tenant wait
-- for each other. So each move inserts a delta row into run_status_deltas (insert-only, no
-- index), and the leader folds the deltas into run_status_counts every second; GetStats reads
-- both. The deltas are heap rows with no index, so a completion pays one small insert.
--
-- run_status_counts starts empty: the leader's first pass counts the finished runs once, in one
-- statement, and drops the deltas that statement's snapshot already sees (their moves are in
-- its count), then marks run_status_baseline. Until then GetStats counts as before.
--
-- An expand step: new tables and a new function; the triggers lock runs (SHARE ROW EXCLUSIVE)
-- only while they are created. The previous release never reads the new tables.
CREATE TABLE run_status_counts (
    tenant_id  text   NOT NULL,
    queue      text   NOT NULL,
    status     text   NOT NULL CHECK (status IN ('completed', 'failed', 'cancelled')),
    runs       bigint NOT NULL,
    PRIMARY KEY (tenant_id, queue, status)
);

CREATE TABLE run_status_deltas (
    tenant_id  text    NOT NULL,
    queue      text    NOT NULL,
    status     text    NOT NULL,
    runs       integer NOT NULL CHECK (runs IN (-1, 1))
);

-- One row once the finished runs were counted into run_status_counts.
CREATE TABLE run_status_baseline (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    counted_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION leasehold_count_run_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.status IN ('completed', 'failed', 'cancelled') THEN
        INSERT INTO run_status_deltas (tenant_id, queue, status, runs)
        VALUES (OLD.tenant_id, OLD.queue, OLD.status, -1);
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.status IN ('completed', 'failed', 'cancelled') THEN
        INSERT INTO run_status_deltas (tenant_id, queue, status, runs)
        VALUES (NEW.tenant_id, NEW.queue, NEW.status, 1);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER runs_count_finished_moves AFTER UPDATE OF status ON runs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          AND (OLD.status IN ('completed', 'failed', 'cancelled')
               OR NEW.status IN ('completed', 'failed', 'cancelled')))
    EXECUTE FUNCTION leasehold_count_run_status();

CREATE TRIGGER runs_count_finished_inserts AFTER INSERT ON runs
    FOR EACH ROW WHEN (NEW.status IN ('completed', 'failed', 'cancelled'))
    EXECUTE FUNCTION leasehold_count_run_status();

CREATE TRIGGER runs_count_finished_deletes AFTER DELETE ON runs
    FOR EACH ROW WHEN (OLD.status IN ('completed', 'failed', 'cancelled'))
    EXECUTE FUNCTION leasehold_count_run_status();
