//! History retention: finished runs compacted past their hot window and deleted past their
//! retention, each tenant by its windows; and the event partitions of months no run needs any
//! more dropped by partition upkeep.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use leasehold_coordinator::sweeps::{
    self, Partitions, PartitionsOutcome, Retention, RetentionOutcome,
};
use leasehold_core::ids::{AutomationId, RunId, TenantId};
use leasehold_core::retention::RetentionWindows;
use leasehold_core::store::RequestError;
use leasehold_testkit::fixtures::Bundle;
use uuid::Uuid;

use super::{idle_until, lead, ms, pass, setup_leading};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const HOUR: Duration = Duration::from_secs(60 * 60);

/// A run of `automation` in `tenant`, finished as `status` `ago`, with inputs and node `a`'s
/// output to drop. Returns it with its finish time.
async fn finished_run(
    b: &Bundle,
    tenant: &str,
    automation: &AutomationId,
    status: &str,
    ago: Duration,
) -> (RunId, DateTime<Utc>) {
    let run_id = RunId::new();
    let row = b
        .sql
        .query_one(
            "INSERT INTO runs (run_id, tenant_id, automation_id, automation_version, trigger,
                               status, inputs, finished_at, stop_kind)
             VALUES ($1, $2, $3, 1, 'api', $4, '{\"secret\": \"input\"}',
                     now() - $5 * interval '1 second',
                     CASE WHEN $4 = 'completed' THEN NULL ELSE 'cancelled' END)
             RETURNING finished_at",
            &[
                &run_id.0,
                &tenant,
                &automation.as_str(),
                &status,
                &(ago.as_secs_f64()),
            ],
        )
        .await
        .expect("a finished run");
    b.sql
        .execute(
            "INSERT INTO run_nodes (run_id, node_id, status, attempts, output, epoch)
             VALUES ($1, 'a', 'completed', 1, '{\"secret\": \"output\"}', 1)",
            &[&run_id.0],
        )
        .await
        .expect("its node");
    (run_id, row.get(0))
}

/// Where a run stands: gone (`None`), or whether it still has its inputs and node output, and
/// when it was compacted.
async fn standing(b: &Bundle, run_id: RunId) -> Option<(bool, bool, Option<DateTime<Utc>>)> {
    let row = b
        .sql
        .query_opt(
            "SELECT r.inputs <> '{}'::jsonb AS inputs,
                    EXISTS (SELECT 1 FROM run_nodes n
                            WHERE n.run_id = r.run_id AND n.output IS NOT NULL) AS output,
                    r.compacted_at
             FROM runs r WHERE r.run_id = $1",
            &[&run_id.0],
        )
        .await
        .expect("read run")?;
    Some((row.get(0), row.get(1), row.get(2)))
}

fn after(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).expect("small")
}

#[tokio::test]
async fn finished_runs_are_compacted_then_deleted_and_nothing_inside_the_window_is_touched() {
    let (b, leader, automation) = setup_leading("kept").await;
    let tenant = b.tenant.as_str();
    let windows = RetentionWindows::default();
    let (old, _) = finished_run(&b, tenant, &automation, "completed", 100 * DAY).await;
    let (week, week_finished) =
        finished_run(&b, tenant, &automation, "cancelled", 7 * DAY + HOUR).await;
    let (fresh, _) = finished_run(&b, tenant, &automation, "completed", DAY).await;
    let queued = b.start(&automation).await;
    let blocked = b.start(&automation).await;
    b.sql
        .execute(
            "UPDATE runs SET created_at = now() - interval '200 days',
                             inputs = '{\"secret\": \"input\"}' WHERE run_id = ANY($1)",
            &[&vec![queued.0, blocked.0]],
        )
        .await
        .expect("age the unfinished runs");
    b.sql
        .execute(
            "UPDATE runs SET status = 'blocked', stop_kind = 'poisoned', queue_reason = NULL
             WHERE run_id = $1",
            &[&blocked.0],
        )
        .await
        .expect("block one");

    // Up to the week-old run's horizon, the only run past its window is the 100-day-old one.
    let horizon = week_finished + after(windows.compact_after);
    let first = pass(&b, Retention, &leader, Some(horizon - ms(1))).await;
    assert_eq!(
        first,
        RetentionOutcome {
            compacted: 1,
            deleted: 1
        },
        "the old run is compacted and deleted in one pass"
    );
    assert_eq!(standing(&b, old).await, None);
    idle_until(horizon, "", async |now| {
        pass(&b, Retention, &leader, Some(now)).await
    })
    .await;
    assert_eq!(standing(&b, week).await, Some((true, true, None)));

    let outcome = pass(&b, Retention, &leader, Some(horizon + ms(1))).await;
    assert_eq!(
        outcome,
        RetentionOutcome {
            compacted: 1,
            deleted: 0
        }
    );
    let (inputs, output, compacted_at) = standing(&b, week).await.expect("kept");
    assert!(!inputs && !output, "inputs and outputs dropped");
    assert!(compacted_at.is_some());
    let record = b.run(week).await;
    assert_eq!(record.compacted_at, compacted_at, "the run says it");
    assert_eq!(
        b.checkpoint(week).await[0].status.as_str(),
        "completed",
        "the node keeps its status"
    );
    for untouched in [fresh, queued, blocked] {
        assert_eq!(
            standing(&b, untouched).await,
            Some((true, untouched == fresh, None)),
            "{untouched} is inside its window or unfinished"
        );
    }
}

