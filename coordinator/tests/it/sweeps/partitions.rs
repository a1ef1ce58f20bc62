//! Partition upkeep: monthly partitions of `run_events`, created ahead and idempotently.

use chrono::{Datelike, Months, NaiveDate, Utc};
use leasehold_coordinator::sweeps::{Partitions, PartitionsOutcome, Pass, Sweep};
use leasehold_core::store::Store;
use leasehold_testkit::fixtures::{setup, setup_diamond};

use super::{config, lead, pass};

#[tokio::test]
async fn partition_upkeep_creates_partitions_ahead_and_is_idempotent() {
    let b = setup().await;
    let leader = lead(&b, "c1").await;
    let before = b.partitions().await;

    // The migration created this month's partitions and the next ones.
    let today = pass(&b, Partitions, &leader, None).await;
    assert_eq!(today, PartitionsOutcome::default());

    let later = Utc::now() + chrono::TimeDelta::days(200);
    let ahead = pass(&b, Partitions, &leader, Some(later)).await;
    assert_eq!(
        ahead,
        PartitionsOutcome {
            created: 3,
            dropped: 0
        }
    );
    assert_eq!(b.partitions().await, before + 3);
    let again = pass(&b, Partitions, &leader, Some(later)).await;
    assert_eq!(again, PartitionsOutcome::default());
    assert_eq!(b.partitions().await, before + 3);
}

/// Upkeep lapsed for two months past the partitions made ahead, so the events of those months
/// sat in the default partition, which made creating their months fail for good. One pass, as
/// the runtime role (which owns nothing), creates every month from the first of the outage on and
/// moves the stray events into them.
#[tokio::test]
async fn upkeep_after_a_two_month_outage_creates_every_month_and_moves_the_stray_events() {
    let (b, automation) = setup_diamond("outage").await;
    let run_id = b.start(&automation).await;
    let leader = lead(&b, "c1").await;
    let ahead = config().partition_months_ahead;
    // The middle of the months after the ones made ahead: the outage's two months.
    let this_month = Utc::now().date_naive().with_day(15).expect("the 15th");
    let outage: Vec<NaiveDate> = (0..2)
        .map(|i| this_month + Months::new(ahead + i))
        .collect();
    for (seq, day) in (100_i64..).zip(&outage) {
        let at = day.and_hms_opt(12, 0, 0).expect("noon").and_utc();
        b.sql
            .execute(
                "INSERT INTO run_events (run_id, seq, tenant_id, event, occurred_at, epoch)
                 VALUES ($1, $2, $3, 'stray', $4, 0)",
                &[&run_id.0, &seq, &b.tenant.as_str(), &at],
            )
            .await
            .expect("an event of a month without a partition");
    }
    assert_eq!(strays(&b).await, 2, "both landed in the default partition");

    let back = outage[1].and_hms_opt(12, 0, 0).expect("noon").and_utc();
    let outcome = pass(&b, Partitions, &leader, Some(back)).await;

    // The outage's two months, and the months ahead of the second one.
    assert_eq!(
        outcome,
        PartitionsOutcome {
            created: u64::from(1 + ahead),
            dropped: 0
        }
    );
    assert_eq!(strays(&b).await, 0, "the default partition is empty again");
    for day in &outage {
        let partition = format!("run_events_{}", day.format("%Y_%m"));
        let held: i64 = b
            .sql
            .query_one(
                "SELECT count(*) FROM run_events
                 WHERE tableoid = to_regclass($1) AND event = 'stray'",
                &[&partition],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(held, 1, "{partition} holds its month's event");
    }
    let names = b.event_names(run_id).await;
    assert_eq!(
        names.iter().filter(|e| *e == "stray").count(),
        2,
        "{names:?}"
    );
    assert_eq!(
        pass(&b, Partitions, &leader, Some(back)).await,
        PartitionsOutcome::default()
    );
}

/// A coordinator whose session runs in another time zone creates months with the same bounds as
/// the migration did: a bound in another zone would overlap its neighbour (and upkeep would fail
/// for good) or leave a gap.
#[tokio::test]
async fn partitions_made_from_a_session_in_another_time_zone_line_up_with_the_others() {
    let b = setup().await;
    let leader = lead(&b, "c1").await;
    let separator = if b.db.url().contains('?') { '&' } else { '?' };
    // UTC+14: its midnight is the day before's 10:00 in UTC.
    let far_east = format!(
        "{}{separator}options=-c%20TimeZone%3DPacific%2FKiritimati",
        b.db.url()
    );
    let store = Store::connect_unchecked(&far_east, 1).expect("pool");
    let later = Utc::now() + chrono::TimeDelta::days(400);
    let outcome = Partitions
        .run_once(Pass::new(&store, &leader, &config(), Some(later)))
        .await
        .expect("upkeep from the far east");
    assert_eq!(
        outcome,
        PartitionsOutcome {
            created: 3,
            dropped: 0
        }
    );

    // Every bound, read in the migrating session's zone, is the first of a month at midnight.
    let bounds: Vec<String> = b
        .sql
        .query(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'run_events'::regclass
               AND c.oid <> 'run_events_default'::regclass",
            &[],
        )
        .await
        .expect("bounds")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(bounds.len() >= 6, "{bounds:?}");
    for bound in &bounds {
        assert_eq!(
            bound.matches("-01 00:00:00").count(),
            2,
            "both ends of {bound} are a month's first midnight"
        );
    }
}

async fn strays(b: &leasehold_testkit::fixtures::Bundle) -> i64 {
    b.sql
        .query_one("SELECT count(*) FROM run_events_default", &[])
        .await
        .expect("count")
        .get(0)
}
