//! What a kubelet does with a pod of the rendered manifests, done with the real `leasehold`
//! binary on this machine: the image's entrypoint with the container's args, an environment
//! built from the ConfigMaps and Secrets (`envFrom` first, then `env`), Secret, ConfigMap and
//! emptyDir volumes as folders; pod.rs has the probes (gRPC health, HTTP GET, TCP connect) with
//! the kubelet's rules, and SIGTERM, then SIGKILL after `terminationGracePeriodSeconds`.
//!
//! Two rewrites make a pod runnable here, both applied to env values and args alike: each
//! `containerPort` becomes a free loopback port (in a cluster every pod has its own address;
//! here they share one), so `0.0.0.0:9090` becomes `127.0.0.1:<free>` and a probe of 9090 asks
//! that port; and each volume's `mountPath` becomes the pod's folder for that volume, wherever a
//! value names a path under it (a URL's `sslrootcert=` too, and in Secret files).
//! Nothing else changes: a flag, port, path or variable the binary does not know fails the pod.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::names::{is_leasehold, unknown_names};
use super::pod::Pod;
use super::render::root;
use crate::support::free_port;

/// The rendered documents of one target, and the test's values for the Secrets they name.
pub struct Cluster {
    pub docs: &'static [Value],
    /// `(secret, key)` → value: what an operator (or External Secrets) would put there.
    pub secrets: HashMap<(String, String), String>,
    dir: PathBuf,
    pods: AtomicUsize,
}

/// The image's entrypoint, from deploy/Dockerfile: the binary a container runs.
fn entrypoint() -> Vec<String> {
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).expect("Dockerfile");
    let line = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("an ENTRYPOINT");
    serde_json::from_str(line).expect("ENTRYPOINT in exec form")
}

impl Cluster {
    pub fn new(docs: &'static [Value], secrets: &[(&str, &str, &str)]) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "deploy-cluster-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("the cluster's folder");
        Self {
            docs,
            secrets: secrets
                .iter()
                .map(|(s, k, v)| (((*s).to_owned(), (*k).to_owned()), (*v).to_owned()))
                .collect(),
            dir,
            pods: AtomicUsize::new(0),
        }
    }

