//! Keyset listings of runs, stats and workers.

use std::collections::HashSet;
use std::time::Duration;

use leasehold_core::ids::TenantId;
use leasehold_core::run::RunStatus;
use leasehold_core::store::{Cursor, PageRequest, RequestError, RunFilter, RunRecord};
use leasehold_testkit::fixtures::{Bundle, diamond, setup, setup_diamond, setup_run, worker_info};
use uuid::Uuid;

fn ids(runs: &[RunRecord]) -> Vec<Uuid> {
    runs.iter().map(|r| r.run_id.0).collect()
}

/// Walks every page of `filter` at `size` items a page; returns the pages' lengths and the runs.
async fn walk_runs(b: &Bundle, filter: &RunFilter, size: usize) -> (Vec<usize>, Vec<Uuid>) {
    let mut page = PageRequest::first(size);
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    loop {
        let got = b
            .store
            .list_runs(&b.tenant, filter, &page)
            .await
            .expect("page");
        sizes.push(got.items.len());
        seen.extend(ids(&got.items));
        match got.next {
            // Through the token's text, as a client would hand it back.
            Some(next) => page.after = Some(Cursor::decode(&next.encode()).expect("token")),
            None => break,
        }
    }
    (sizes, seen)
}

/// The runs of the tenant matching the SQL condition, in the listing's order.
async fn expected_runs(b: &Bundle, condition: &str) -> Vec<Uuid> {
    b.sql
        .query(
            &format!(
                "SELECT run_id FROM runs WHERE tenant_id = $1 AND ({condition})
                 ORDER BY created_at DESC, run_id DESC"
            ),
            &[&b.tenant.as_str()],
        )
        .await
        .expect("expected runs")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn runs_are_paged_newest_first_without_duplicates_or_gaps() {
    let (b, automation) = setup_diamond("paged").await;
    b.queue_many(&automation, 120).await;
    // Spread creation times, three runs to a second: ties are broken by run id.
    b.sql
        .execute(
            "UPDATE runs r SET created_at = r.created_at - (s.i / 3) * interval '1 second'
             FROM (SELECT run_id, row_number() OVER (ORDER BY run_id) AS i FROM runs) s
             WHERE s.run_id = r.run_id",
            &[],
        )
        .await
        .expect("spread");

    let (sizes, seen) = walk_runs(&b, &RunFilter::default(), 50).await;
    assert_eq!(sizes, vec![50, 50, 20]);
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        120,
        "no duplicates"
    );
    assert_eq!(
        seen,
        expected_runs(&b, "true").await,
        "newest first, no gaps"
    );

    // Exactly a page's worth: the last full page says there is no more.
    let (sizes, _) = walk_runs(&b, &RunFilter::default(), 60).await;
    assert_eq!(sizes, vec![60, 60]);
    // Size 0 is the default; sizes above the cap are capped.
    let (sizes, _) = walk_runs(&b, &RunFilter::default(), 0).await;
    assert_eq!(sizes, vec![50, 50, 20]);
    let capped = PageRequest::first(1_000_000);
    assert_eq!(capped.limit(), 1000);
}

