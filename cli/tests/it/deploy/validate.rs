//! Every document the base and the overlays render validates: the Kubernetes kinds with
//! `kubernetes-validate --strict` against the schemas of the oldest Kubernetes that
//! deploy/README.md supports, and the custom resources (KEDA, the Prometheus Operator,
//! cert-manager) against the JSON schemas vendored in `deploy/kubernetes/schemas/`.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::render::{self, TARGETS, kubernetes_dir, rendered, require_tool};

/// The oldest Kubernetes the manifests support: native gRPC probes are on by default from 1.27.
const OLDEST_KUBERNETES: &str = "1.27.0";

/// Custom resources by `apiVersion` and `kind`, and the vendored schema each is checked against.
const CRD_SCHEMAS: &[(&str, &str, &str)] = &[
    (
        "keda.sh/v1alpha1",
        "ScaledObject",
        "keda-scaledobject-v1alpha1.json",
    ),
    (
        "keda.sh/v1alpha1",
        "TriggerAuthentication",
        "keda-triggerauthentication-v1alpha1.json",
    ),
    (
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        "servicemonitor-v1.json",
    ),
    (
        "cert-manager.io/v1",
        "Certificate",
        "cert-manager-certificate-v1.json",
    ),
];

fn crd_schema(doc: &Value) -> Option<&'static str> {
    CRD_SCHEMAS
        .iter()
        .find(|(api, kind, _)| doc["apiVersion"] == *api && doc["kind"] == *kind)
        .map(|(_, _, schema)| *schema)
}

#[test]
fn the_readme_names_the_oldest_kubernetes_the_manifests_are_validated_for() {
    let readme = std::fs::read_to_string(render::root().join("deploy/README.md")).expect("README");
    let minor = OLDEST_KUBERNETES.trim_end_matches(".0");
    assert!(
        readme.contains(&format!("Kubernetes {minor} or later")),
        "deploy/README.md must say `Kubernetes {minor} or later`"
    );
}

#[test]
fn every_rendered_kubernetes_document_validates_strictly() {
    require_tool(
        "kubernetes-validate",
        "`pip install kubernetes-validate` (the Kubernetes schemas, offline)",
    );
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("deploy-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary folder");
    let files: Vec<_> = TARGETS
        .iter()
        .map(|target| {
            let file = dir.join(format!("{}.yaml", target.replace('/', "-")));
            std::fs::write(&file, &rendered(target).yaml).expect("write the rendered manifests");
            file
        })
        .collect();
    // One run for every target: the tool loads its schemas once.
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", OLDEST_KUBERNETES])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    // Kept only when the tool refused them, for a person to read.
    let _ = std::fs::remove_dir_all(&dir);
    let passed = said.lines().filter(|l| l.contains(" passed for ")).count();
    let custom = TARGETS
        .iter()
        .flat_map(|t| &rendered(t).docs)
        .filter(|d| crd_schema(d).is_some())
        .count();
    let total: usize = TARGETS.iter().map(|t| rendered(t).docs.len()).sum();
    assert_eq!(passed + custom, total, "every document validated:\n{said}");
    // Only the custom resources, which the next test checks, lack a Kubernetes schema.
    for line in said.lines().filter(|l| l.contains("Couldn't find schema")) {
        assert!(
            CRD_SCHEMAS
                .iter()
                .any(|(api, kind, _)| line.contains(&format!("kind {kind} with api version {api}"))),
            "a document of a kind with no schema: {line}"
        );
    }
}

/// Runs `deploy/kubernetes/schemas/check.py` (jsonschema, which kubernetes-validate brings) on
/// `(schema file, document)` pairs; the errors it found, one per document that failed.
fn check_against_schemas(pairs: &[(&str, &Value)]) -> Vec<String> {
    require_tool(
        "kubernetes-validate",
        "`pip install kubernetes-validate`, which brings Python's jsonschema",
    );
    let input = json!(
        pairs
            .iter()
            .map(|(schema, doc)| json!({ "schema": schema, "doc": doc }))
            .collect::<Vec<_>>()
    );
    let schemas = kubernetes_dir().join("schemas");
    let mut child = Command::new("python3")
        .arg(schemas.join("check.py"))
        .arg(&schemas)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    serde_json::to_writer(child.stdin.take().expect("stdin"), &input).expect("write");
    let output = child.wait_with_output().expect("python3");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.code().is_some_and(|c| c == 0 || c == 1),
        "check.py failed to run: {stderr}"
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_custom_resource_validates_against_its_vendored_crd_schema() {
    let mut pairs = Vec::new();
    let mut kinds = BTreeSet::new();
    for target in TARGETS {
        for doc in &rendered(target).docs {
            let api = doc["apiVersion"].as_str().expect("apiVersion");
            let builtin = !api.contains('.') || api.ends_with(".k8s.io/v1");
            match crd_schema(doc) {
                Some(schema) => {
                    kinds.insert(schema);
                    pairs.push((schema, doc));
                }
                None => assert!(
                    builtin,
                    "{target}: no vendored schema for {api} {}",
                    doc["kind"]
                ),
            }
        }
    }
    assert_eq!(
        kinds.len(),
        CRD_SCHEMAS.len(),
        "every vendored schema is used"
    );
    let errors = check_against_schemas(&pairs);
    assert!(errors.is_empty(), "{errors:#?}");

    // The schemas refuse what the API server would: a misspelt field, a postgresql trigger
    // without its query.
    let scaled = rendered("overlays/production").get("ScaledObject", "leasehold-worker");
    let mut misspelt = scaled.clone();
    misspelt["spec"]["maxReplicas"] = json!(3);
    let mut no_query = scaled.clone();
    no_query["spec"]["triggers"][0]["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("query");
    let schema = "keda-scaledobject-v1alpha1.json";
    let errors = check_against_schemas(&[(schema, &misspelt), (schema, &no_query)]);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].contains("maxReplicas"), "{errors:#?}");
    assert!(errors[1].contains("query"), "{errors:#?}");
}

