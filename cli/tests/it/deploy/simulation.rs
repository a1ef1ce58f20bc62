//! The cluster simulation: the base's manifests, run as a cluster would run them, with the real
//! binary and a real PostgreSQL (kubelet.rs says how a pod is run here). The migration Job runs
//! (twice: it is idempotent), the coordinators start and pass their gRPC probes, the workers are
//! scaled from the KEDA query's answer as KEDA would scale them (0, then N, then 0), and rolled
//! as their Deployment's strategy says while runs keep arriving; then no run failed, none was
//! lost, and none completed (nor had a node complete) twice.

use std::time::{Duration, Instant};

use leasehold_core::ids::TenantId;
use leasehold_core::spec;
use leasehold_core::store::Store;
use leasehold_testkit::{RUNTIME_ROLE, TestDb, fixtures};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

use super::keda::{Scaling, replicas};
use super::kubelet::Cluster;
use super::pod::{Pod, Terminated};
use super::render::rendered;

const READY: Duration = Duration::from_secs(30);
const DRAINED: Duration = Duration::from_secs(60);
/// Runs queued before the workers exist, and runs started during the rollout.
const BEFORE: usize = 40;
const DURING: usize = 40;

/// `maxSurge` or `maxUnavailable` of `replicas`: a count, or a percentage rounded up (surge) or
/// down (unavailable), as the Deployment controller resolves them.
fn resolve(value: &Value, replicas: u32, round_up: bool) -> u32 {
    match value {
        Value::Number(n) => u32::try_from(n.as_u64().expect("a count")).expect("a count"),
        Value::String(s) => {
            let percent: u32 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("not a percentage: {s}"));
            let scaled = replicas * percent;
            if round_up {
                scaled.div_ceil(100)
            } else {
                scaled / 100
            }
        }
        // The Deployment's defaults: 25 % each.
        Value::Null => resolve(&Value::from("25%"), replicas, round_up),
        other => panic!("not a count or a percentage: {other}"),
    }
}

#[test]
fn surge_rounds_up_and_unavailable_rounds_down() {
    assert_eq!(resolve(&Value::from("25%"), 3, true), 1);
    assert_eq!(resolve(&Value::from("25%"), 3, false), 0);
    assert_eq!(resolve(&Value::from("25%"), 8, false), 2);
    assert_eq!(resolve(&Value::from(2), 8, true), 2);
    assert_eq!(resolve(&Value::Null, 4, true), 1);
}

/// A Deployment's pods, which the test scales and rolls as its controller would.
struct Deployment<'c> {
    cluster: &'c Cluster,
    name: String,
    doc: &'static Value,
    pods: Vec<Pod>,
    stopping: Vec<JoinHandle<Terminated>>,
}

impl<'c> Deployment<'c> {
    fn new(cluster: &'c Cluster, name: &str) -> Self {
        Self {
            cluster,
            name: name.to_owned(),
            doc: cluster.get("Deployment", name),
            pods: Vec::new(),
            stopping: Vec::new(),
        }
    }

    fn template(&self) -> &'static Value {
        &self.doc["spec"]["template"]["spec"]
    }

    fn replicas(&self) -> u32 {
        u32::try_from(self.pods.len()).expect("a count")
    }

    async fn start_ready(&self) -> Pod {
        let pod = self.cluster.start(&self.name, self.template());
        pod.wait_ready(READY).await;
        pod
    }

    /// SIGTERM now, SIGKILL after the grace period; the pod no longer counts.
    fn stop(&mut self, pod: Pod) {
        self.stopping.push(tokio::spawn(pod.terminate()));
    }

    /// Scales to `replicas`: new pods until Ready, or the newest pods stopped (a ReplicaSet
    /// removes the youngest ready pods first).
    async fn scale(&mut self, replicas: u32) {
        while self.replicas() < replicas {
            let pod = self.start_ready().await;
            self.pods.push(pod);
        }
        while self.replicas() > replicas {
            let pod = self.pods.pop().expect("a pod");
            self.stop(pod);
        }
    }

    /// A rolling update by the Deployment's strategy: new pods up to `replicas + maxSurge`,
    /// and once they are Ready, old pods stopped down to `replicas - maxUnavailable` available,
    /// until every pod is new. Stopping pods do not count, as the controller does not count
    /// terminating pods.
    async fn roll(&mut self) {
        let strategy = &self.doc["spec"]["strategy"];
        assert_eq!(strategy["type"], "RollingUpdate", "{}", self.name);
        let replicas = self.replicas();
        let surge = resolve(&strategy["rollingUpdate"]["maxSurge"], replicas, true);
        let unavailable = resolve(
            &strategy["rollingUpdate"]["maxUnavailable"],
            replicas,
            false,
        );
        assert!(surge + unavailable > 0, "a rollout that cannot move");
        let mut old = std::mem::take(&mut self.pods);
        let mut new: Vec<Pod> = Vec::new();
        while !old.is_empty() || self.replicas_of(&new) < replicas {
            let mut started = Vec::new();
            while self.replicas_of(&new) + u32::try_from(started.len()).expect("n") < replicas
                && self.replicas_of(&old)
                    + self.replicas_of(&new)
                    + u32::try_from(started.len()).expect("n")
                    < replicas + surge
            {
                started.push(self.cluster.start(&self.name, self.template()));
            }
            for pod in &started {
                pod.wait_ready(READY).await;
            }
            new.extend(started);
            let available = self.replicas_of(&old) + self.replicas_of(&new);
            let excess = available
                .saturating_sub(replicas - unavailable)
                .min(self.replicas_of(&old));
            assert!(
                excess > 0 || self.replicas_of(&new) < replicas || old.is_empty(),
                "the rollout is stuck"
            );
            for _ in 0..excess {
                let pod = old.remove(0);
                self.stop(pod);
            }
        }
        self.pods = new;
    }

    fn replicas_of(&self, pods: &[Pod]) -> u32 {
        u32::try_from(pods.len()).expect("a count")
    }

    /// Waits for every stopped pod to end; how each ended.
    async fn stopped(&mut self) -> Vec<Terminated> {
        let mut ended = Vec::new();
        for handle in self.stopping.drain(..) {
            ended.push(handle.await.expect("terminate"));
        }
        ended
    }
}

