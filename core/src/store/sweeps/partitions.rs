//! Partition upkeep's statement: the monthly partitions of `run_events` created ahead of time,
//! under the leader lease.

use chrono::{DateTime, Utc};

use super::int;
use crate::store::leader::leader_fence;
use crate::store::query::Query;
use crate::store::{Error, Leadership, Store};

// Creates the monthly partitions of run_events ahead of time, from the month of the day given
// (today when null), so that events never land in the default partition. Fenced on the leader
// lease: two coordinators creating the same partition at once would make one of them fail.
// Null when the leadership is gone.
const ENSURE_EVENT_PARTITIONS: Query = Query {
    name: "ensure_event_partitions",
    sql: concat!(
        "\
SELECT CASE WHEN ",
        leader_fence!(3, 4),
        "
            THEN leasehold_ensure_event_partitions(
                     coalesce($1::timestamptz, now())::date, $2::int)
       END AS created"
    ),
};

pub(super) const QUERIES: &[Query] = &[ENSURE_EVENT_PARTITIONS];

impl Store {
    /// Creates, under `leader`, the monthly event partitions from the month of `now` (today
    /// when `None`) on, `months` of them, that do not exist yet; returns how many it created,
    /// or `None` when the leadership is gone and nothing was done.
    ///
    /// # Locks
    /// Creating a partition locks `run_events` briefly, and scans its default partition, which
    /// upkeep keeps empty. A month whose partition exists costs a catalog lookup only.
    pub async fn ensure_event_partitions(
        &self,
        leader: &Leadership,
        now: Option<DateTime<Utc>>,
        months: u32,
    ) -> Result<Option<u32>, Error> {
        let (name, epoch) = (leader.name(), leader.epoch().0);
        let client = self.client().await?;
        let row = ENSURE_EVENT_PARTITIONS
            .query_one(&client, &[&now, &int(months), &name, &epoch])
            .await?;
        Ok(row.get::<_, Option<i32>>("created").map(i32::unsigned_abs))
    }
}