    /// The document of `kind` named `name`.
    pub fn get(&self, kind: &str, name: &str) -> &'static Value {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} named {name}"))
    }

    /// The test's value for `key` of the Secret `name`.
    pub fn secret(&self, name: &str, key: &str) -> String {
        self.secrets
            .get(&(name.to_owned(), key.to_owned()))
            .unwrap_or_else(|| {
                panic!(
                    "the manifests read Secret {name} key {key}, which the test does not provide"
                )
            })
            .clone()
    }

    fn config_map(&self, name: &str) -> &'static serde_json::Map<String, Value> {
        self.get("ConfigMap", name)["data"]
            .as_object()
            .unwrap_or_else(|| panic!("ConfigMap {name} has no data"))
    }

    /// The container's environment, as the kubelet builds it: `envFrom` in order, then `env`,
    /// a later entry replacing an earlier one.
    pub fn environment(&self, container: &Value) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        let mut set = |name: String, value: String| {
            env.retain(|(n, _)| *n != name);
            env.push((name, value));
        };
        for from in container["envFrom"].as_array().into_iter().flatten() {
            let prefix = from["prefix"].as_str().unwrap_or("");
            if let Some(name) = from["configMapRef"]["name"].as_str() {
                for (key, value) in self.config_map(name) {
                    set(
                        format!("{prefix}{key}"),
                        value.as_str().expect("string data").to_owned(),
                    );
                }
            } else if let Some(name) = from["secretRef"]["name"].as_str() {
                let keys: Vec<_> = self
                    .secrets
                    .iter()
                    .filter(|((s, _), _)| s == name)
                    .map(|((_, k), v)| (k.clone(), v.clone()))
                    .collect();
                for (key, value) in keys {
                    set(format!("{prefix}{key}"), value);
                }
            } else {
                panic!("envFrom of an unknown source: {from}");
            }
        }
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().expect("env name").to_owned();
            let value = if let Some(value) = var["value"].as_str() {
                value.to_owned()
            } else if let Some(key) = var["valueFrom"]["secretKeyRef"].as_object() {
                self.secret(
                    key["name"].as_str().expect("secret"),
                    key["key"].as_str().expect("key"),
                )
            } else if let Some(key) = var["valueFrom"]["configMapKeyRef"].as_object() {
                let map = self.config_map(key["name"].as_str().expect("config map"));
                map[key["key"].as_str().expect("key")]
                    .as_str()
                    .expect("string data")
                    .to_owned()
            } else {
                panic!("an env entry the simulation cannot build: {var}");
            };
            set(name, value);
        }
        env
    }

    /// Starts the one container of `pod` (a pod spec), as the pod `name`-N.
    pub fn start(&self, name: &str, pod: &Value) -> Pod {
        let containers = pod["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "{name}: one container per pod");
        let container = containers[0].clone();
        assert!(is_leasehold(&container), "{name}: not the leasehold image");
        // The binary ignores a variable it does not read, so the kubelet's check is here; a flag
        // it does not know, it refuses at start.
        let unknown: Vec<_> = unknown_names(&container, self.docs)
            .into_iter()
            .filter(|u| u.starts_with("variable"))
            .collect();
        assert!(
            unknown.is_empty(),
            "{name}: the binary does not read {unknown:?}"
        );
        let n = self.pods.fetch_add(1, Ordering::Relaxed);
        let pod_name = format!("{name}-{n}");
        let dir = self.dir.join(&pod_name);
        std::fs::create_dir_all(&dir).expect("the pod's folder");

        let mounts = self.volumes(pod, &container, &dir);
        let ports: HashMap<u16, u16> = container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| (port_number(&p["containerPort"]), free_port()))
            .collect();
        let rewrite = |value: &str| rewrite(value, &ports, &mounts);

        let command = match container["command"].as_array() {
            Some(command) => command
                .iter()
                .map(|c| c.as_str().expect("string command").to_owned())
                .collect(),
            None => entrypoint(),
        };
        assert_eq!(
            command,
            entrypoint(),
            "{name}: a command other than the image's entrypoint"
        );
        let args: Vec<String> = container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| rewrite(a.as_str().expect("string args")))
            .collect();
        let env: Vec<(String, String)> = self
            .environment(&container)
            .into_iter()
            .map(|(k, v)| {
                let v = rewrite(&v);
                (k, v)
            })
            .collect();
        let log = dir.join("log");
        let child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
            .args(&args)
            .env_clear()
            .envs(env)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::create(dir.join("stderr")).expect("log"))
            .spawn()
            .expect("start the container");
        let grace =
            Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30));
        let pod = Pod {
            name: pod_name,
            child: Mutex::new(child),
            ports,
            container,
            dir,
            grace,
        };
        // A probe of a port the container does not declare could never pass here: say so now
        // rather than at the readiness deadline.
        for which in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let probe = &pod.container[which];
            for handler in ["grpc", "httpGet", "tcpSocket"] {
                if let Some(port) = probe[handler].get("port")
                    && let Err(e) = pod.port(port)
                {
                    panic!("{}: {which}: {e}", pod.name);
                }
            }
        }
        pod
    }

    /// The pod's volumes that the container mounts, made as folders under `dir`: the mount
    /// paths and the folders, longest path first. A Secret's files are rewritten like env
    /// values, so that a URL naming a file of another mount (`sslrootcert=`) finds it here.
    fn volumes(&self, pod: &Value, container: &Value, dir: &Path) -> Vec<(String, PathBuf)> {
        let mounted: Vec<(String, &Value, PathBuf)> = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|mount| {
                let name = mount["name"].as_str().expect("volume name");
                let volume = pod["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|v| v["name"] == name)
                    .unwrap_or_else(|| panic!("a mount of the missing volume {name}"));
                let path = mount["mountPath"].as_str().expect("mountPath").to_owned();
                (path, volume, dir.join("volumes").join(name))
            })
            .collect();
        let mut mounts: Vec<(String, PathBuf)> = mounted
            .iter()
            .map(|(path, _, folder)| (path.clone(), folder.clone()))
            .collect();
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        for (_, volume, folder) in &mounted {
            std::fs::create_dir_all(folder).expect("volume folder");
            if let Some(secret) = volume["secret"]["secretName"].as_str() {
                let files: Vec<(String, String)> = match volume["secret"]["items"].as_array() {
                    Some(items) => items
                        .iter()
                        .map(|i| {
                            let key = i["key"].as_str().expect("key");
                            let path = i["path"].as_str().expect("path").to_owned();
                            (path, self.secret(secret, key))
                        })
                        .collect(),
                    None => self
                        .secrets
                        .iter()
                        .filter(|((s, _), _)| s == secret)
                        .map(|((_, k), v)| (k.clone(), v.clone()))
                        .collect(),
                };
                for (path, value) in files {
                    let value = rewrite(&value, &HashMap::new(), &mounts);
                    std::fs::write(folder.join(path), value).expect("secret file");
                }
            } else if let Some(map) = volume["configMap"]["name"].as_str() {
                for (key, value) in self.config_map(map) {
                    std::fs::write(folder.join(key), value.as_str().expect("data"))
                        .expect("config file");
                }
            } else {
                assert!(
                    volume["emptyDir"].is_object(),
                    "a volume the simulation cannot make: {volume}"
                );
            }
        }
        mounts
    }

    /// Runs the Job `name`'s pod to its end, within its `activeDeadlineSeconds`.
    pub async fn run_job(&self, name: &str) -> (ExitStatus, String) {
        let job = self.get("Job", name);
        let deadline =
            Duration::from_secs(job["spec"]["activeDeadlineSeconds"].as_u64().unwrap_or(600));
        let pod = self.start(name, &job["spec"]["template"]["spec"]);
        let status = pod.wait_exit(deadline).await;
        (status, pod.log())
    }
}

