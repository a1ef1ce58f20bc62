//! Where the real `leasehold` binary is, fresh for this suite.
//!
//! [`leasehold_testkit::workspace_binary`] finds it in the target folder the test executable
//! itself is in (`<target>/<profile>/deps/…`). Once per test process:
//!
//! - If it exists and is newer than every file of the workspace it could be built from (the
//!   sources, manifests and migrations of every package but this one, and `Cargo.lock`), it is
//!   used as it is. That is the case under `cargo test --workspace`, which builds it for the
//!   CLI's own tests before running any.
//! - Otherwise (missing, or older than an edit, as after `cargo test -p leasehold-fault-tests`),
//!   the suite runs `cargo build -p leasehold --bin leasehold` with the test's own profile and
//!   target folder, so it never runs a stale build. Cargo builds that with the binary's own
//!   dependency features, which differ from a whole-workspace test build's: the first such build
//!   compiles that variant once.
//!
//! Set `LEASEHOLD_FAULT_BIN` to a `leasehold` binary to use it and skip both.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use leasehold_testkit::{Rebuild, workspace_binary};

/// The environment variable naming a `leasehold` binary to use instead of building one.
pub const BIN_ENV: &str = "LEASEHOLD_FAULT_BIN";

static LEASEHOLD: OnceLock<Result<PathBuf, String>> = OnceLock::new();

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
    let this_crate = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = this_crate
        .parent()
        .ok_or("this crate has no parent folder")?;
    let rebuild = Rebuild::IfStale { except: this_crate };
    workspace_binary(workspace, "leasehold", "leasehold", rebuild)
        .map(|built| built.path)
        .map_err(|e| {
            format!(
                "{e}; build the leasehold binary with `cargo build -p leasehold` or point \
                 {BIN_ENV} at one"
            )
        })
}
