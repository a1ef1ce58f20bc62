//! The pausing settlement's statements: a run a user asked to pause whose holder died before
//! settling it is settled into `paused` under the leader lease, as its holder would have.

use chrono::{DateTime, Utc};

use super::{apply_many, int, read_lease_view, split};
use crate::ids::RunId;
use crate::lease::LeaseView;
use crate::store::leader::leader_fence;
use crate::store::query::{Query, clear_lease};
use crate::store::{Error, Leadership, Store};

/// One pass of the pausing settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PausingParams {
    /// The database's `now()` when `None`; tests pin it to stand on either side of a horizon.
    pub now: Option<DateTime<Utc>>,
    /// Most runs looked at in one pass.
    pub limit: usize,
}

// Pausing runs whose holder's lease ran out before the pause settled, oldest expiry first. Walks
// runs_held_idx, which holds only running and pausing runs.
const EXPIRED_PAUSING: Query = Query {
    name: "expired_pausing",
    sql: "\
SELECT run_id, lease_epoch, status, lease_expires_at,
       progress_epoch = lease_epoch AS progressed, expired_claims
FROM runs
WHERE status = 'pausing' AND lease_expires_at < coalesce($1::timestamptz, now())
ORDER BY lease_expires_at
LIMIT $2::int",
};

// A user asked the run to pause and its holder died before settling it: the sweep settles it as
// the holder would have, `paused` as operator_paused with the lease given up, and records its
// running nodes as interrupted attempts, which count. Fenced on the claim's epoch and on the
// leader lease, re-checked under the row lock.
const SETTLE_EXPIRED_PAUSING: Query = Query {
    name: "settle_expired_pausing",
    sql: concat!(
        "\
WITH target AS (
    SELECT r.run_id, r.claimant_id, r.lease_expires_at FROM runs r
    JOIN unnest($1::uuid[], $2::bigint[]) AS c(run_id, epoch)
      ON r.run_id = c.run_id AND r.lease_epoch = c.epoch
    WHERE r.status = 'pausing' AND r.lease_expires_at < coalesce($3::timestamptz, now())
      AND ",
        leader_fence!(4, 5),
        "
    ORDER BY r.run_id
    FOR UPDATE OF r
),
paused AS (
    UPDATE runs r
    SET status = 'paused', stop_kind = 'operator_paused',
        ",
        clear_lease!(),
        ",
        event_seq = r.event_seq + 1, updated_at = now()
    FROM target
    WHERE r.run_id = target.run_id
    RETURNING r.run_id, r.tenant_id, r.lease_epoch, r.event_seq, r.pause_reason,
              target.claimant_id, target.lease_expires_at
),
interrupted AS (
    UPDATE run_nodes n
    SET status = 'failed', last_error = 'attempt interrupted: the lease expired',
        last_error_retryable = true, finished_at = now()
    FROM paused
    WHERE n.run_id = paused.run_id AND n.status = 'running'
    RETURNING n.run_id, n.node_id, n.attempts
)
INSERT INTO run_events (run_id, seq, tenant_id, event, run_status, epoch, reason, stop_kind,
                        metadata)
SELECT paused.run_id, event_seq, tenant_id, 'run_paused', 'paused', lease_epoch, pause_reason,
       'operator_paused',
       jsonb_build_object(
           'settled_by', 'lease_expired',
           'detail', 'the holder''s lease expired before the pause settled',
           'claimant_id', claimant_id, 'lease_expired_at', lease_expires_at,
           'interrupted', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                               'node_id', i.node_id, 'attempt', i.attempts)), '[]'::jsonb)
                           FROM interrupted i WHERE i.run_id = paused.run_id))
FROM paused
RETURNING run_id"
    ),
};

pub(super) const QUERIES: &[Query] = &[EXPIRED_PAUSING, SETTLE_EXPIRED_PAUSING];

impl Store {
    /// Pausing runs whose lease has expired at `params.now`.
    pub async fn expired_pausing(&self, params: &PausingParams) -> Result<Vec<LeaseView>, Error> {
        let client = self.client().await?;
        let rows = EXPIRED_PAUSING
            .query(&client, &[&params.now, &int(params.limit)])
            .await?;
        rows.iter().map(read_lease_view).collect()
    }

    /// Settles, under `leader`, pausing runs whose holder's lease expired into `paused`;
    /// returns those it moved.
    ///
    /// # Locks
    /// The runs' rows, in run-id order, and a share lock on the role's `leader_leases` row, for
    /// the statement only.
    pub async fn settle_expired_pausing(
        &self,
        leader: &Leadership,
        runs: &[LeaseView],
        params: &PausingParams,
    ) -> Result<Vec<RunId>, Error> {
        let (run_ids, epochs) = split(runs);
        let (name, epoch) = (leader.name(), leader.epoch().0);
        apply_many(
            self,
            SETTLE_EXPIRED_PAUSING,
            runs.len(),
            &[&run_ids, &epochs, &params.now, &name, &epoch],
        )
        .await
    }
}
