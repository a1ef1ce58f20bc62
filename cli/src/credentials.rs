//! The credentials file: the token `leasehold dev` made, by endpoint, for client commands on the
//! same machine that are given no `--token` (or `LEASEHOLD_TOKEN`).
//!
//! It is `$XDG_CONFIG_HOME/leasehold/credentials`, else `~/.config/leasehold/credentials`,
//! readable by its owner only (0600, in a 0700 folder), and holds JSON:
//! `{"tokens": {"http://127.0.0.1:7233": "lh_…"}}`. Each `leasehold dev` replaces its endpoint's
//! entry when it starts and leaves the others.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context;
use leasehold_core::store::Secret;
use serde_json::{Map, Value};

/// The file's place; `None` without `XDG_CONFIG_HOME` and `HOME`.
pub fn path() -> Option<PathBuf> {
    path_from(
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
}

fn path_from(xdg_config_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    // The XDG spec says to ignore a relative XDG_CONFIG_HOME.
    let base = xdg_config_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| home.map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("leasehold").join("credentials"))
}

/// An endpoint as the file keys it: with a scheme (`http://` when it has none, as client
/// commands assume) and without a trailing `/`.
pub fn endpoint_key(endpoint: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

/// The token saved for `endpoint`, if the file has one.
pub fn lookup(endpoint: &str) -> anyhow::Result<Option<Secret>> {
    let Some(path) = path() else {
        return Ok(None);
    };
    lookup_in(&path, endpoint)
}

fn lookup_in(path: &Path, endpoint: &str) -> anyhow::Result<Option<Secret>> {
    let tokens = read(path)?;
    let Some(text) = tokens.get(&endpoint_key(endpoint)) else {
        return Ok(None);
    };
    // The file's text is never shown: it is a secret, however mangled.
    let token = Secret::parse(text).map_err(|e| {
        anyhow::anyhow!(
            "the token for {} in {} is unusable ({e}); start `leasehold dev` again to replace it",
            endpoint_key(endpoint),
            path.display()
        )
    })?;
    Ok(Some(token))
}

/// Saves `token` for `endpoint`; returns the file's path.
pub fn save(endpoint: &str, token: &Secret) -> anyhow::Result<PathBuf> {
    let path = path().ok_or_else(|| {
        anyhow::anyhow!(
            "neither XDG_CONFIG_HOME nor HOME is set: no place for the credentials file"
        )
    })?;
    save_in(&path, endpoint, token)?;
    Ok(path)
}

fn save_in(path: &Path, endpoint: &str, token: &Secret) -> anyhow::Result<()> {
    let folder = path.parent().context("the credentials file has a folder")?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(folder)
        .with_context(|| format!("creating {}", folder.display()))?;
    // An unreadable file is replaced rather than kept: it can hold nothing dev needs.
    let mut tokens = read(path).unwrap_or_default();
    tokens.insert(endpoint_key(endpoint), token.expose());
    let document = Value::Object(Map::from_iter([(
        "tokens".to_owned(),
        Value::Object(
            tokens
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        ),
    )]));
    // Written whole beside the file and renamed over it, so a reader never sees half a file; the
    // scratch file is the owner's alone from its creation.
    let scratch = folder.join(format!(".credentials.{}", std::process::id()));
    let _ = fs::remove_file(&scratch);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&scratch)
        .and_then(|mut file| {
            let mut text = serde_json::to_string_pretty(&document).map_err(io::Error::other)?;
            text.push('\n');
            file.write_all(text.as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&scratch, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&scratch);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// The file's tokens by endpoint; none when there is no file.
fn read(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let unreadable = || anyhow::anyhow!("{} is not a credentials file", path.display());
    let document: Value = serde_json::from_str(&text).map_err(|_| unreadable())?;
    let tokens = match document.get("tokens") {
        None => return Ok(BTreeMap::new()),
        Some(Value::Object(tokens)) => tokens,
        Some(_) => return Err(unreadable()),
    };
    tokens
        .iter()
        .map(|(endpoint, token)| match token {
            Value::String(token) => Ok((endpoint.clone(), token.clone())),
            _ => Err(unreadable()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn token(n: u8) -> Secret {
        Secret::parse(&format!("lh_{:016x}_{}", n, format!("{n:02x}").repeat(32))).expect("token")
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "leasehold-credentials-test-{}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_file_follows_xdg_and_else_home() {
        let check = |xdg: Option<&str>, home: Option<&str>, want: Option<&str>| {
            assert_eq!(
                path_from(xdg.map(Into::into), home.map(Into::into)),
                want.map(PathBuf::from),
                "{xdg:?} {home:?}"
            );
        };
        check(
            Some("/x/config"),
            Some("/home/a"),
            Some("/x/config/leasehold/credentials"),
        );
        check(
            Some("relative"),
            Some("/home/a"),
            Some("/home/a/.config/leasehold/credentials"),
        );
        check(
            None,
            Some("/root"),
            Some("/root/.config/leasehold/credentials"),
        );
        check(None, None, None);
    }

    #[test]
    fn endpoints_are_keyed_with_a_scheme_and_no_trailing_slash() {
        assert_eq!(endpoint_key("127.0.0.1:7233"), "http://127.0.0.1:7233");
        assert_eq!(
            endpoint_key("http://127.0.0.1:7233/"),
            "http://127.0.0.1:7233"
        );
        assert_eq!(
            endpoint_key("https://lh.example:443"),
            "https://lh.example:443"
        );
    }

    #[test]
    fn tokens_are_saved_by_endpoint_for_the_owner_only() {
        let dir = scratch("save");
        let path = dir.join("leasehold").join("credentials");
        assert_eq!(lookup_in(&path, "127.0.0.1:1").expect("no file"), None);
        save_in(&path, "http://127.0.0.1:1", &token(1)).expect("save");
        save_in(&path, "127.0.0.1:2", &token(2)).expect("save");
        save_in(&path, "127.0.0.1:1", &token(3)).expect("replace");
        assert_eq!(
            lookup_in(&path, "127.0.0.1:1").expect("read"),
            Some(token(3))
        );
        assert_eq!(
            lookup_in(&path, "http://127.0.0.1:2").expect("read"),
            Some(token(2))
        );
        assert_eq!(lookup_in(&path, "127.0.0.1:9").expect("read"), None);
        let mode = |p: &Path| fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("folder")), 0o700);
        let names: Vec<_> = fs::read_dir(path.parent().expect("folder"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["credentials"], "no scratch file left");
        fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_mangled_token_is_refused_without_being_shown() {
        let dir = scratch("mangled");
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("credentials");
        let secret = "ab".repeat(31);
        fs::write(
            &path,
            format!(r#"{{"tokens": {{"http://h:1": "lh_0123456789abcdef_{secret}"}}}}"#),
        )
        .expect("write");
        let message = lookup_in(&path, "h:1").expect_err("mangled").to_string();
        assert!(!message.contains(&secret), "{message}");
        assert!(message.contains("http://h:1"), "{message}");
        fs::write(&path, "not json").expect("write");
        assert!(lookup_in(&path, "h:1").is_err());
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
