//! The Grafana dashboard (deploy/grafana/leasehold.json) asks only for metrics docs/metrics.md
//! documents, and shows what an operator watches first; every documented metric is one the
//! binaries record.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use super::render::root;

/// `leasehold_…` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("leasehold_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// The documented metrics: the first cell of each table row of docs/metrics.md, with its type.
fn documented() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(root().join("docs/metrics.md")).expect("docs/metrics.md");
    doc.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells
                .get(1)?
                .strip_prefix("`leasehold_")?
                .strip_suffix('`')?;
            Some((format!("leasehold_{name}"), (*cells.get(2)?).to_owned()))
        })
        .collect()
}

/// Every query of the dashboard, rows' panels included.
fn queries(panels: &[Value]) -> Vec<String> {
    panels
        .iter()
        .flat_map(|panel| {
            let own = panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| t["expr"].as_str().expect("a PromQL expr").to_owned());
            let nested = queries(panel["panels"].as_array().map_or(&[][..], Vec::as_slice));
            own.chain(nested).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_dashboard_uses_only_documented_metrics_and_shows_the_essentials() {
    let text = std::fs::read_to_string(root().join("deploy/grafana/leasehold.json"))
        .expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "leasehold");
    let queries = queries(dashboard["panels"].as_array().expect("panels"));
    let documented = documented();
    assert!(
        documented.len() > 20,
        "the tables of docs/metrics.md were read"
    );
    let known: BTreeSet<String> = documented
        .iter()
        .flat_map(|(name, kind)| {
            let mut names = vec![name.clone()];
            if kind == "histogram" {
                names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
            }
            names
        })
        .collect();
    let used: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    let unknown: Vec<_> = used.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard asks for undocumented metrics: {unknown:?}"
    );

    // Throughput, queue depth, latency percentiles, lease losses, sweep actions.
    for essential in [
        "leasehold_worker_runs_left_total",
        "leasehold_queue_runs",
        "leasehold_worker_node_duration_seconds_bucket",
        "leasehold_worker_lease_losses_total",
        "leasehold_sweep_actions_total",
    ] {
        assert!(
            used.contains(essential),
            "the dashboard does not show {essential}"
        );
    }
    assert!(
        queries
            .iter()
            .any(|q| q.contains("histogram_quantile(0.99")),
        "latency percentiles"
    );
}

/// The metric names the code records or describes: string literals in the crates' sources.
fn recorded() -> BTreeSet<String> {
    fn walk(dir: &Path, names: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("source folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, names);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let source = std::fs::read_to_string(&path).expect("source");
                for quoted in source.split('"').skip(1).step_by(2) {
                    if quoted.starts_with("leasehold_") && metric_names(quoted).len() == 1 {
                        names.insert(quoted.to_owned());
                    }
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    for crate_dir in ["worker/src", "coordinator/src", "core/src", "cli/src"] {
        walk(&root().join(crate_dir), &mut names);
    }
    names
}

#[test]
fn every_documented_metric_is_recorded_by_the_code() {
    let recorded = recorded();
    let missing: Vec<_> = documented()
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| !recorded.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/metrics.md documents metrics no code records: {missing:?}"
    );
}
