-- Shape "trigger": run_queue, run_leases and outcome kept in step by a trigger on runs, so that
-- every writer (this release's and the previous one's) keeps them right without knowing them.
CREATE FUNCTION queue_shapes_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF OLD.status = 'queued' THEN
            DELETE FROM run_queue WHERE run_id = OLD.run_id;
        ELSIF OLD.status IN ('running', 'pausing') AND NEW.status NOT IN ('running', 'pausing') THEN
            DELETE FROM run_leases WHERE run_id = OLD.run_id;
        END IF;
    END IF;
    IF NEW.status = 'queued' THEN
        INSERT INTO run_queue
        VALUES (NEW.run_id, NEW.tenant_id, NEW.priority, NEW.queued_at, NEW.retry_after,
                NEW.concurrency_key)
        ON CONFLICT (run_id) DO UPDATE
        SET priority = EXCLUDED.priority, queued_at = EXCLUDED.queued_at,
            retry_after = EXCLUDED.retry_after;
    ELSIF NEW.status IN ('running', 'pausing')
          AND (TG_OP = 'INSERT' OR OLD.status NOT IN ('running', 'pausing')) THEN
        INSERT INTO run_leases VALUES (NEW.run_id, NEW.tenant_id, NEW.concurrency_key);
    END IF;
    NEW.outcome := CASE WHEN NEW.status IN ('completed', 'failed', 'cancelled', 'blocked')
                        THEN NEW.status END;
    RETURN NEW;
END $$;
CREATE TRIGGER runs_queue_shapes_sync
    BEFORE INSERT OR UPDATE OF status, priority, queued_at, retry_after ON runs
    FOR EACH ROW EXECUTE FUNCTION queue_shapes_sync();
