//! `leasehold retention show|set|clear`, and a compacted run as `run show` tells it.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use leasehold_core::ids::TenantId;
use leasehold_core::retention::RetentionWindows;
use leasehold_core::store::{NewToken, RetentionCutoffs, Role};

use super::{leasehold_at, setup};

#[tokio::test(flavor = "multi_thread")]
async fn retention_is_shown_set_refused_by_field_and_cleared() {
    let b = setup("retention").await;
    let shown = b.leasehold(&["retention", "show", "--json"]).await.json();
    assert_eq!(shown["compact_after_seconds"], 7 * 86_400);
    assert_eq!(shown["delete_after_seconds"], 90 * 86_400);
    assert_eq!(shown["inherited"], true);

    let set = b
        .leasehold(&[
            "retention",
            "set",
            "--compact-after",
            "1d",
            "--delete-after",
            "30d",
            "--json",
        ])
        .await
        .json();
    assert_eq!(set["compact_after_seconds"], 86_400);
    assert_eq!(set["delete_after_seconds"], 30 * 86_400);
    assert_eq!(set["inherited"], false);
    assert_eq!(set["updated_by"], "cli-test");
    let text = b.leasehold(&["retention", "show"]).await.ok();
    assert!(
        text.contains("for 1d0h, and are deleted after 30d0h") && text.contains("set by cli-test"),
        "{text}"
    );

    // Deleted before compacted: refused by name, and nothing changes.
    let bad = b
        .leasehold(&[
            "retention",
            "set",
            "--compact-after",
            "30d",
            "--delete-after",
            "1d",
        ])
        .await;
    assert_ne!(bad.code, Some(0));
    assert!(
        bad.stderr.starts_with("error: INVALID_ARGUMENT")
            && bad.stderr.contains("delete_after_seconds"),
        "{}",
        bad.stderr
    );
    let bad = b
        .leasehold(&[
            "retention",
            "set",
            "--compact-after",
            "1m",
            "--delete-after",
            "1d",
        ])
        .await;
    assert!(
        bad.stderr.contains("compact_after_seconds"),
        "{}",
        bad.stderr
    );
    let kept = b.leasehold(&["retention", "show", "--json"]).await.json();
    assert_eq!(kept["compact_after_seconds"], 86_400);

    // A viewer sees the windows and may not change them.
    let (_, viewer) = b
        .store
        .create_token(&NewToken {
            tenant: TenantId::default(),
            role: Role::Viewer,
            name: Some("viewer".to_owned()),
            expires_in: None,
        })
        .await
        .expect("token");
    let viewer = viewer.expose();
    leasehold_at(&b.endpoint, Some(&viewer), &["retention", "show"])
        .await
        .ok();
    let refused = leasehold_at(&b.endpoint, Some(&viewer), &["retention", "clear"]).await;
    assert!(
        refused.stderr.starts_with("error: PERMISSION_DENIED"),
        "{}",
        refused.stderr
    );

    let cleared = b.leasehold(&["retention", "clear", "--json"]).await.json();
    assert_eq!(cleared["inherited"], true);
    assert_eq!(cleared["compact_after_seconds"], 7 * 86_400);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_show_says_a_run_was_compacted() {
    let b = setup("compacted").await;
    b.apply_hello().await;
    let run_id = b.start("hello").await;
    b.complete(&["a", "b"]).await;
    let before = b
        .leasehold(&["run", "show", &run_id, "--json"])
        .await
        .json();
    assert!(before["compacted_at"].is_null());

    let leader = b
        .store
        .try_acquire_leadership("sweeps", "test", Duration::from_secs(60))
        .await
        .expect("lead")
        .expect("free");
    let week_on = Utc::now() + TimeDelta::days(8);
    let cutoffs = RetentionCutoffs {
        default: RetentionWindows::default().cutoffs(week_on),
        tenants: Vec::new(),
    };
    let compacted = b
        .store
        .compact_finished_runs(&leader, &cutoffs, 10)
        .await
        .expect("compact");
    assert_eq!(compacted, 1);

    let after = b
        .leasehold(&["run", "show", &run_id, "--json"])
        .await
        .json();
    assert!(after["compacted_at"].is_string(), "{after}");
    assert_eq!(after["status"], "completed");
    let text = b.leasehold(&["run", "show", &run_id]).await.ok();
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("compacted")
            && l.contains("inputs and node outputs were dropped")),
        "{text}"
    );
}