#[tokio::test]
async fn run_filters_apply_on_every_page() {
    let b = setup().await;
    let alpha = b.diamond("alpha").await;
    let beta = b.diamond("beta").await;
    b.queue_many(&alpha, 70).await;
    b.queue_many(&beta, 50).await;
    b.sql
        .batch_execute(
            "UPDATE runs r SET created_at = r.created_at - (s.i / 2) * interval '1 second',
                    status = CASE WHEN s.i % 3 = 0 THEN 'cancelled' ELSE 'queued' END,
                    concurrency_key = CASE WHEN s.i % 4 = 0 THEN 'k' END
             FROM (SELECT run_id, row_number() OVER (ORDER BY run_id) AS i FROM runs) s
             WHERE s.run_id = r.run_id",
        )
        .await
        .expect("spread and cancel");
    // Another tenant's runs never show.
    let other = TenantId::from("other");
    b.store
        .create_automation(&other, &diamond("alpha"))
        .await
        .expect("other");
    b.sql
        .execute(
            "INSERT INTO runs (run_id, tenant_id, automation_id, automation_version, trigger, status)
             SELECT gen_random_uuid(), 'other', 'alpha', 1, 'api', 'queued' FROM generate_series(1, 30)",
            &[],
        )
        .await
        .expect("other runs");
    let middle: chrono::DateTime<chrono::Utc> = b
        .sql
        .query_one(
            "SELECT created_at FROM runs WHERE tenant_id = 'default'
             ORDER BY created_at DESC, run_id DESC OFFSET 60 LIMIT 1",
            &[],
        )
        .await
        .expect("a middle time")
        .get(0);

    let cases = [
        (
            RunFilter {
                automation_id: Some(alpha.clone()),
                ..RunFilter::default()
            },
            "automation_id = 'alpha'".to_owned(),
        ),
        (
            RunFilter {
                statuses: vec![RunStatus::Cancelled],
                ..RunFilter::default()
            },
            "status = 'cancelled'".to_owned(),
        ),
        (
            RunFilter {
                automation_id: Some(beta.clone()),
                statuses: vec![RunStatus::Queued],
                ..RunFilter::default()
            },
            "automation_id = 'beta' AND status = 'queued'".to_owned(),
        ),
        (
            RunFilter {
                created_before: Some(middle),
                ..RunFilter::default()
            },
            format!("created_at < '{}'", middle.to_rfc3339()),
        ),
        (
            RunFilter {
                automation_id: Some(alpha.clone()),
                created_after: Some(middle),
                ..RunFilter::default()
            },
            format!(
                "automation_id = 'alpha' AND created_at > '{}'",
                middle.to_rfc3339()
            ),
        ),
        (
            RunFilter {
                statuses: vec![RunStatus::Failed],
                ..RunFilter::default()
            },
            "status = 'failed'".to_owned(),
        ),
        (
            RunFilter {
                statuses: vec![RunStatus::Failed, RunStatus::Cancelled, RunStatus::Failed],
                ..RunFilter::default()
            },
            "status IN ('failed', 'cancelled')".to_owned(),
        ),
        (
            RunFilter {
                automation_id: Some(alpha.clone()),
                statuses: vec![RunStatus::Queued, RunStatus::Cancelled],
                ..RunFilter::default()
            },
            "automation_id = 'alpha' AND status IN ('queued', 'cancelled')".to_owned(),
        ),
        (
            RunFilter {
                concurrency_key: Some("k".to_owned()),
                statuses: vec![RunStatus::Queued],
                ..RunFilter::default()
            },
            "concurrency_key = 'k' AND status = 'queued'".to_owned(),
        ),
        (
            RunFilter {
                automation_id: Some(beta.clone()),
                concurrency_key: Some("k".to_owned()),
                ..RunFilter::default()
            },
            "automation_id = 'beta' AND concurrency_key = 'k'".to_owned(),
        ),
    ];
    for (filter, condition) in cases {
        let want = expected_runs(&b, &condition).await;
        let (sizes, seen) = walk_runs(&b, &filter, 7).await;
        assert_eq!(seen, want, "{filter:?}");
        assert!(
            sizes.iter().rev().skip(1).all(|n| *n == 7),
            "{filter:?}: {sizes:?}"
        );
    }
    let none = b
        .store
        .list_runs(&other, &RunFilter::default(), &PageRequest::first(100))
        .await
        .expect("other tenant");
    assert_eq!(none.items.len(), 30);
}

#[tokio::test]
async fn bad_page_tokens_are_refused() {
    let (b, automation) = setup_diamond("tokens").await;
    b.queue_many(&automation, 3).await;
    for garbage in ["", "garbage", "v1:runs:notanumber:x", "v9:runs:1:x"] {
        assert!(
            matches!(Cursor::decode(garbage), Err(RequestError::BadPageToken(_))),
            "{garbage:?}"
        );
    }
    // Well formed, but not a run id.
    let not_a_run = Cursor::decode("v1:runs:1700000000000000:nope").expect("decodes");
    let page = PageRequest {
        size: 1,
        after: Some(not_a_run),
    };
    assert!(matches!(
        b.store
            .list_runs(&b.tenant, &RunFilter::default(), &page)
            .await,
        Err(RequestError::BadPageToken(_))
    ));
    // A token of the automations listing is not a position among runs.
    let automations = b
        .store
        .list_automations(&b.tenant, &PageRequest::first(1))
        .await
        .expect("automations");
    assert!(automations.next.is_none(), "one automation, one page");
    b.diamond("tokens-2").await;
    let token = b
        .store
        .list_automations(&b.tenant, &PageRequest::first(1))
        .await
        .expect("automations")
        .next
        .expect("a second page");
    let page = PageRequest {
        size: 1,
        after: Some(token.clone()),
    };
    assert!(matches!(
        b.store
            .list_runs(&b.tenant, &RunFilter::default(), &page)
            .await,
        Err(RequestError::BadPageToken(_))
    ));
    assert_eq!(Cursor::decode(&token.encode()).expect("round trip"), token);
}

