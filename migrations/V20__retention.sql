-- migration: expand, in a transaction
-- History retention (issue 20): finished runs are compacted past a hot window (their inputs and
-- node outputs dropped; status, timings, attempts, errors and events kept) and deleted past the
-- full retention, with their nodes and gates. Their events stay until the month's partition of
-- run_events holds no event of a run that still exists, and then the partition is dropped whole
-- (leasehold_drop_event_partition), never row by row.
--
-- runs.compacted_at says when a run was compacted; null for every run the previous release
-- wrote, which never reads it. tenant_retention holds a tenant's own windows; a tenant without
-- a row has the coordinators' (`--retention`, `--delete-after`).
--
-- An expand step: a nullable column without a default on runs (no rewrite; a brief ACCESS
-- EXCLUSIVE lock), a new table and a new function. Only runs is altered, so it runs in a
-- transaction (docs/operations.md). The sweep's indexes come with V21, concurrently.
ALTER TABLE runs ADD COLUMN compacted_at timestamptz;

CREATE TABLE tenant_retention (
    tenant_id           text        PRIMARY KEY CHECK (length(tenant_id) BETWEEN 1 AND 128),
    -- How long after it finished a run keeps its inputs and outputs.
    compact_after_secs  bigint      NOT NULL CHECK (compact_after_secs >= 3600),
    -- How long after it finished a run is deleted; never before it is compacted.
    delete_after_secs   bigint      NOT NULL CHECK (delete_after_secs >= compact_after_secs),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    updated_by          text        NOT NULL CHECK (length(updated_by) BETWEEN 1 AND 256)
);

-- Drops the monthly partition of run_events for the month of `month` when the month ended more
-- than a day ago (no event can land in it any more: an event's occurred_at is its transaction's
-- start, and a day covers any transaction) and no run that still exists has an event in it.
-- Returns the partition's name when it dropped it, null otherwise. The retention sweep calls it
-- for the oldest months; it checks everything itself, so a caller cannot drop a month's history
-- that a run still needs.
--
-- The check is in two steps. Runs are time-ordered (run ids are UUIDv7, made by the coordinator
-- that starts them), so the runs that may have events in the month are those whose id is below
-- the month's end (plus the day, for clocks): walked newest first, the first one found with an
-- event in the month stops the check at once, which is what happens for any recent month. When
-- none has, every event of the month is joined to runs before the drop, so that a run whose id
-- is not time-ordered cannot lose its history either.
--
-- SECURITY DEFINER, as V8's upkeep, so that the runtime role may drop partitions without owning
-- run_events; its search_path is pinned below.
--
-- Locks: the checks read the month's partition and runs under ACCESS SHARE. The detach takes
-- ACCESS EXCLUSIVE on run_events, which event writers wait for: lock_timeout bounds that wait to
-- half a second, after which the call fails (55P03) and the sweep tries again on its next pass.
-- The drop then locks the detached table only.
CREATE FUNCTION leasehold_drop_event_partition(month date)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    lo date := date_trunc('month', month)::date;
    hi date := (date_trunc('month', month) + interval '1 month')::date;
    name text := format('run_events_%s', to_char(date_trunc('month', month), 'YYYY_MM'));
    newest_possible uuid;
    still_needed boolean;
BEGIN
    IF month IS NULL THEN
        RAISE EXCEPTION 'month must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF to_regclass(name) IS NULL THEN
        RETURN NULL;
    END IF;
    IF hi::timestamptz + interval '1 day' > now() THEN
        RETURN NULL;
    END IF;
    -- The smallest UUIDv7 of the instant a day past the month's end: its first 48 bits are
    -- that instant in Unix milliseconds, and the rest zero.
    newest_possible := (lpad(to_hex((extract(epoch FROM hi::timestamptz + interval '1 day')
                                     * 1000)::bigint), 12, '0')
                        || '00000000000000000000')::uuid;
    EXECUTE format(
        'SELECT EXISTS (SELECT 1 FROM (SELECT run_id FROM runs WHERE run_id < %L '
        'ORDER BY run_id DESC) r '
        'WHERE EXISTS (SELECT 1 FROM %I e WHERE e.run_id = r.run_id))',
        newest_possible, name) INTO still_needed;
    IF still_needed THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I e JOIN runs r ON r.run_id = e.run_id)', name)
        INTO still_needed;
    IF still_needed THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('lock_timeout', '500ms', true);
    EXECUTE format('ALTER TABLE run_events DETACH PARTITION %I', name);
    EXECUTE format('DROP TABLE %I', name);
    RETURN name;
END;
$$;

-- As V8 and V11 do for the upkeep function: this schema then pg_temp, and the migrating
-- session's TimeZone, so that month bounds line up with the partitions'.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION leasehold_drop_event_partition(date) '
                   'SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION leasehold_drop_event_partition(date) SET TimeZone = %L',
                   current_setting('TimeZone'));
END
$$;

REVOKE ALL ON FUNCTION leasehold_drop_event_partition(date) FROM PUBLIC;
