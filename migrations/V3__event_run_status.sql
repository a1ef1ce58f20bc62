-- migration: expand, in a transaction
-- Every event records the run's status right after it, so that a watcher knows where the run
-- stands from the event alone (RunEvent.run_status) instead of mapping event names to states.
-- Events recorded before this migration have none. Adding a nullable column without a default
-- only changes the catalog, so it is instant however many events are stored, and a previous
-- build, whose inserts do not name the column, keeps working during a rolling upgrade. No CHECK:
-- adding one would scan every partition under a lock; the statements write only the values of
-- runs.status.
ALTER TABLE run_events ADD COLUMN run_status text;
