//! Finding the machine's own PostgreSQL server binaries: nothing is downloaded.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Error;

/// The programs a folder must hold to run a private cluster.
const TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// What to install when no binaries are found.
pub const INSTALL_HINT: &str = "install the PostgreSQL server \
    (Debian/Ubuntu: `sudo apt-get install postgresql`; macOS: `brew install postgresql@16`)";

/// Where [`Bindir::find`] looks when it is not told, after "found".
pub const SEARCHED: &str = "on PATH, in `pg_config --bindir`, /usr/lib/postgresql/*/bin, \
    /usr/local/opt/postgresql*/bin, /opt/homebrew/opt/postgresql*/bin or /opt/homebrew/bin";

/// A folder holding `initdb`, `pg_ctl` and `postgres`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bindir(PathBuf);

impl Bindir {
    /// The binaries to use. `only` is the only folder considered when given; otherwise the
    /// first folder searched (PATH, `pg_config --bindir`, then the usual install places, highest
    /// version first) whose server is `want_version` (the version of an existing cluster, as its
    /// `PG_VERSION` file says), or the first of them when there is no cluster yet.
    ///
    /// # Errors
    /// [`Error::NotFound`], naming what to install; [`Error::WrongVersion`].
    pub fn find(only: Option<&Path>, want_version: Option<&str>) -> Result<Bindir, Error> {
        let searched = match only {
            Some(dir) => vec![dir.to_owned()],
            None => candidates(),
        };
        let found: Vec<Bindir> = searched
            .into_iter()
            .filter(|dir| holds_tools(dir))
            .map(Bindir)
            .collect();
        let Some(first) = found.first() else {
            return Err(Error::NotFound {
                only: only.map(Path::to_owned),
            });
        };
        let Some(want) = want_version else {
            return Ok(first.clone());
        };
        if let Some(bindir) = found
            .iter()
            .find(|bindir| bindir.version().is_ok_and(|v| same_major(want, &v)))
        {
            return Ok(bindir.clone());
        }
        Err(Error::WrongVersion {
            want: want.to_owned(),
            found: first.version().unwrap_or_else(|_| "unknown".to_owned()),
            dir: first.0.clone(),
        })
    }

    /// A folder known to hold the binaries, such as the `BINDIR` a running server reports in
    /// `pg_config`; nothing is checked.
    pub fn new(dir: PathBuf) -> Self {
        Self(dir)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path of one of its programs.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The server's version as `postgres --version` prints it after "(PostgreSQL) ", such as
    /// `15.13` or `17beta1`.
    ///
    /// # Errors
    /// If `postgres` cannot run or names no version.
    pub fn version(&self) -> Result<String, Error> {
        let program = self.tool("postgres");
        let output = Command::new(&program)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(Error::io(format!("running {}", program.display())))?;
        let text = String::from_utf8_lossy(&output.stdout);
        parse_version(&text).ok_or_else(|| Error::NoVersion {
            program,
            printed: text.trim().to_owned(),
        })
    }
}

/// Folders that may hold the binaries, in the order they are tried: `PATH`, `pg_config --bindir`,
/// then the usual install places, highest version first within each.
fn candidates() -> Vec<PathBuf> {
    let on_path: Vec<PathBuf> = env::var_os("PATH")
        .map(|path| env::split_paths(&path).collect())
        .unwrap_or_default();
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    on_path
        .into_iter()
        .chain(from_pg_config)
        .chain(versioned_bindirs(Path::new("/usr/lib/postgresql"), ""))
        .chain(versioned_bindirs(Path::new("/usr/local/opt"), "postgresql"))
        .chain(versioned_bindirs(
            Path::new("/opt/homebrew/opt"),
            "postgresql",
        ))
        .chain([PathBuf::from("/opt/homebrew/bin")])
        .collect()
}

fn holds_tools(dir: &Path) -> bool {
    TOOLS.iter().all(|tool| dir.join(tool).is_file())
}

/// `<parent>/<prefix>*/bin`, highest version first.
fn versioned_bindirs(parent: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let names: Vec<String> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    newest_first(&names, prefix)
        .into_iter()
        .map(|name| parent.join(name).join("bin"))
        .collect()
}

/// The names that start with `prefix`, ordered by the numbers in the rest, highest first:
/// `postgresql@17` before `postgresql@16`, `16` before `9.6`.
fn newest_first<'a>(names: &'a [String], prefix: &str) -> Vec<&'a str> {
    let mut versioned: Vec<(Vec<u32>, &str)> = names
        .iter()
        .filter_map(|name| {
            let rest = name.strip_prefix(prefix)?;
            let numbers = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            Some((numbers, name.as_str()))
        })
        .collect();
    versioned.sort_by(|a, b| b.0.cmp(&a.0));
    versioned.into_iter().map(|(_, name)| name).collect()
}