#[tokio::test]
async fn a_tenant_with_windows_of_its_own_is_swept_by_them_and_others_by_the_default() {
    let (b, leader, automation) = setup_leading("own").await;
    // A second tenant with the same automation.
    for table in ["automations", "automation_versions"] {
        b.sql
            .execute(
                &format!(
                    "INSERT INTO {table} SELECT (jsonb_populate_record(NULL::{table},
                         to_jsonb(t) || jsonb_build_object('tenant_id', 'other'))).*
                     FROM {table} t WHERE tenant_id = $1"
                ),
                &[&b.tenant.as_str()],
            )
            .await
            .expect("copy the automation");
    }
    let short = RetentionWindows {
        compact_after: HOUR,
        delete_after: 2 * HOUR,
    };
    let set = b
        .store
        .set_tenant_retention(&TenantId::from("other"), Some(short), "ops@example.com")
        .await
        .expect("set")
        .expect("stands");
    assert_eq!(set.windows, short);
    assert_eq!(set.updated_by, "ops@example.com");

    let (mine, _) = finished_run(&b, b.tenant.as_str(), &automation, "completed", 3 * HOUR).await;
    let (theirs_old, _) = finished_run(&b, "other", &automation, "completed", 3 * HOUR).await;
    let (theirs, _) = finished_run(
        &b,
        "other",
        &automation,
        "completed",
        HOUR + Duration::from_secs(60),
    )
    .await;
    let outcome = pass(&b, Retention, &leader, None).await;
    assert_eq!(
        outcome,
        RetentionOutcome {
            compacted: 2,
            deleted: 1
        }
    );
    assert_eq!(standing(&b, mine).await, Some((true, true, None)));
    assert_eq!(standing(&b, theirs_old).await, None);
    assert!(matches!(
        standing(&b, theirs).await,
        Some((false, false, Some(_)))
    ));

    // Cleared, the tenant has the default windows again.
    let cleared = b
        .store
        .set_tenant_retention(&TenantId::from("other"), None, "ops@example.com")
        .await
        .expect("clear");
    assert_eq!(cleared, None);
    assert_eq!(
        b.store
            .tenant_retention(&TenantId::from("other"))
            .await
            .expect("read"),
        None
    );
}

#[tokio::test]
async fn a_compacted_run_cannot_be_recovered_and_a_former_leader_changes_nothing() {
    let (b, old, automation) = setup_leading("former").await;
    let (failed, finished) =
        finished_run(&b, b.tenant.as_str(), &automation, "failed", 8 * DAY).await;
    b.expire_leadership(sweeps::LEADER_NAME_DEFAULT, Duration::from_millis(1))
        .await;
    let new = lead(&b, "c2").await;
    let past = finished + after(100 * DAY);

    assert_eq!(
        pass(&b, Retention, &old, Some(past)).await,
        RetentionOutcome::default()
    );
    assert_eq!(standing(&b, failed).await, Some((true, true, None)));
    assert_eq!(
        pass(&b, Retention, &new, Some(finished + after(8 * DAY) - ms(1))).await,
        RetentionOutcome {
            compacted: 1,
            deleted: 0
        }
    );
    let refused = b
        .store
        .recover_run(&b.tenant, failed, "try again", "ops", None)
        .await
        .expect_err("a compacted run is not recovered");
    assert!(
        matches!(refused, RequestError::Compacted { run_id, .. } if run_id == failed),
        "{refused}"
    );
    assert!(refused.to_string().contains("compacted"), "{refused}");
    assert_eq!(b.status(failed).await.as_str(), "failed");
}

