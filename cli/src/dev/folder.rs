//! The data folder: where it is by default, and what it holds.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The files of a data folder. Only these are ever deleted (by `--fresh`), so pointing
/// `--data-dir` at a folder holding other things does not lose them.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The data folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cluster (`initdb -D`).
    pub fn pgdata(&self) -> PathBuf {
        self.root.join("pgdata")
    }

    /// Where `initdb` creates the cluster before it is renamed to [`Layout::pgdata`].
    pub fn pgdata_creating(&self) -> PathBuf {
        self.root.join("pgdata.creating")
    }

    /// The server's log, appended to by every start.
    pub fn log(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// The `postgres` superuser's password, chosen at `initdb`.
    pub fn password(&self) -> PathBuf {
        self.root.join("password")
    }

    /// Dev mode's admin API token, readable by its owner only.
    pub fn token(&self) -> PathBuf {
        self.root.join("token")
    }

    /// Locked while a `leasehold dev` uses the folder.
    pub fn lock(&self) -> PathBuf {
        self.root.join("dev.lock")
    }
}

/// Where the data folder is unless `--data-dir` says: `$XDG_DATA_HOME/leasehold/dev`, else
/// `$HOME/.local/share/leasehold/dev` (`$HOME/Library/Application Support/leasehold/dev` on
/// macOS). Root gets `/var/lib/leasehold/dev` instead of a folder under its home, which the
/// `postgres` user that runs the server for root could not enter.
pub fn default_dir(as_root: bool) -> anyhow::Result<PathBuf> {
    default_dir_from(
        env::var_os("XDG_DATA_HOME"),
        env::var_os("HOME"),
        as_root,
        cfg!(target_os = "macos"),
    )
    .ok_or_else(|| {
        anyhow::anyhow!("neither XDG_DATA_HOME nor HOME is set: choose a folder with --data-dir")
    })
}

fn default_dir_from(
    xdg_data_home: Option<OsString>,
    home: Option<OsString>,
    as_root: bool,
    macos: bool,
) -> Option<PathBuf> {
    // The XDG spec says to ignore a relative XDG_DATA_HOME.
    let xdg = xdg_data_home
        .map(PathBuf::from)
        .filter(|path| path.is_absolute());
    let base = if macos {
        PathBuf::from(home?).join("Library/Application Support")
    } else if let Some(xdg) = xdg {
        xdg
    } else if as_root {
        PathBuf::from("/var/lib")
    } else {
        PathBuf::from(home?).join(".local/share")
    };
    Some(base.join("leasehold").join("dev"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(xdg: Option<&str>, home: Option<&str>, root: bool, macos: bool, want: Option<&str>) {
        let got = default_dir_from(xdg.map(Into::into), home.map(Into::into), root, macos);
        assert_eq!(
            got,
            want.map(PathBuf::from),
            "{xdg:?} {home:?} root={root} macos={macos}"
        );
    }

    #[test]
    fn the_default_folder_follows_the_platform() {
        check(
            Some("/x/data"),
            Some("/home/a"),
            false,
            false,
            Some("/x/data/leasehold/dev"),
        );
        check(
            None,
            Some("/home/a"),
            false,
            false,
            Some("/home/a/.local/share/leasehold/dev"),
        );
        check(
            Some("relative"),
            Some("/home/a"),
            false,
            false,
            Some("/home/a/.local/share/leasehold/dev"),
        );
        check(
            None,
            Some("/root"),
            true,
            false,
            Some("/var/lib/leasehold/dev"),
        );
        check(
            Some("/x/data"),
            Some("/root"),
            true,
            false,
            Some("/x/data/leasehold/dev"),
        );
        check(
            Some("/x/data"),
            Some("/Users/a"),
            false,
            true,
            Some("/Users/a/Library/Application Support/leasehold/dev"),
        );
        check(None, None, false, false, None);
    }
}