/// `15.13` from `postgres (PostgreSQL) 15.13 (Debian 15.13-0+deb12u1)`.
fn parse_version(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("(PostgreSQL)")?;
    let version = rest.split_whitespace().next()?;
    version
        .starts_with(|c: char| c.is_ascii_digit())
        .then(|| version.to_owned())
}

/// Whether a server of `version` (`15.13`, `9.6.24`, `17beta1`) can run a cluster whose
/// `PG_VERSION` says `cluster` (`15`, `9.6`, `17`).
fn same_major(cluster: &str, version: &str) -> bool {
    version
        .strip_prefix(cluster)
        .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_postgres_output() {
        let check = |text: &str, want: Option<&str>| {
            assert_eq!(parse_version(text).as_deref(), want, "{text}");
        };
        check(
            "postgres (PostgreSQL) 15.13 (Debian 15.13-0+deb12u1)\n",
            Some("15.13"),
        );
        check("postgres (PostgreSQL) 17beta1\n", Some("17beta1"));
        check("postgres (PostgreSQL) 9.6.24\n", Some("9.6.24"));
        check("something else\n", None);
        check("postgres (PostgreSQL) \n", None);
    }

    #[test]
    fn major_versions_match_by_prefix_not_by_digits() {
        assert!(same_major("15", "15.13"));
        assert!(same_major("15", "15"));
        assert!(same_major("17", "17beta1"));
        assert!(same_major("9.6", "9.6.24"));
        assert!(!same_major("15", "16.1"));
        assert!(!same_major("1", "15.13"));
        assert!(!same_major("9.6", "9.5.1"));
    }

    #[test]
    fn versioned_folders_are_ordered_highest_first() {
        let names: Vec<String> = ["9.6", "16", "15", "other"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(newest_first(&names, ""), ["16", "15", "9.6", "other"]);
        let brew: Vec<String> = ["postgresql@14", "postgresql", "postgresql@16", "python"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(
            newest_first(&brew, "postgresql"),
            ["postgresql@16", "postgresql@14", "postgresql"]
        );
    }

    #[test]
    fn a_folder_without_binaries_names_what_to_install() {
        let error = Bindir::find(Some(Path::new("/nonexistent/leasehold-bindir")), None)
            .expect_err("no binaries there");
        let message = error.to_string();
        assert!(
            message.contains("/nonexistent/leasehold-bindir"),
            "{message}"
        );
        assert!(
            message.contains("sudo apt-get install postgresql"),
            "{message}"
        );
        assert!(message.contains("brew install postgresql@16"), "{message}");
    }

    #[test]
    fn the_first_folder_holding_every_tool_is_chosen() {
        let root =
            env::temp_dir().join(format!("leasehold-pgcluster-bindir-{}", std::process::id()));
        let partial = root.join("partial");
        let whole = root.join("whole");
        fs::create_dir_all(&partial).expect("create");
        fs::create_dir_all(&whole).expect("create");
        fs::write(partial.join("initdb"), "").expect("write");
        for tool in TOOLS {
            fs::write(whole.join(tool), "").expect("write");
        }
        assert!(!holds_tools(&partial));
        assert!(holds_tools(&whole));
        assert_eq!(
            Bindir::find(Some(&whole), None).expect("found"),
            Bindir::new(whole.clone())
        );
        assert!(matches!(
            Bindir::find(Some(&partial), None),
            Err(Error::NotFound { only: Some(_) })
        ));
        fs::remove_dir_all(&root).expect("remove");
    }
}
