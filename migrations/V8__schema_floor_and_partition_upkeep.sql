-- migration: expand, in a transaction
-- The schema's compatibility floor, and partition upkeep that a runtime role without ownership
-- may run and that repairs the default partition. Only additions and a function replaced with
-- the same signature: every statement of the previous release still works on this schema.
--
-- Locks: none stronger than ROW EXCLUSIVE on a hot table. The new table is new; replacing a
-- function locks nothing of the tables it touches.

-- The oldest schema a release may know and still run against this database. A release starts
-- when the floor is at or below the newest migration it knows. Expand steps leave it alone; a
-- contract step (its header says `contract to floor N`) raises it before it runs. One row.
CREATE TABLE leasehold_schema_floor (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    floor      integer     NOT NULL CHECK (floor >= 1),
    raised_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO leasehold_schema_floor (floor) VALUES (1);

-- Creates the monthly partitions of run_events that are missing: the month of `from_day` and
-- the `months - 1` after it, and every month of which an event sits in the default partition (a
-- stray, left there while upkeep lapsed). Returns how many it created. Idempotent.
--
-- A month whose events sit in the default partition cannot be created as a partition of
-- run_events (PostgreSQL refuses: the default partition holds rows of its range), which once
-- made upkeep fail for good after a lapse. Such a month is created as a table of its own, its
-- events are moved into it, and it is attached: upkeep always catches up.
--
-- SECURITY DEFINER: it runs as its owner, the role that migrates, so that the runtime role can
-- keep the partitions without owning run_events. Its search_path is pinned (below) so that no
-- caller can put objects of their own in its way, and only roles granted EXECUTE may call it.
--
-- Locks: while it creates a month it holds the default partition in SHARE ROW EXCLUSIVE mode, so
-- that no event lands there between a month's move and its attach, then ACCESS EXCLUSIVE for the
-- create or attach (PostgreSQL's own, for checking the default partition, which upkeep keeps
-- empty). run_events itself is held in SHARE UPDATE EXCLUSIVE mode, which writers do not wait
-- for. When every month exists it reads the default partition and the catalog only.
CREATE OR REPLACE FUNCTION leasehold_ensure_event_partitions(from_day date, months integer)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    first_month date := date_trunc('month', from_day)::date;
    lo date;
    hi date;
    name text;
    columns text;
    locked boolean := false;
    created integer := 0;
BEGIN
    IF months IS NULL OR months < 0 OR months > 1200 THEN
        RAISE EXCEPTION 'months must be between 0 and 1200, not %', months
            USING ERRCODE = 'numeric_value_out_of_range';
    END IF;
    FOR lo IN
        SELECT DISTINCT m FROM (
            SELECT date_trunc('month', occurred_at)::date AS m FROM run_events_default
            UNION ALL
            SELECT generate_series(first_month, first_month + make_interval(months => months - 1),
                                   interval '1 month')::date
        ) wanted
        ORDER BY m
    LOOP
        hi := (lo + interval '1 month')::date;
        name := format('run_events_%s', to_char(lo, 'YYYY_MM'));
        IF to_regclass(name) IS NULL THEN
            IF NOT locked THEN
                LOCK TABLE run_events_default IN SHARE ROW EXCLUSIVE MODE;
                locked := true;
            END IF;
            IF EXISTS (SELECT 1 FROM run_events_default
                       WHERE occurred_at >= lo AND occurred_at < hi) THEN
                SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO columns
                FROM pg_attribute
                WHERE attrelid = 'run_events'::regclass AND attnum > 0 AND NOT attisdropped;
                EXECUTE format('CREATE TABLE %I (LIKE run_events INCLUDING DEFAULTS '
                               'INCLUDING CONSTRAINTS INCLUDING INDEXES)', name);
                EXECUTE format('WITH moved AS (DELETE FROM run_events_default '
                               'WHERE occurred_at >= %L AND occurred_at < %L RETURNING %s) '
                               'INSERT INTO %I (%s) SELECT %s FROM moved',
                               lo, hi, columns, name, columns, columns);
                EXECUTE format('ALTER TABLE run_events ATTACH PARTITION %I '
                               'FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
            ELSE
                EXECUTE format('CREATE TABLE %I PARTITION OF run_events '
                               'FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
            END IF;
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END;
$$;

-- The schema this migration runs in, where run_events lives (and where the function creates the
-- partitions, the first schema of the path), then pg_temp last: a SECURITY DEFINER function
-- searches pg_temp first unless told otherwise, and any caller may create a table there named
-- like one of ours. pg_catalog, not listed, is searched before both.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION leasehold_ensure_event_partitions(date, integer) '
                   'SET search_path = %I, pg_temp', current_schema());
END
$$;

-- Only the owner, and the roles `leasehold migrate --runtime-role` names, may call it.
REVOKE ALL ON FUNCTION leasehold_ensure_event_partitions(date, integer) FROM PUBLIC;
