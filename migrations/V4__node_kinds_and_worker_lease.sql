-- migration: expand, in a transaction
-- Workers state their lease, and advertise the node kinds they run with the input schemas those
-- declare: liveness then follows each worker's own lease, and coordinators check node inputs
-- before they store a spec. Only additions: every statement of the previous release still works
-- on this schema (its registration leaves lease_ms null, which reads as the old fixed window,
-- and advertises no kinds, which leaves their inputs unchecked), so the migration may run while
-- the processes of the previous release are still being replaced.

-- The lease the worker takes on runs: it is alive while its last heartbeat is younger than this.
-- Null for a worker that did not state one.
ALTER TABLE workers ADD COLUMN lease_ms bigint CHECK (lease_ms > 0);

-- Every node kind a worker has advertised. Rows outlive the workers that wrote them, so that a
-- kind's inputs are still checked while none of its workers is up (during a deploy, say).
CREATE TABLE node_kinds (
    kind                 text        PRIMARY KEY,
    -- The schema the latest worker to advertise the kind declared; null when it declared none.
    input_schema         jsonb,
    first_advertised_at  timestamptz NOT NULL DEFAULT now(),
    last_advertised_at   timestamptz NOT NULL DEFAULT now()
);