#[tokio::test]
async fn stats_count_one_tenants_runs_and_its_due_backlog() {
    let (b, automation, held) = setup_run("stats").await;
    let waiting = b.start(&automation).await;
    let backoff = b.start(&automation).await;
    let paused = b.start(&automation).await;
    assert_eq!(b.claim_one("w1").await.claim.run_id(), held);
    b.pause(paused, "hold").await;
    b.update_run(waiting, "queued_at = now() - interval '90 seconds'")
        .await;
    // Waiting in backoff for an hour: queued but not due.
    b.update_run(
        backoff,
        "retry_after = now() + interval '1 hour', queued_at = now() - interval '2 hours'",
    )
    .await;
    // Another tenant's old queued run counts only there.
    let other = TenantId::from("other");
    b.store
        .create_automation(&other, &diamond("stats"))
        .await
        .expect("other");
    let foreign = b
        .store
        .start_run(&leasehold_core::store::StartRun {
            tenant: other.clone(),
            ..b.start_request(&automation)
        })
        .await
        .expect("other run")
        .run_id;
    b.update_run(foreign, "queued_at = now() - interval '1 day'")
        .await;

    let stats = b.store.stats(&b.tenant, None).await.expect("stats");
    assert_eq!(stats.runs_by_status.len(), RunStatus::ALL.len());
    assert_eq!(stats.runs_by_status["queued"], 2);
    assert_eq!(stats.runs_by_status["running"], 1);
    assert_eq!(stats.runs_by_status["paused"], 1);
    assert_eq!(stats.runs_by_status["completed"], 0);
    assert_eq!(stats.claimable_now, 1, "the run in backoff is not due");
    assert_eq!(stats.held_leases, 1);
    // No worker has registered: both queued runs wait for one.
    assert_eq!(
        stats.waiting,
        [(
            leasehold_core::routing::WaitReason::NoWorkerForQueue {
                queue: "default".into()
            },
            2
        )]
    );
    let elsewhere = b.store.stats(&b.tenant, Some("gpu")).await.expect("stats");
    assert_eq!(elsewhere.runs_by_status.values().sum::<i64>(), 0);
    assert!(elsewhere.waiting.is_empty());
    let age = stats.oldest_queued_age.expect("a due run");
    assert!(
        age >= Duration::from_secs(90) && age < Duration::from_secs(600),
        "{age:?}"
    );

    // The backoff comes due a millisecond ago: now it counts, and it is the oldest.
    b.backdate_retry(backoff, Duration::from_millis(1)).await;
    let stats = b.store.stats(&b.tenant, None).await.expect("stats");
    assert_eq!(stats.claimable_now, 2);
    assert!(stats.oldest_queued_age.expect("due") >= Duration::from_secs(7200));

    let empty = b
        .store
        .stats(&TenantId::from("nobody"), None)
        .await
        .expect("stats");
    assert_eq!(empty.runs_by_status.values().sum::<i64>(), 0);
    assert_eq!(
        (
            empty.oldest_queued_age,
            empty.claimable_now,
            empty.held_leases
        ),
        (None, 0, 0)
    );
}

#[tokio::test]
async fn workers_are_alive_only_within_their_lease() {
    let (b, automation) = setup_diamond("workers").await;
    for name in ["w-fresh", "w-silent"] {
        b.store
            .register_worker(&worker_info(name, "host-1", "0.1.0"))
            .await
            .expect("register");
    }
    b.start(&automation).await;
    b.claim_one("w-fresh").await;
    // Both state the default lease of 30 s.
    for (name, ago) in [("w-fresh", "29 seconds"), ("w-silent", "31 seconds")] {
        b.sql
            .execute(
                &format!(
                    "UPDATE workers SET last_heartbeat = now() - interval '{ago}'
                     WHERE claimant_id = $1"
                ),
                &[&name],
            )
            .await
            .expect("backdate heartbeat");
    }

    let workers = b.store.list_workers(None).await.expect("workers");
    let view: Vec<(&str, bool, i64)> = workers
        .iter()
        .map(|w| (w.claimant_id.as_str(), w.alive, w.held_runs))
        .collect();
    assert_eq!(view, vec![("w-fresh", true, 1), ("w-silent", false, 0)]);
    let fresh = &workers[0];
    assert_eq!(
        (
            fresh.host.as_str(),
            fresh.pid,
            fresh.capacity,
            fresh.draining,
            fresh.lease
        ),
        ("host-1", 42, 4, false, Some(Duration::from_secs(30)))
    );
    assert_eq!(fresh.handlers, vec!["noop"]);

    // At the fresh worker's last heartbeat, the silent one was still within its lease.
    let all_alive = b
        .store
        .list_workers(Some(fresh.last_heartbeat))
        .await
        .expect("workers")
        .iter()
        .all(|w| w.alive);
    assert!(all_alive);
}