/// What KEDA reads: the trigger's query, as is, over the TriggerAuthentication's connection.
async fn demand(keda: &tokio_postgres::Client, scaling: &Scaling) -> f64 {
    let value: i64 = keda
        .query_one(scaling.query.as_str(), &[])
        .await
        .expect("the trigger's query")
        .get(0);
    #[allow(clippy::cast_precision_loss)] // a count of runs
    let value = value as f64;
    value
}

/// One KEDA poll: the query's value, and the worker Deployment scaled to what it asks.
async fn autoscale(
    workers: &mut Deployment<'_>,
    keda: &tokio_postgres::Client,
    scaling: &Scaling,
) -> (f64, u32) {
    let value = demand(keda, scaling).await;
    let wanted = replicas(scaling, value, workers.replicas());
    workers.scale(wanted).await;
    (value, wanted)
}

fn two_sleeps() -> spec::Spec {
    fixtures::spec(
        "id: deploy-simulation
nodes:
  - {id: a, kind: sleep, input: {ms: 150}}
  - {id: b, kind: sleep, input: {ms: 150}, depends_on: [a]}
",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_run_as_a_cluster_runs_them_and_lose_no_run() {
    let began = Instant::now();
    let base = rendered("base");
    let production = rendered("overlays/production");
    let scaled_object = production.get("ScaledObject", "leasehold-worker");
    let scaling = Scaling::of(scaled_object);
    let db = TestDb::empty().await;
    // The Secrets, as an operator provides them: the owner's URL and the runtime role for the
    // Job, the runtime role's URL for the rest.
    let cluster = Cluster::new(
        &base.docs,
        &[
            ("leasehold-database-owner", "url", db.owner_url()),
            ("leasehold-database-owner", "runtime-role", RUNTIME_ROLE),
            ("leasehold-database", "url", db.url()),
            ("leasehold-database", "autoscaler-url", db.url()),
        ],
    );

    // The migration Job, and again as the next release's would run: idempotent.
    for time in ["first", "second"] {
        let (status, log) = cluster.run_job("leasehold-migrate").await;
        assert!(status.success(), "the {time} migration failed:\n{log}");
    }

    let mut coordinators = Deployment::new(&cluster, "leasehold-coordinator");
    let declared = coordinators.doc["spec"]["replicas"]
        .as_u64()
        .expect("replicas");
    coordinators
        .scale(u32::try_from(declared).expect("replicas"))
        .await;

    // KEDA connects with the TriggerAuthentication's Secret.
    let auth = production.get("TriggerAuthentication", &scaling.authentication);
    let connection = &auth["spec"]["secretTargetRef"][0];
    let url = cluster.secret(
        connection["name"].as_str().expect("secret"),
        connection["key"].as_str().expect("key"),
    );
    let (keda, keda_connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .expect("KEDA's connection");
    tokio::spawn(keda_connection);
    let mut workers = Deployment::new(&cluster, &scaling.deployment);
    assert_eq!(
        autoscale(&mut workers, &keda, &scaling).await,
        (0.0, 0),
        "an idle pool is at zero"
    );

    let store = Store::connect(db.url(), 4).await.expect("a client's store");
    let tenant = TenantId::default();
    let automation = two_sleeps();
    store
        .create_automation(&tenant, &automation)
        .await
        .expect("automation");
    let start = {
        let (store, tenant, id) = (store.clone(), tenant.clone(), automation.id.clone());
        move || {
            let (store, request) = (store.clone(), fixtures::start_request(&tenant, &id));
            async move { store.start_run(&request).await.expect("start run") }
        }
    };
    for _ in 0..BEFORE {
        start().await;
    }
    let (value, scaled) = autoscale(&mut workers, &keda, &scaling).await;
    #[allow(clippy::cast_precision_loss)]
    let expected = (BEFORE as f64 / scaling.target).ceil();
    assert_eq!(
        (value, f64::from(scaled)),
        (BEFORE as f64, expected),
        "0 → ceil(runs / target)"
    );
    assert!(scaled > 1, "a pool of several workers to roll");

    // A new release of the workers while runs keep arriving.
    let feeding = tokio::spawn({
        let start = start.clone();
        async move {
            for _ in 0..DURING {
                start().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let rolled_at = Instant::now();
    workers.roll().await;
    let rollout = rolled_at.elapsed();
    feeding.await.expect("feeding");
    let rolled = workers.stopped().await;
    assert_eq!(
        rolled.len(),
        scaled as usize,
        "every old worker was replaced"
    );

    // KEDA's polls until the queue is empty, the pool back at zero.
    let mut peak = scaled;
    let deadline = Instant::now() + DRAINED;
    loop {
        let (value, now) = autoscale(&mut workers, &keda, &scaling).await;
        peak = peak.max(now);
        if value == 0.0 && now == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the runs did not drain: {value} left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let scaled_down = workers.stopped().await;
    for ended in rolled.iter().chain(&scaled_down) {
        assert!(
            ended.status.success() && !ended.killed,
            "a worker did not hand back and exit within its grace period: {ended:?}"
        );
    }

    // The invariants, read as the owner.
    let (check, checking) = tokio_postgres::connect(db.owner_url(), NoTls)
        .await
        .expect("owner");
    tokio::spawn(checking);
    let statuses: Vec<(String, i64)> = check
        .query("SELECT status, count(*) FROM runs GROUP BY status", &[])
        .await
        .expect("statuses")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let total = i64::try_from(BEFORE + DURING).expect("n");
    assert_eq!(
        statuses,
        [("completed".to_owned(), total)],
        "every run completed, none failed or lost"
    );
    let twice: i64 = check
        .query_one(
            "SELECT count(*) FROM (SELECT run_id, node_id FROM run_events
              WHERE event IN ('run_completed', 'node_completed')
              GROUP BY run_id, node_id, event HAVING count(*) > 1) AS repeated",
            &[],
        )
        .await
        .expect("repeats")
        .get(0);
    assert_eq!(twice, 0, "no run and no node completed twice");
    let completed: i64 = check
        .query_one(
            "SELECT count(*) FROM run_events WHERE event = 'run_completed'",
            &[],
        )
        .await
        .expect("completions")
        .get(0);
    assert_eq!(completed, total);
    let handed_back: i64 = check
        .query_one(
            "SELECT count(*) FROM run_events WHERE event = 'run_released_shutdown'",
            &[],
        )
        .await
        .expect("hand-backs")
        .get(0);

    coordinators.scale(0).await;
    for ended in coordinators.stopped().await {
        assert!(
            ended.status.success() && !ended.killed,
            "a coordinator: {ended:?}"
        );
    }
    eprintln!(
        "deploy simulation: {total} runs completed once each; workers 0 → {scaled} (peak {peak}) \
         → 0; rollout of {scaled} workers took {rollout:?}; {handed_back} hand-backs; slowest \
         worker stop {:?}; whole test {:?}",
        rolled
            .iter()
            .chain(&scaled_down)
            .map(|t| t.took)
            .max()
            .unwrap_or_default(),
        began.elapsed()
    );
}

#[tokio::test]
async fn a_flag_the_binary_does_not_know_fails_the_pod() {
    let base = rendered("base");
    let cluster = Cluster::new(
        &base.docs,
        &[(
            "leasehold-database",
            "url",
            "postgres://nobody@127.0.0.1:1/none",
        )],
    );
    let mut pod = cluster.get("Deployment", "leasehold-worker")["spec"]["template"]["spec"].clone();
    pod["containers"][0]["args"]
        .as_array_mut()
        .expect("args")
        .push("--shutdown-grace-period=10s".into());
    let worker = cluster.start("misspelt", &pod);
    let status = worker.wait_exit(READY).await;
    assert!(!status.success());
    let log = worker.log();
    assert!(log.contains("--shutdown-grace-period"), "{log}");
}
