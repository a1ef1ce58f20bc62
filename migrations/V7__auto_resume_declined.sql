-- Auto-resume decides once per stale reap. A stale-reaped run that can never be auto-resumed
-- (its cap reached, no attempt left, its spec unreadable) is marked with the reap it was
-- declined for, and the sweep's candidate read skips it: before, such runs were read again every
-- pass for the whole window, and enough of them filled the pass's limit ahead of runs that could
-- be resumed. Keyed on the reap's time, so a later stale reap of the same run is a new candidate
-- without anything resetting the mark.
--
-- An expand step: one nullable column, which the previous release never reads or writes; adding
-- it takes a brief ACCESS EXCLUSIVE lock on runs (no rewrite, no scan).
ALTER TABLE runs ADD COLUMN auto_resume_declined_for timestamptz;