/// The pods' folders (logs, Secret files of test values) go with a passing test and stay, for a
/// person to read, with a failing one.
impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub(super) fn port_number(port: &Value) -> u16 {
    u16::try_from(port.as_u64().expect("a numeric port")).expect("a port")
}

/// `value` with a listen address on a container port moved to its loopback port, and every
/// path under a mount (alone, or inside a URL) moved to the mount's folder.
fn rewrite(value: &str, ports: &HashMap<u16, u16>, mounts: &[(String, PathBuf)]) -> String {
    if let Some((flag, rest)) = value.split_once('=').filter(|(f, _)| f.starts_with("--")) {
        return format!("{flag}={}", rewrite(rest, ports, mounts));
    }
    if let Ok(addr) = value.parse::<SocketAddr>()
        && let Some(local) = ports.get(&addr.port())
    {
        return format!("127.0.0.1:{local}");
    }
    // One pass over the original text, so that a folder put in is never rewritten again (the
    // folders live under a `tmp`, and a pod may mount `/tmp`). A path starts the value or
    // follows a character that cannot be part of one (`=` in a URL's query).
    let mut out = String::new();
    let mut rest = value;
    while !rest.is_empty() {
        let starts_path = out
            .chars()
            .last()
            .is_none_or(|c| !(c.is_alphanumeric() || "/._-".contains(c)));
        let mounted = mounts.iter().find(|(path, _)| {
            starts_path
                && rest.starts_with(path.as_str())
                && rest[path.len()..].chars().next().is_none_or(|c| c == '/')
        });
        if let Some((path, folder)) = mounted {
            out.push_str(&folder.display().to_string());
            rest = &rest[path.len()..];
        } else {
            let c = rest.chars().next().expect("not empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

#[test]
fn rewrite_moves_listen_ports_and_mounted_paths_only() {
    let ports = HashMap::from([(9090, 40001)]);
    let mounts = vec![
        (
            "/etc/leasehold/database-ca".to_owned(),
            PathBuf::from("/x/tmp/ca"),
        ),
        ("/tmp".to_owned(), PathBuf::from("/x/tmp/scratch")),
    ];
    let cases = [
        ("0.0.0.0:9090", "127.0.0.1:40001"),
        (
            "--metrics-listen=0.0.0.0:9090",
            "--metrics-listen=127.0.0.1:40001",
        ),
        ("0.0.0.0:7233", "0.0.0.0:7233"),
        (
            "postgres://u@db/x?sslmode=verify-full&sslrootcert=/etc/leasehold/database-ca/ca.crt",
            "postgres://u@db/x?sslmode=verify-full&sslrootcert=/x/tmp/ca/ca.crt",
        ),
        ("/tmp", "/x/tmp/scratch"),
        ("/tmp/a", "/x/tmp/scratch/a"),
        ("/var/tmp/a", "/var/tmp/a"),
        ("/tmpfiles", "/tmpfiles"),
        ("json", "json"),
    ];
    for (value, want) in cases {
        assert_eq!(rewrite(value, &ports, &mounts), want, "{value}");
    }
}
