//! Schedules (issue 20) with the real binaries: two coordinators, the leader SIGSTOPped and
//! continued past its leadership, a schedule firing every second for a minute: exactly one run
//! per fire time, none missed. Then both coordinators stopped for ten seconds: a schedule that
//! skips missed fires runs none of them, one that catches up three runs the latest three.
//!
//! `cargo test -p leasehold-fault-tests --test schedules`.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use leasehold_fault_tests::api;
use leasehold_fault_tests::cluster::{Cluster, SCHEDULE_GRACE, WorkerOpts};
use leasehold_fault_tests::scenario::{self, FINISH_DEADLINE, Line, SCENARIO_LIMIT, bounded};
use leasehold_proto::v1;
use leasehold_testkit::wait_for;
use nix::sys::signal::Signal;

/// How long the ticking schedule fires.
const TICKING: Duration = Duration::from_secs(60);
/// How long no coordinator runs in the second part.
const OUTAGE: Duration = Duration::from_secs(10);

fn every_second(id: &str, catch_up: &str) -> String {
    format!(
        "id: {id}\nnodes:\n  - {{id: a, kind: noop}}\nschedules:\n  \
         - {{id: tick, cron: '* * * * * *', overlap: allow, catch_up: {catch_up}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fire_time_starts_one_run_across_a_leader_stop_and_catch_up_follows_its_policy() {
    let _alone = scenario::one_at_a_time().await;
    bounded("schedules", SCENARIO_LIMIT + TICKING + OUTAGE, async {
        let mut c = Cluster::start(
            "schedules",
            leasehold_fault_tests::bins!(),
            2,
            &[WorkerOpts::default(), WorkerOpts::default()],
        )
        .await;
        let line = ticking_through_a_leader_stop(&mut c).await;
        catching_up_after_an_outage(&mut c).await;
        c.conclude(line).await;
    })
    .await;
}

async fn apply(c: &Cluster, yaml: String) {
    let (leader, ..) = c.wait_leader(c.timings.takeover_bound()).await;
    let other = c.coordinators().into_iter().find(|&id| id != leader);
    let mut clients = api::clients(c, other.unwrap_or(leader)).await;
    clients
        .automations
        .apply_automation(v1::ApplyAutomationRequest {
            spec: Some(v1::SpecSource {
                source: Some(v1::spec_source::Source::Text(yaml)),
            }),
        })
        .await
        .expect("apply the automation");
}

/// Stops a schedule firing, through the store (the coordinators may be stopped).
async fn pause(c: &Cluster, automation: &str) {
    c.sql
        .execute(
            "UPDATE schedules SET paused = true WHERE automation_id = $1",
            &[&automation],
        )
        .await
        .expect("pause the schedule");
}

/// A fire time of a schedule's runs.
#[derive(Debug, PartialEq)]
struct Fired {
    at: DateTime<Utc>,
    /// Runs started for it.
    runs: i64,
    /// How late after its time it was decided.
    late: Duration,
    /// Decided past the grace, and kept by the catch-up policy.
    caught_up: bool,
}

/// Each fire time of `automation`'s runs, oldest first.
async fn fires(c: &Cluster, automation: &str) -> Vec<Fired> {
    c.sql
        .query(
            "SELECT r.scheduled_for, count(*) AS runs,
                    max(extract(epoch FROM f.decided_at - f.fire_at))::float8 AS late,
                    bool_or(f.caught_up) AS caught_up
             FROM runs r
             JOIN schedule_fires f ON f.automation_id = r.automation_id
                  AND f.schedule_id = r.schedule_id AND f.fire_at = r.scheduled_for
             WHERE r.automation_id = $1 AND r.trigger = 'schedule'
             GROUP BY r.scheduled_for ORDER BY r.scheduled_for",
            &[&automation],
        )
        .await
        .expect("fires")
        .iter()
        .map(|row| Fired {
            at: row.get(0),
            runs: row.get(1),
            late: Duration::from_secs_f64(row.get::<_, f64>(2).max(0.0)),
            caught_up: row.get(3),
        })
        .collect()
}

/// The fire times missing between consecutive ones, which fire every second.
fn gaps(times: &[DateTime<Utc>]) -> Vec<(DateTime<Utc>, i64)> {
    times
        .windows(2)
        .filter_map(|w| {
            let missing = (w[1] - w[0]).num_seconds() - 1;
            (missing > 0).then_some((w[0], missing))
        })
        .collect()
}

async fn ticking_through_a_leader_stop(c: &mut Cluster) -> Line {
    let t = c.timings;
    let started = Utc::now();
    apply(c, every_second("ticker", "100")).await;
    // A third of the minute fires under the first leader.
    wait_for(TICKING, "twenty fires", async || {
        (fires(c, "ticker").await.len() >= 20).then_some(())
    })
    .await;
    let (leader, holder, _) = c.wait_leader(t.takeover_bound()).await;
    c.signal_coordinator(leader, Signal::SIGSTOP);
    wait_for(
        t.takeover_bound() + t.margin,
        "another leader",
        async || c.leader().await.filter(|(h, _)| *h != holder).map(|_| ()),
    )
    .await;
    // The former leader wakes to a leadership that moved on.
    c.signal_coordinator(leader, Signal::SIGCONT);
    let until = started + TimeDelta::from_std(TICKING).expect("short");
    wait_for(TICKING + t.margin, "a minute of fires", async || {
        let last = fires(c, "ticker").await.last().map(|f| f.at)?;
        (last >= until).then_some(())
    })
    .await;
    pause(c, "ticker").await;
    let fired = fires(c, "ticker").await;
    let times: Vec<_> = fired.iter().map(|f| f.at).collect();
    let doubled = fired.iter().filter(|f| f.runs != 1).count();
    assert_eq!(doubled, 0, "one run per fire time: {fired:?}");
    assert_eq!(gaps(&times), vec![], "no fire time missed");
    let first = times.first().copied().expect("fires");
    assert!(
        first <= started + TimeDelta::seconds(2),
        "the first fire is the first second after the apply: {first} vs {started}"
    );
    // Fires due while no leader ran (a handover can outlast the 2 s grace) are caught up by the
    // policy (`catch_up: 100`), so none is missing; they may be marked `caught_up`.
    let late = fired.iter().map(|f| f.late).max().unwrap_or_default();
    let runs = c
        .sql
        .query(
            "SELECT run_id FROM runs WHERE automation_id = 'ticker'",
            &[],
        )
        .await
        .expect("runs")
        .iter()
        .map(|row| leasehold_core::ids::RunId(row.get(0)))
        .collect::<Vec<_>>();
    let lost = c.settle(&runs, "completed", FINISH_DEADLINE).await;
    eprintln!(
        "schedules: {} fire times over {:.0}s, each one run; latest decided {:.1}s after its time \
         (across the leader's stop)",
        times.len(),
        (times[times.len() - 1] - first).num_milliseconds() as f64 / 1000.0,
        late.as_secs_f64(),
    );
    Line {
        scenario: "schedules",
        runs: runs.len(),
        lost,
        double_completed: 0,
        recovery: late,
        // A handover, and a pass after it.
        bound: t.takeover_bound() + t.sweep + t.margin,
        took: Duration::ZERO,
    }
}

async fn catching_up_after_an_outage(c: &mut Cluster) {
    let t = c.timings;
    apply(c, every_second("skipper", "skip_missed")).await;
    apply(c, every_second("catcher", "3")).await;
    wait_for(FINISH_DEADLINE, "both schedules firing", async || {
        let both = !fires(c, "skipper").await.is_empty() && !fires(c, "catcher").await.is_empty();
        both.then_some(())
    })
    .await;
    for id in c.coordinators() {
        c.signal_coordinator(id, Signal::SIGSTOP);
    }
    tokio::time::sleep(OUTAGE).await;
    for id in c.coordinators() {
        c.signal_coordinator(id, Signal::SIGCONT);
    }
    let back = Utc::now();
    wait_for(
        t.takeover_bound() + FINISH_DEADLINE,
        "fires after the outage",
        async || {
            let last = fires(c, "catcher").await.last().map(|f| f.at)?;
            (last > back + TimeDelta::seconds(3)).then_some(())
        },
    )
    .await;
    pause(c, "skipper").await;
    pause(c, "catcher").await;

    // Skipping: no missed fire ran, and a gap over the outage.
    let skipped = fires(c, "skipper").await;
    assert!(skipped.iter().all(|f| f.runs == 1), "one run per fire time");
    assert!(
        skipped.iter().all(|f| !f.caught_up),
        "no missed fire ran: {skipped:?}"
    );
    let times: Vec<_> = skipped.iter().map(|f| f.at).collect();
    let gaps = gaps(&times);
    assert_eq!(gaps.len(), 1, "one gap, over the outage: {gaps:?}");
    let missing = gaps[0].1;
    let floor = i64::try_from((OUTAGE - SCHEDULE_GRACE).as_secs()).expect("small") - 2;
    assert!(
        missing >= floor,
        "{missing} fires skipped, at least {floor}"
    );

    // Catching up three: exactly three missed fires ran, consecutive, each later than the
    // grace, right after a gap (the earlier missed ones skipped) and right before the first
    // fire on time after the outage.
    let caught = fires(c, "catcher").await;
    assert!(caught.iter().all(|f| f.runs == 1), "one run per fire time");
    let kept: Vec<usize> = caught
        .iter()
        .enumerate()
        .filter(|(_, f)| f.caught_up)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(kept.len(), 3, "three missed fires ran: {caught:?}");
    assert!(
        kept.windows(2).all(|w| w[1] == w[0] + 1),
        "the three are consecutive: {kept:?}"
    );
    assert!(kept.iter().all(|&i| caught[i].late > SCHEDULE_GRACE));
    let first = kept[0];
    assert!(first > 0, "fires before the outage");
    let before = (caught[first].at - caught[first - 1].at).num_seconds();
    assert!(
        before > 1,
        "the earlier missed fires were skipped: {caught:?}"
    );
    let after = &caught[kept[2] + 1];
    assert_eq!((after.at - caught[kept[2]].at).num_seconds(), 1);
    eprintln!(
        "schedules: after a {}s outage, skip_missed skipped {missing} fires and ran none late; \
         catch_up 3 ran the latest three missed fires ({}s late at most)",
        OUTAGE.as_secs(),
        caught
            .iter()
            .map(|f| f.late)
            .max()
            .unwrap_or_default()
            .as_secs()
    );
}
