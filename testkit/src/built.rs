//! This workspace's own binaries, for harnesses that run them as processes (the fault suite, the
//! benchmark).
//!
//! A test cannot name another package's binary with `CARGO_BIN_EXE_*`, and a binary-only package
//! cannot be a dependency. The binary lives in the target folder the running executable is in
//! (`<target>/<profile>/deps/…` for a test, `<target>/<profile>/…` for a program), and cargo
//! builds it there with the same profile.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// Variables cargo sets for the program or test it runs (not configuration, which the nested
/// build keeps). The nested build must not see them: a build script that watches one (ring
/// watches `CARGO_MANIFEST_DIR`) would rebuild, and the next outer build would rebuild back.
const RUN_VARS: &[&str] = &[
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
const RUN_PREFIXES: &[&str] = &["CARGO_PKG_", "CARGO_BIN_EXE_"];
/// Extensions of the files a build reads.
const BUILD_INPUTS: &[&str] = &["rs", "toml", "lock", "sql", "proto"];

/// When [`workspace_binary`] runs `cargo build`.
#[derive(Debug, Clone, Copy)]
pub enum Rebuild<'a> {
    /// Every time; cargo does nothing when the binary is fresh.
    Always,
    /// Only when the binary is missing or older than a file it could be built from: the sources,
    /// manifests, migrations and protos anywhere in the workspace but `except` (the caller's own
    /// crate), build output and hidden folders, and `Cargo.lock`. Cargo builds one binary with
    /// that binary's own dependency features, which differ from a whole-workspace build's, so
    /// skipping a needless build keeps the two from replacing each other's output.
    IfStale {
        /// A folder whose files the binary is not built from.
        except: &'a Path,
    },
}

/// A binary found (and built) by [`workspace_binary`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// Where it is.
    pub path: PathBuf,
    /// The name of the profile folder it is in, such as `debug` or `release`.
    pub profile: String,
}

/// The binary `bin` of package `package` of the workspace in folder `workspace`, built by cargo
/// (as `rebuild` says) with the running executable's profile into its target folder.
///
/// # Errors
/// If the running executable's target folder cannot be told, or cargo cannot build the binary;
/// the message says what failed, and callers add how else to get the binary.
pub fn workspace_binary(
    workspace: &Path,
    package: &str,
    bin: &str,
    rebuild: Rebuild<'_>,
) -> Result<Built, String> {
    let (profile_dir, profile) = profile_dir()?;
    let path = profile_dir.join(bin);
    if let Rebuild::IfStale { except } = rebuild
        && let Ok(built) = path.metadata().and_then(|m| m.modified())
        && newest_source(workspace, except).is_some_and(|newest| newest <= built)
    {
        return Ok(Built { path, profile });
    }
    // Straight to stderr, past a test harness's capture: a build may take minutes.
    let _ = writeln!(
        std::io::stderr(),
        "building {} with cargo ({profile}) …",
        path.display()
    );
    let target_dir = profile_dir
        .parent()
        .ok_or("the profile folder has no parent")?;
    cargo_build(workspace, package, bin, target_dir, &profile)?;
    if path.is_file() {
        Ok(Built { path, profile })
    } else {
        Err(format!(
            "cargo built {bin} but {} does not exist",
            path.display()
        ))
    }
}

/// The running executable's `<target>/<profile>` folder, and the profile's name.
fn profile_dir() -> Result<(PathBuf, String), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    // <target>/<profile>/deps/<test>-<hash>; a build script or a bin sits one level higher.
    let mut profile_dir = exe
        .parent()
        .ok_or("this executable has no folder")?
        .to_path_buf();
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir.pop();
    }
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("the target folder has no profile name")?
        .to_owned();
    Ok((profile_dir, profile))
}

/// `cargo build -p <package> --bin <bin>` with the profile whose folder is `profile`.
fn cargo_build(
    workspace: &Path,
    package: &str,
    bin: &str,
    target_dir: &Path,
    profile: &str,
) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .args(["--profile", cargo_profile(profile)]);
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if RUN_VARS.contains(&text.as_ref()) || RUN_PREFIXES.iter().any(|p| text.starts_with(p)) {
            command.env_remove(&name);
        }
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{command:?}` failed ({status})"))
    }
}

/// The cargo profile whose output folder is `dir`: `debug` is the `dev` profile's.
fn cargo_profile(dir: &str) -> &str {
    match dir {
        "debug" => "dev",
        other => other,
    }
}

/// The latest modification time of the files a binary could be built from (see
/// [`Rebuild::IfStale`]). `None` when a folder cannot be read, which makes the caller build.
fn newest_source(workspace: &Path, except: &Path) -> Option<SystemTime> {
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
                    || path == except;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_debug_folder_is_the_dev_profile() {
        assert_eq!(cargo_profile("debug"), "dev");
        assert_eq!(cargo_profile("release"), "release");
        assert_eq!(cargo_profile("bench"), "bench");
    }

    #[test]
    fn a_test_runs_from_its_profiles_deps_folder() {
        let (dir, profile) = profile_dir().expect("profile folder");
        assert_eq!(dir.file_name().and_then(|n| n.to_str()), Some(&*profile));
        assert!(dir.join("deps").is_dir(), "{}", dir.display());
    }
}
