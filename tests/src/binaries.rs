//! Where the real `leasehold` binary is, fresh for this suite.
//!
//! A test of this crate cannot name another package's binary with `CARGO_BIN_EXE_*`, and a
//! binary-only package cannot be a dependency. The binary lives in the target folder the test
//! executable itself is in (`<target>/<profile>/deps/…`). Once per test process:
//!
//! - If it exists and is newer than every file of the workspace it could be built from (the
//!   sources, manifests and migrations of every package but this one, and `Cargo.lock`), it is
//!   used as it is. That is the case under `cargo test --workspace`, which builds it for the CLI's
//!   own tests before running any.
//! - Otherwise (missing, or older than an edit, as after `cargo test -p leasehold-fault-tests`),
//!   the suite runs `cargo build -p leasehold --bin leasehold` with the test's own profile and
//!   target folder, so it never runs a stale build. Cargo builds that with the binary's own
//!   dependency features, which differ from a whole-workspace test build's: the first such build
//!   compiles that variant once.
//!
//! Set `LEASEHOLD_FAULT_BIN` to a `leasehold` binary to use it and skip both.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// The environment variable naming a `leasehold` binary to use instead of building one.
pub const BIN_ENV: &str = "LEASEHOLD_FAULT_BIN";

static LEASEHOLD: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Variables cargo sets for a test it runs (not configuration, which the nested build keeps).
const TEST_RUN_VARS: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];
/// Prefixes of the same.
const TEST_RUN_PREFIXES: &[&str] = &["CARGO_PKG_", "CARGO_BIN_EXE_"];
/// Extensions of the files a build reads.
const BUILD_INPUTS: &[&str] = &["rs", "toml", "lock", "sql", "proto"];

/// The `leasehold` binary of this workspace, built with the test's own profile.
///
/// # Panics
/// If it cannot be built or found; the message says what to run.
pub fn leasehold() -> &'static Path {
    match LEASEHOLD.get_or_init(build_leasehold) {
        Ok(path) => path,
        Err(message) => panic!("fault suite: {message}"),
    }
}

fn build_leasehold() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(BIN_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{BIN_ENV}={} is not a file", path.display()))
        };
    }
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the test executable: {e}"))?;
    // <target>/<profile>/deps/<test>-<hash>; a build script or a bin sits one level higher.
    let mut profile_dir = exe
        .parent()
        .ok_or("the test executable has no folder")?
        .to_path_buf();
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir.pop();
    }
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("the target folder has no profile name")?
        .to_owned();
    let target_dir = profile_dir
        .parent()
        .ok_or("the profile folder has no parent")?;
    let binary = profile_dir.join("leasehold");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("this crate has no parent folder")?;
    if let Ok(built) = binary.metadata().and_then(|m| m.modified())
        && newest_source(workspace).is_some_and(|newest| newest <= built)
    {
        return Ok(binary);
    }
    // Straight to stderr, past the test harness's capture: a build may take minutes.
    let _ = writeln!(
        std::io::stderr(),
        "fault suite: building {} (missing, or older than the workspace's sources)",
        binary.display()
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = workspace.join("Cargo.toml");
    let mut command = Command::new(&cargo);
    command
        .args(["build", "--quiet", "-p", "leasehold", "--bin", "leasehold"])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .args(["--profile", cargo_profile(&profile)]);
    // Cargo describes the running test to it with these; a build script that watches one of
    // them (ring watches CARGO_MANIFEST_DIR) would see a change and rebuild, and the next
    // `cargo test` would rebuild back.
    for (name, _) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        if TEST_RUN_VARS.contains(&name_text.as_ref())
            || TEST_RUN_PREFIXES.iter().any(|p| name_text.starts_with(p))
        {
            command.env_remove(&name);
        }
    }
    let status = command.status().map_err(|e| {
        format!(
            "cannot run {} to build the leasehold binary: {e}; build it with \
             `cargo build -p leasehold` or point {BIN_ENV} at one",
            Path::new(&cargo).display()
        )
    })?;
    if !status.success() {
        return Err(format!(
            "`{command:?}` failed ({status}); build the leasehold binary with \
             `cargo build -p leasehold` or point {BIN_ENV} at one"
        ));
    }
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(format!(
            "cargo built leasehold but {} does not exist; point {BIN_ENV} at the binary",
            binary.display()
        ))
    }
}

/// The cargo profile whose output folder is `dir`: `debug` is the `dev` profile's.
fn cargo_profile(dir: &str) -> &str {
    match dir {
        "debug" => "dev",
        other => other,
    }
}

/// The latest modification time of the files `leasehold` could be built from: the Rust
/// sources, manifests, migrations, protos and the lock file anywhere in the workspace folder but
/// build output, hidden folders and this crate. `None` when the folder cannot be read, which
/// makes the caller build.
fn newest_source(workspace: &Path) -> Option<SystemTime> {
    let this_crate = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut folders = vec![workspace.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).ok()? {
            let entry = entry.ok()?;
            let path = entry.path();
            let name = entry.file_name();
            let kind = entry.file_type().ok()?;
            if kind.is_dir() {
                let skip = name.to_string_lossy().starts_with('.')
                    || (folder == workspace && name == "target")
                    || path == this_crate;
                if !skip {
                    folders.push(path);
                }
            } else if path
                .extension()
                .is_some_and(|e| BUILD_INPUTS.iter().any(|i| e == *i))
            {
                newest = newest.max(entry.metadata().ok()?.modified().ok()?);
            }
        }
    }
    Some(newest)
}
