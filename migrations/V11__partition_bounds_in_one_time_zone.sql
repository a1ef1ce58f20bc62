-- migration: expand, in a transaction
-- Partition bounds in one time zone, whichever session keeps them. The upkeep function turns
-- each month's first day into a timestamptz bound in the calling session's TimeZone, so a
-- coordinator whose connection set another TimeZone (a client default, a URL's options) made
-- bounds that overlapped the existing months (upkeep then failed for good) or left gaps (events
-- landed in the default partition). The function now runs in the TimeZone of the session that
-- migrates, which is the one that made the first partitions (V1 created them as it migrated, and
-- `leasehold migrate` connects the same way each time): every later month lines up with them.
--
-- Locks: none on any table; it changes the function's settings only.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION leasehold_ensure_event_partitions(date, integer) '
                   'SET TimeZone = %L', current_setting('TimeZone'));
END
$$;