/// A UUIDv7 of noon on `day`: a run started then.
fn run_of(day: NaiveDate) -> Uuid {
    let at = day.and_hms_opt(12, 0, 0).expect("noon").and_utc();
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        u64::try_from(at.timestamp()).expect("after 1970"),
        0,
    );
    Uuid::new_v7(ts)
}

async fn event_at(b: &Bundle, run_id: Uuid, day: NaiveDate) {
    let at = day.and_hms_opt(12, 0, 0).expect("noon").and_utc();
    b.sql
        .execute(
            "INSERT INTO run_events (run_id, seq, tenant_id, event, occurred_at, epoch)
             VALUES ($1, 1, $2, 'run_started', $3, 0)",
            &[&run_id, &b.tenant.as_str(), &at],
        )
        .await
        .expect("an event");
}

async fn has_partition(b: &Bundle, month: NaiveDate) -> bool {
    let name = format!("run_events_{}", month.format("%Y_%m"));
    b.sql
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .expect("lookup")
        .get(0)
}

#[tokio::test]
async fn a_past_months_event_partition_is_dropped_once_no_run_has_events_in_it() {
    let (b, leader, automation) = setup_leading("months").await;
    let month = |m: u32| NaiveDate::from_ymd_opt(2020, m, 1).expect("a month");
    let mid = |m: u32| NaiveDate::from_ymd_opt(2020, m, 15).expect("a day");
    b.sql
        .execute(
            "SELECT leasehold_ensure_event_partitions('2020-01-01', 3)",
            &[],
        )
        .await
        .expect("three old months");
    // January: an event of a run that exists, with an id of today (not of January).
    let today_run = b.start(&automation).await;
    event_at(&b, today_run.0, mid(1)).await;
    // February: an event of a run that exists, started in February.
    let february_run = run_of(mid(2));
    b.sql
        .execute(
            "INSERT INTO runs (run_id, tenant_id, automation_id, automation_version, trigger,
                               status, finished_at)
             VALUES ($1, $2, $3, 1, 'api', 'completed', now())",
            &[&february_run, &b.tenant.as_str(), &automation.as_str()],
        )
        .await
        .expect("a February run");
    event_at(&b, february_run, mid(2)).await;
    // March: events of a run that is gone only.
    event_at(&b, run_of(mid(3)), mid(3)).await;

    // A former leader drops nothing.
    let gone = b.leader_of("other-role", "c9").await;
    b.expire_leadership("other-role", Duration::from_millis(1))
        .await;
    assert_eq!(
        b.store
            .drop_event_partition(&gone, month(3))
            .await
            .expect("a fenced call"),
        None
    );

    let outcome = pass(&b, Partitions, &leader, None).await;
    assert_eq!(
        outcome,
        PartitionsOutcome {
            created: 0,
            dropped: 1
        }
    );
    assert!(has_partition(&b, month(1)).await, "a run still has January");
    assert!(
        has_partition(&b, month(2)).await,
        "a run still has February"
    );
    assert!(!has_partition(&b, month(3)).await, "March is dropped");
    // This month and the next ones are never candidates.
    let this_month = b.store.event_partition_months().await.expect("months");
    assert!(this_month.len() >= 3 + 2, "{this_month:?}");

    b.sql
        .execute(
            "DELETE FROM runs WHERE run_id = ANY($1)",
            &[&vec![today_run.0, february_run]],
        )
        .await
        .expect("delete both runs");
    let outcome = pass(&b, Partitions, &leader, None).await;
    assert_eq!(outcome.dropped, 2);
    assert!(!has_partition(&b, month(1)).await);
    assert!(!has_partition(&b, month(2)).await);
    let events: i64 = b
        .sql
        .query_one(
            "SELECT count(*) FROM run_events WHERE occurred_at < '2021-01-01'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(events, 0);
}
