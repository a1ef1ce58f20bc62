//! The coordinators' leader lease (docs/lease_protocol.md, rule 10): one `leader_leases` row per
//! role, with its own fencing epoch.
//!
//! A coordinator that holds the row runs the sweeps. Taking over an expired row raises its
//! epoch; renewing keeps it. Every sweep write names the leadership it acts under and checks it
//! in the same statement (`leader_fence!`), so a leader that paused past its lease and woke
//! up changes nothing. Times come from the database's `now()`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::query::Query;
use super::{Error, Store, millis};

/// The leader lease's fencing token: raised by every takeover, kept by renewals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaderEpoch(pub i64);

impl std::fmt::Display for LeaderEpoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Proof of leadership: only [`Store::try_acquire_leadership`] makes one, and every sweep write
/// carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    name: String,
    holder: String,
    epoch: LeaderEpoch,
    expires_at: DateTime<Utc>,
}

impl Leadership {
    /// The role led, such as `sweeps`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The coordinator that leads.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The fencing token of this term.
    pub fn epoch(&self) -> LeaderEpoch {
        self.epoch
    }

    /// When the lease runs out as acquired, by the database's clock. Renewals extend the stored
    /// lease without changing this value.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }
}

/// The check every leader-fenced statement makes, with the role's name at parameter `$n` and
/// the epoch at `$e`: the leadership still stands, under a share lock on its row, so that a
/// takeover waits for the statement to commit, and a statement that waited for a takeover sees
/// the new epoch and changes nothing. A macro because a `const` cannot be spliced into another.
macro_rules! leader_fence {
    ($n:literal, $e:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM leader_leases l WHERE l.name = $",
            $n,
            "::text AND l.epoch = $",
            $e,
            "::bigint AND l.expires_at >= now() FOR SHARE)"
        )
    };
}
pub(super) use leader_fence;

// One statement takes a free role, takes over an expired one, or renews one this holder holds.
// ON CONFLICT locks the existing row, and its WHERE leaves a live lease of another holder alone
// (zero rows). A takeover raises the epoch, so the former leader's fenced writes change nothing;
// a renewal by the live holder keeps it. A lease is valid through its expiry instant.
const TRY_ACQUIRE_LEADERSHIP: Query = Query {
    name: "try_acquire_leadership",
    sql: "\
INSERT INTO leader_leases AS l (name, holder, epoch, acquired_at, expires_at)
VALUES ($1::text, $2::text, 1, now(), now() + $3::bigint * interval '1 millisecond')
ON CONFLICT (name) DO UPDATE
SET holder = excluded.holder,
    epoch = CASE WHEN l.holder = excluded.holder AND l.expires_at >= now()
                 THEN l.epoch ELSE l.epoch + 1 END,
    acquired_at = CASE WHEN l.holder = excluded.holder AND l.expires_at >= now()
                       THEN l.acquired_at ELSE now() END,
    expires_at = excluded.expires_at
WHERE l.expires_at < now() OR l.holder = excluded.holder
RETURNING name, holder, epoch, expires_at",
};

// Extends a live lease, fenced on holder and epoch: after an expiry or a takeover it changes
// nothing, and the former leader must stop sweeping.
const RENEW_LEADERSHIP: Query = Query {
    name: "renew_leadership",
    sql: "\
UPDATE leader_leases
SET expires_at = now() + $4::bigint * interval '1 millisecond'
WHERE name = $1::text AND holder = $2::text AND epoch = $3::bigint AND expires_at >= now()
RETURNING expires_at",
};

// A leader stepping down ends its lease now, so that another coordinator takes over on its next
// try instead of waiting for the lease to run out. Fenced like a renewal.
const RESIGN_LEADERSHIP: Query = Query {
    name: "resign_leadership",
    sql: "\
UPDATE leader_leases
SET expires_at = least(expires_at, now())
WHERE name = $1::text AND holder = $2::text AND epoch = $3::bigint
RETURNING name",
};

pub(super) const QUERIES: &[Query] = &[TRY_ACQUIRE_LEADERSHIP, RENEW_LEADERSHIP, RESIGN_LEADERSHIP];

impl Store {
    /// Takes the role `name` for `holder` for `lease`, when it is free, expired, or already
    /// `holder`'s; `None` while another holder's lease is alive.
    ///
    /// # Locks
    /// The role's `leader_leases` row, for the statement only. It waits for sweep statements
    /// that share-lock the row to commit.
    pub async fn try_acquire_leadership(
        &self,
        name: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<Option<Leadership>, Error> {
        let client = self.client().await?;
        let row = TRY_ACQUIRE_LEADERSHIP
            .query_opt(&client, &[&name, &holder, &millis(lease)])
            .await?;
        Ok(row.as_ref().map(read_leadership))
    }

    /// Extends `leadership` by `lease` from the database's now. False when it expired or another
    /// holder took over: stop sweeping at once.
    pub async fn renew_leadership(
        &self,
        leadership: &Leadership,
        lease: Duration,
    ) -> Result<bool, Error> {
        let client = self.client().await?;
        let rows = RENEW_LEADERSHIP
            .query(
                &client,
                &[
                    &leadership.name,
                    &leadership.holder,
                    &leadership.epoch.0,
                    &millis(lease),
                ],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Ends `leadership` now, so that another coordinator can take over at once. False when it
    /// had already passed to another holder.
    pub async fn resign_leadership(&self, leadership: &Leadership) -> Result<bool, Error> {
        let client = self.client().await?;
        let rows = RESIGN_LEADERSHIP
            .query(
                &client,
                &[&leadership.name, &leadership.holder, &leadership.epoch.0],
            )
            .await?;
        Ok(!rows.is_empty())
    }
}

fn read_leadership(row: &Row) -> Leadership {
    Leadership {
        name: row.get("name"),
        holder: row.get("holder"),
        epoch: LeaderEpoch(row.get("epoch")),
        expires_at: row.get("expires_at"),
    }
}