/// The image's user, from deploy/Dockerfile's `USER uid:gid`.
fn image_user() -> u64 {
    let dockerfile =
        std::fs::read_to_string(render::root().join("deploy/Dockerfile")).expect("Dockerfile");
    let user = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER line");
    user.split(':')
        .next()
        .and_then(|uid| uid.trim().parse().ok())
        .unwrap_or_else(|| panic!("USER must be numeric, for runAsNonRoot: {user}"))
}

/// What the `restricted` Pod Security Standard requires of a pod, and what this project adds
/// (a read-only root, no service account token, the image's numeric user): the first rule
/// `pod` breaks.
fn restricted(pod: &Value, leasehold_user: u64) -> Result<(), String> {
    let pod_context = &pod["securityContext"];
    if pod["automountServiceAccountToken"] != false {
        return Err("a service account token is mounted".into());
    }
    for container in pod["containers"].as_array().expect("containers") {
        let context = &container["securityContext"];
        let name = &container["name"];
        let non_root = context["runAsNonRoot"] == true || pod_context["runAsNonRoot"] == true;
        let seccomp = if context["seccompProfile"].is_null() {
            &pod_context["seccompProfile"]["type"]
        } else {
            &context["seccompProfile"]["type"]
        };
        let drops = context["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|c| c == "ALL"));
        let adds = context["capabilities"]["add"]
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c != "NET_BIND_SERVICE"));
        let user = context["runAsUser"]
            .as_u64()
            .or_else(|| pod_context["runAsUser"].as_u64());
        let broken = [
            (!non_root, "runAsNonRoot"),
            (user == Some(0), "runAsUser 0"),
            (
                seccomp != "RuntimeDefault" && seccomp != "Localhost",
                "seccompProfile",
            ),
            (
                context["allowPrivilegeEscalation"] != false,
                "allowPrivilegeEscalation",
            ),
            (context["privileged"] == true, "privileged"),
            (!drops || adds, "capabilities: drop ALL"),
            (
                context["readOnlyRootFilesystem"] != true,
                "readOnlyRootFilesystem",
            ),
            (
                super::names::is_leasehold(container) && user != Some(leasehold_user),
                "the image's user",
            ),
        ];
        if let Some((_, rule)) = broken.iter().find(|(is_broken, _)| *is_broken) {
            return Err(format!("container {name}: {rule}"));
        }
    }
    if pod["hostNetwork"] == true || pod["hostPID"] == true || pod["hostIPC"] == true {
        return Err("host namespaces".into());
    }
    Ok(())
}

#[test]
fn every_pod_meets_the_restricted_pod_security_level_as_the_images_user() {
    let user = image_user();
    let mut pods = 0;
    for target in TARGETS {
        for doc in &rendered(target).docs {
            let pod = &doc["spec"]["template"]["spec"];
            if pod.is_null() {
                continue;
            }
            if let Err(e) = restricted(pod, user) {
                panic!("{target}: {} {}: {e}", doc["kind"], doc["metadata"]["name"]);
            }
            pods += 1;
        }
    }
    // Job, coordinator, worker in each target, and the development database.
    assert_eq!(pods, 3 * TARGETS.len() + 1);

    let worker = &rendered("base")
        .docs
        .iter()
        .find(|d| d["metadata"]["name"] == "leasehold-worker" && d["kind"] == "Deployment")
        .expect("worker")["spec"]["template"]["spec"];
    let mut escalating = worker.clone();
    escalating["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = json!(true);
    assert_eq!(
        restricted(&escalating, user),
        Err("container \"worker\": allowPrivilegeEscalation".to_owned())
    );
    let mut as_root = worker.clone();
    as_root["securityContext"]["runAsUser"] = json!(0);
    assert!(restricted(&as_root, user).is_err());
}
