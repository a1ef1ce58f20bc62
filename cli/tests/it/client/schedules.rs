//! `leasehold schedule list|pause|resume|trigger`, and a spec's schedules kept in step by apply.

use super::setup;

const NIGHTLY: &str = "\
id: nightly
nodes:
  - {id: a, kind: noop}
schedules:
  - {id: midnight, cron: '0 0 * * *', timezone: Europe/Berlin, inputs: {report: daily}}
  - {id: hourly, cron: '0 * * * *', overlap: allow, catch_up: skip_missed}
";

#[tokio::test(flavor = "multi_thread")]
async fn schedules_are_applied_listed_paused_resumed_and_triggered() {
    let b = setup("schedules").await;
    let spec = b.file("nightly.yaml", NIGHTLY);
    b.leasehold(&["automation", "apply", "-f", &spec])
        .await
        .ok();

    let listed = b.leasehold(&["schedule", "list", "--json"]).await.json();
    let listed = listed.as_array().expect("a list");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["schedule_id"], "hourly");
    assert_eq!(listed[0]["overlap"], "allow");
    assert_eq!(listed[0]["catch_up"], 0);
    assert_eq!(listed[1]["schedule_id"], "midnight");
    assert_eq!(listed[1]["timezone"], "Europe/Berlin");
    assert_eq!(listed[1]["overlap"], "skip");
    assert!(listed[1]["next_fire_at"].is_string(), "{listed:?}");

    let paused = b
        .leasehold(&[
            "schedule", "pause", "nightly", "midnight", "--reason", "holidays", "--json",
        ])
        .await
        .json();
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["pause_reason"], "holidays");
    assert!(paused["next_fire_at"].is_null());

    // By hand, paused or not: a run with the schedule's inputs, recorded as the schedule's.
    let triggered = b
        .leasehold(&[
            "schedule",
            "trigger",
            "nightly",
            "midnight",
            "--request-id",
            "r1",
            "--json",
        ])
        .await
        .json();
    assert_eq!(triggered["created"], true);
    let run_id = triggered["run_id"].as_str().expect("run id").to_owned();
    let again = b
        .leasehold(&[
            "schedule",
            "trigger",
            "nightly",
            "midnight",
            "--request-id",
            "r1",
            "--json",
        ])
        .await
        .json();
    assert_eq!(again["run_id"], run_id.as_str());
    assert_eq!(again["created"], false);
    let run = b
        .leasehold(&["run", "show", &run_id, "--json"])
        .await
        .json();
    assert_eq!(run["trigger"], "schedule");
    assert_eq!(run["schedule_id"], "midnight");
    assert!(run["scheduled_for"].is_string());
    assert_eq!(run["inputs"]["report"], "daily");
    let text = b.leasehold(&["run", "show", &run_id]).await.ok();
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("trigger") && l.contains("schedule midnight for")),
        "{text}"
    );

    let resumed = b
        .leasehold(&["schedule", "resume", "nightly", "midnight", "--json"])
        .await
        .json();
    assert_eq!(resumed["paused"], false);
    assert!(resumed["next_fire_at"].is_string());

    // A schedule the spec drops is gone.
    let one = b.file(
        "one.yaml",
        "id: nightly\nnodes:\n  - {id: a, kind: noop}\nschedules:\n  - {id: hourly, cron: '0 * * * *'}\n",
    );
    b.leasehold(&["automation", "apply", "-f", &one]).await.ok();
    let listed = b.leasehold(&["schedule", "list", "--json"]).await.json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));

    let missing = b
        .leasehold(&["schedule", "pause", "nightly", "midnight"])
        .await;
    assert!(
        missing.stderr.starts_with("error: NOT_FOUND") && missing.stderr.contains("midnight"),
        "{}",
        missing.stderr
    );
    let bad = b.file(
        "bad.yaml",
        "id: nightly\nnodes:\n  - {id: a, kind: noop}\nschedules:\n  - {cron: '0 25 * * *'}\n",
    );
    let refused = b.leasehold(&["automation", "apply", "-f", &bad]).await;
    assert!(
        refused.stderr.starts_with("error: INVALID_ARGUMENT")
            && refused.stderr.contains("schedules[0].cron"),
        "{}",
        refused.stderr
    );
    let listed = b.leasehold(&["schedule", "list", "--json"]).await.json();
    assert_eq!(listed[0]["schedule_id"], "hourly", "nothing changed");
}
