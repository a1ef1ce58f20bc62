//! The ScaledObject of the workers: its query is the store's own text, its target the workers'
//! capacity; and [`replicas`], the worker count KEDA and the HPA it drives settle on for a value
//! of that query, which the simulation scales by.

use leasehold_core::store::WORKER_DEMAND_SQL;
use serde_json::Value;

use super::render::rendered;

/// The postgresql trigger's settings, read from a rendered ScaledObject.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    pub query: String,
    pub target: f64,
    pub activation: f64,
    pub min: u32,
    pub max: u32,
    /// The Deployment it scales.
    pub deployment: String,
    /// The TriggerAuthentication that gives it the connection.
    pub authentication: String,
}

fn number(value: &Value, what: &str) -> f64 {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is a string, as KEDA's metadata are"))
        .parse()
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn count(value: &Value, default: u32) -> u32 {
    value
        .as_u64()
        .map_or(default, |n| u32::try_from(n).expect("a replica count"))
}

impl Scaling {
    pub fn of(scaled_object: &Value) -> Self {
        let spec = &scaled_object["spec"];
        let triggers = spec["triggers"].as_array().expect("triggers");
        assert_eq!(triggers.len(), 1, "one trigger: the worker demand");
        let trigger = &triggers[0];
        assert_eq!(trigger["type"], "postgresql");
        // AverageValue (KEDA's default): the HPA divides the value by the target.
        assert!(
            trigger["metricType"].is_null() || trigger["metricType"] == "AverageValue",
            "{trigger}"
        );
        let metadata = &trigger["metadata"];
        Scaling {
            query: metadata["query"].as_str().expect("query").to_owned(),
            target: number(&metadata["targetQueryValue"], "targetQueryValue"),
            activation: if metadata["activationTargetQueryValue"].is_null() {
                0.0
            } else {
                number(
                    &metadata["activationTargetQueryValue"],
                    "activationTargetQueryValue",
                )
            },
            // KEDA's defaults.
            min: count(&spec["minReplicaCount"], 0),
            max: count(&spec["maxReplicaCount"], 100),
            deployment: spec["scaleTargetRef"]["name"]
                .as_str()
                .expect("scaleTargetRef")
                .to_owned(),
            authentication: trigger["authenticationRef"]["name"]
                .as_str()
                .expect("authenticationRef")
                .to_owned(),
        }
    }
}

/// The HPA's tolerance: a ratio of the metric to its target within 10 % of 1 changes nothing.
const TOLERANCE: f64 = 0.1;

/// The replicas KEDA and its HPA settle on, with `current` running, for `value` of the query.
///
/// KEDA deactivates the scaler when the value is not above the activation threshold, and then
/// (after `cooldownPeriod`) sets `minReplicaCount`, which may be 0; an active scaler takes a
/// pool at 0 to 1 and leaves the rest to the HPA, which wants `ceil(value / target)` replicas
/// (an `AverageValue` target), unless that is within the tolerance of what runs, bounded by
/// `max(min, 1)` and `maxReplicaCount`.
pub fn replicas(scaling: &Scaling, value: f64, current: u32) -> u32 {
    if value <= scaling.activation {
        return scaling.min;
    }
    let floor = scaling.min.max(1);
    if current > 0 {
        let ratio = value / (scaling.target * f64::from(current));
        if (ratio - 1.0).abs() <= TOLERANCE {
            return current.clamp(floor, scaling.max);
        }
    }
    let wanted = (value / scaling.target).ceil();
    // Bounded by maxReplicaCount before the cast.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let wanted = wanted.min(f64::from(scaling.max)) as u32;
    wanted.clamp(floor, scaling.max)
}

#[test]
fn replicas_follow_keda_and_the_hpa() {
    let scaling = Scaling {
        query: String::new(),
        target: 16.0,
        activation: 0.0,
        min: 0,
        max: 10,
        deployment: String::new(),
        authentication: String::new(),
    };
    // (value, current) → replicas
    let cases = [
        ((0.0, 0), 0),     // nothing to do: zero
        ((0.0, 3), 0),     // nothing left: back to zero (after the cooldown)
        ((1.0, 0), 1),     // active: out of zero
        ((16.0, 0), 1),    // one worker's capacity
        ((17.0, 0), 2),    // one run more
        ((40.0, 0), 3),    // ceil(40 / 16)
        ((40.0, 3), 3),    // already right
        ((50.0, 3), 3),    // 50 / 48: within 10 %
        ((53.0, 3), 4),    // 53 / 48: beyond it
        ((5000.0, 4), 10), // bounded by maxReplicaCount
    ];
    for ((value, current), want) in cases {
        assert_eq!(
            replicas(&scaling, value, current),
            want,
            "value {value}, current {current}"
        );
    }
    let above_five = Scaling {
        activation: 5.0,
        min: 1,
        ..scaling
    };
    assert_eq!(
        replicas(&above_five, 5.0, 3),
        1,
        "inactive: minReplicaCount"
    );
    assert_eq!(replicas(&above_five, 6.0, 0), 1);
}

#[test]
fn the_scaled_object_runs_the_stores_query_with_the_workers_capacity_as_target() {
    let target = "overlays/production";
    let docs = rendered(target);
    let scaling = Scaling::of(docs.get("ScaledObject", "leasehold-worker"));
    assert_eq!(
        scaling.query, WORKER_DEMAND_SQL,
        "{target}: the trigger's query is the store's WORKER_DEMAND_SQL, character for character"
    );
    let worker = docs.get("Deployment", &scaling.deployment);
    assert!(
        worker["spec"]["replicas"].is_null(),
        "KEDA owns the worker count"
    );
    let config = docs.get("ConfigMap", "leasehold-worker");
    let capacity: f64 = config["data"]["LEASEHOLD_CAPACITY"]
        .as_str()
        .expect("the workers' capacity")
        .parse()
        .expect("a number");
    assert_eq!(scaling.target, capacity, "runs per worker is its capacity");
    assert_eq!(
        (scaling.min, scaling.activation),
        (0, 0.0),
        "scales to zero"
    );
    let auth = docs.get("TriggerAuthentication", &scaling.authentication);
    let refs = auth["spec"]["secretTargetRef"]
        .as_array()
        .expect("secretTargetRef");
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0]["parameter"], "connection");
    assert_eq!(refs[0]["name"], "leasehold-database");
}
