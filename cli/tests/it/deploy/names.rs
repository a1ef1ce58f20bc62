//! What a container of the manifests may say to the binary: the flags and variables that
//! `leasehold SUBCOMMAND --help` lists. A manifest naming anything else fails here, before a
//! process is started, and (for a flag) again when the binary refuses it.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

use super::render::{TARGETS, rendered};

/// The flags (`--name`) and variables (`[env: NAME…]`) of `leasehold <subcommand>`.
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub flags: BTreeSet<String>,
    pub variables: BTreeSet<String>,
}

/// Reads [`Names`] from a `--help` text.
pub fn parse_help(help: &str) -> Names {
    let mut names = Names::default();
    for line in help.lines().map(str::trim_start) {
        if let Some(rest) = line.strip_prefix("--").or_else(|| {
            line.strip_prefix('-')
                .and_then(|l| l.split_once(", --"))
                .map(|(_, long)| long)
        }) {
            let flag: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            names.flags.insert(format!("--{flag}"));
        }
        if let Some((_, rest)) = line.split_once("[env: ") {
            let variable: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            names.variables.insert(variable);
        }
    }
    names
}

/// The names `leasehold <subcommand>` knows, from the real binary's `--help`.
pub fn of_subcommand(subcommand: &str) -> Names {
    static CACHE: OnceLock<Mutex<HashMap<String, Names>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(names) = cache.lock().expect("cache").get(subcommand) {
        return names.clone();
    }
    let output = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args([subcommand, "--help"])
        .output()
        .expect("run leasehold --help");
    assert!(
        output.status.success(),
        "leasehold {subcommand} --help: {output:?}"
    );
    let names = parse_help(&String::from_utf8_lossy(&output.stdout));
    cache
        .lock()
        .expect("cache")
        .insert(subcommand.to_owned(), names.clone());
    names
}

/// Whether a container runs the `leasehold` image (the development database does not).
pub fn is_leasehold(container: &Value) -> bool {
    container["image"]
        .as_str()
        .is_some_and(|image| image.split([':', '@']).next() == Some("leasehold"))
}

/// Every variable a container sets: its `env` and the keys of the ConfigMaps and Secrets of its
/// `envFrom`, as `docs` define them (Secrets absent from `docs` contribute no names: their
/// keys are not known here, and the manifests read Secrets through `env` only).
pub fn variables_of(container: &Value, docs: &[Value]) -> Vec<String> {
    let mut names = Vec::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        if let Some(name) = from["configMapRef"]["name"].as_str() {
            let map = docs
                .iter()
                .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("envFrom names the missing ConfigMap {name}"));
            let prefix = from["prefix"].as_str().unwrap_or("");
            names.extend(
                map["data"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(key, _)| format!("{prefix}{key}")),
            );
        }
    }
    names.extend(
        container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["name"].as_str().expect("env name").to_owned()),
    );
    names
}

/// The flags and variables of `container` (in a document of `docs`) the binary does not know.
pub fn unknown_names(container: &Value, docs: &[Value]) -> Vec<String> {
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("a leasehold container has args")
        .iter()
        .map(|a| a.as_str().expect("string args"))
        .collect();
    let subcommand = args.first().expect("a subcommand");
    let names = of_subcommand(subcommand);
    let mut unknown = Vec::new();
    for arg in args.iter().filter(|a| a.starts_with("--")) {
        let flag = arg.split('=').next().expect("flag");
        if !names.flags.contains(flag) {
            unknown.push(format!("flag {flag}"));
        }
    }
    for variable in variables_of(container, docs) {
        if !names.variables.contains(&variable) {
            unknown.push(format!("variable {variable}"));
        }
    }
    unknown
}

/// The containers of every workload in `docs`, with where they are.
pub fn containers(docs: &[Value]) -> Vec<(String, &Value)> {
    docs.iter()
        .filter_map(|d| {
            let spec = &d["spec"]["template"]["spec"];
            spec["containers"].as_array().map(|cs| (d, cs))
        })
        .flat_map(|(d, cs)| {
            cs.iter().map(move |c| {
                (
                    format!(
                        "{} {} container {}",
                        d["kind"], d["metadata"]["name"], c["name"]
                    ),
                    c,
                )
            })
        })
        .collect()
}

#[test]
fn every_container_names_only_flags_and_variables_the_binary_has() {
    let mut checked = 0;
    for target in TARGETS {
        let docs = &rendered(target).docs;
        for (place, container) in containers(docs)
            .into_iter()
            .filter(|(_, c)| is_leasehold(c))
        {
            let unknown = unknown_names(container, docs);
            assert!(unknown.is_empty(), "{target}: {place}: unknown {unknown:?}");
            checked += 1;
        }
    }
    // The migration Job, the coordinator and the worker, in the base and each overlay.
    assert_eq!(checked, 3 * TARGETS.len());
}

#[test]
fn a_misspelt_flag_or_variable_is_caught() {
    let docs = &rendered("base").docs;
    let worker = &docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "leasehold-worker")
        .expect("the worker")["spec"]["template"]["spec"]["containers"][0];
    let mut wrong = worker.clone();
    wrong["args"]
        .as_array_mut()
        .expect("args")
        .push("--shutdown-grace-period=10s".into());
    wrong["env"] = serde_json::json!([{ "name": "LEASEHOLD_CAPACTY", "value": "4" }]);
    assert_eq!(
        unknown_names(&wrong, docs),
        ["flag --shutdown-grace-period", "variable LEASEHOLD_CAPACTY"]
    );
}

#[test]
fn help_is_read_for_flags_and_variables() {
    let names = parse_help(
        "Options:\n      --database-url <URL>\n          [env: LEASEHOLD_DATABASE_URL]\n  \
         -h, --help\n      --capacity <N>\n          [env: LEASEHOLD_CAPACITY=]\n",
    );
    assert_eq!(
        names.flags.into_iter().collect::<Vec<_>>(),
        ["--capacity", "--database-url", "--help"]
    );
    assert_eq!(
        names.variables.into_iter().collect::<Vec<_>>(),
        ["LEASEHOLD_CAPACITY", "LEASEHOLD_DATABASE_URL"]
    );
}
