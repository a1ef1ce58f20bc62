//! The migrations this build embeds, read from their files, and the pure rules over them: which
//! schema a build knows, which migrations are pending, and whether a database may be served.
//!
//! A migration file is `migrations/V{n}__{name}.sql`. Its first line is its header, which says
//! what kind of step it is and how it runs:
//!
//! ```text
//! -- migration: expand, in a transaction
//! -- migration: expand, outside a transaction
//! -- migration: contract to floor 2, outside a transaction
//! ```
//!
//! An *expand* step keeps every statement of the previous releases working; a *contract* step
//! breaks the releases whose schema is below its floor, and raises the database's compatibility
//! floor to it before it runs. A migration *outside a transaction* runs statement by statement
//! (`CREATE INDEX CONCURRENTLY` cannot run in one), so each of its statements must be safe to
//! run again (`IF [NOT] EXISTS`) after a failure part-way.

use std::hash::{Hash, Hasher};

use siphasher::sip::SipHasher13;

/// A migration file as embedded by `build.rs`.
pub(super) struct EmbeddedFile {
    pub(super) file_name: &'static str,
    pub(super) text: &'static str,
}

/// Every migration file, in file-name order.
pub(super) static FILES: &[EmbeddedFile] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The environment variable that makes a build behave as one that knows the schema only up to a
/// version: for rolling-upgrade rehearsals and tests.
pub const SCHEMA_CEILING_ENV: &str = "LEASEHOLD_SCHEMA_CEILING";

/// What a migration does to the releases before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Keeps every statement of the previous releases working.
    Expand,
    /// Breaks the releases that know a schema below `floor`; raises the floor to it first.
    Contract {
        /// The oldest schema a release may know and still run once this step is applied.
        floor: i32,
    },
}

/// One migration of this build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// Its version, the `n` of `V{n}__{name}.sql`.
    pub version: i32,
    /// Its name, the `name` of `V{n}__{name}.sql`.
    pub name: String,
    /// Expand or contract.
    pub step: Step,
    /// Whether it runs in one transaction, or statement by statement.
    pub transactional: bool,
    /// The SQL after the header line.
    pub(super) sql: &'static str,
    /// The checksum recorded in the history: refinery's (SipHash-1-3 of name, version and SQL),
    /// over the SQL without its header, so that migrations recorded before headers existed
    /// still match.
    pub(super) checksum: u64,
}

impl Migration {
    /// `V{n}__{name}`, as the history and the files name it.
    pub fn label(&self) -> String {
        format!("V{}__{}", self.version, self.name)
    }

    /// The header's words: `expand, in a transaction`.
    pub fn describe(&self) -> String {
        let step = match self.step {
            Step::Expand => "expand".to_owned(),
            Step::Contract { floor } => format!("contract (raises the floor to {floor})"),
        };
        let transaction = if self.transactional {
            "in a transaction"
        } else {
            "outside a transaction"
        };
        format!("{step}, {transaction}")
    }
}

const HEADER_PREFIX: &str = "-- migration: ";

/// Reads one migration file; the error names the file and what is wrong.
pub(super) fn parse(file_name: &str, text: &'static str) -> Result<Migration, String> {
    let bad = |why: String| format!("migration file {file_name}: {why}");
    let stem = file_name
        .strip_suffix(".sql")
        .ok_or_else(|| bad("not a .sql file".to_owned()))?;
    let (version, name) = stem
        .strip_prefix('V')
        .and_then(|rest| rest.split_once("__"))
        .ok_or_else(|| bad("the name is not V{n}__{name}.sql".to_owned()))?;
    let version: i32 = version
        .parse()
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| bad(format!("version {version:?} is not a positive integer")))?;
    if name.is_empty() {
        return Err(bad("the name after V{n}__ is empty".to_owned()));
    }
    let (header, sql) = text.split_once('\n').unwrap_or((text, ""));
    let (step, transactional) = parse_header(header).map_err(bad)?;
    if let Step::Contract { floor } = step
        && floor > version
    {
        return Err(bad(format!(
            "a contract step cannot raise the floor to {floor}, above its own version"
        )));
    }
    Ok(Migration {
        version,
        name: name.to_owned(),
        step,
        transactional,
        sql,
        checksum: checksum(name, version, sql),
    })
}

/// Reads `-- migration: <expand | contract to floor N>, <in | outside> a transaction`.
pub(super) fn parse_header(line: &str) -> Result<(Step, bool), String> {
    let expected = "the first line must be `-- migration: expand|contract to floor N, \
                    in|outside a transaction`";
    let rest = line
        .trim_end()
        .strip_prefix(HEADER_PREFIX)
        .ok_or_else(|| expected.to_owned())?;
    let (step, transaction) = rest.split_once(", ").ok_or_else(|| expected.to_owned())?;
    let step = match step {
        "expand" => Step::Expand,
        other => {
            let floor = other
                .strip_prefix("contract to floor ")
                .ok_or_else(|| expected.to_owned())?;
            let floor: i32 = floor
                .parse()
                .ok()
                .filter(|f| *f >= 1)
                .ok_or_else(|| format!("floor {floor:?} is not a positive integer"))?;
            Step::Contract { floor }
        }
    };
    let transactional = match transaction {
        "in a transaction" => true,
        "outside a transaction" => false,
        _ => return Err(expected.to_owned()),
    };
    Ok((step, transactional))
}

/// refinery 0.10's checksum, which the history of every database already holds for V1 to V5.
fn checksum(name: &str, version: i32, sql: &str) -> u64 {
    let mut hasher = SipHasher13::new();
    name.hash(&mut hasher);
    version.hash(&mut hasher);
    sql.hash(&mut hasher);
    hasher.finish()
}

/// The schema version a build knows: the newest it embeds, or `ceiling` (the value of
/// [`SCHEMA_CEILING_ENV`]) when one is set. A ceiling must be a version between 1 and the newest
/// embedded: a higher one would pretend to know migrations this build does not carry.
pub(super) fn known(ceiling: Option<&str>, newest: i32) -> Result<i32, String> {
    let Some(raw) = ceiling else {
        return Ok(newest);
    };
    match raw.trim().parse::<i32>() {
        Ok(v) if (1..=newest).contains(&v) => Ok(v),
        Ok(v) => Err(format!(
            "{SCHEMA_CEILING_ENV}={v}: must be between 1 and {newest}, the newest schema this \
             build carries"
        )),
        Err(_) => Err(format!(
            "{SCHEMA_CEILING_ENV}={raw:?}: not a schema version (an integer)"
        )),
    }
}

/// A migration recorded in a database's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Recorded {
    pub(super) version: i32,
    pub(super) name: String,
    pub(super) checksum: String,
}

/// The migrations of `all` up to `known` that `recorded` lacks, in version order. Any version
/// missing is pending, whatever is recorded after it: migrations merged from parallel work may
/// carry lower numbers than some already applied. An applied migration whose name or checksum
/// differs from this build's file is an error: the database was migrated by another schema.
pub(super) fn pending<'a>(
    all: &'a [Migration],
    recorded: &[Recorded],
    known: i32,
) -> Result<Vec<&'a Migration>, String> {
    for r in recorded {
        if let Some(m) = all.iter().find(|m| m.version == r.version)
            && (m.name != r.name || m.checksum.to_string() != r.checksum)
        {
            return Err(format!(
                "the database recorded V{}__{} (checksum {}), which differs from this build's {} \
                 (checksum {}): it was migrated from other migration files",
                r.version,
                r.name,
                r.checksum,
                m.label(),
                m.checksum
            ));
        }
    }
    let mut pending: Vec<&Migration> = all
        .iter()
        .filter(|m| m.version <= known && !recorded.iter().any(|r| r.version == m.version))
        .collect();
    pending.sort_by_key(|m| m.version);
    Ok(pending)
}

/// Whether a build that knows schema `known` may serve a database whose compatibility floor is
/// `floor` and which lacks `pending` of the build's migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Serve it: nothing of the build's is missing and the floor is at or below what it knows,
    /// even when the database carries newer migrations (expand steps of a later release).
    Serve,
    /// Refuse: a contract step raised the floor above what this build knows.
    TooNew,
    /// Refuse: the database lacks migrations this build needs; `leasehold migrate` first.
    Behind,
}

/// The rule of [`Verdict`]. The floor comes first: migrating cannot help a build that is too old.
pub(super) fn verdict(floor: i32, known: i32, pending: usize) -> Verdict {
    if floor > known {
        Verdict::TooNew
    } else if pending > 0 {
        Verdict::Behind
    } else {
        Verdict::Serve
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migrations() -> Vec<Migration> {
        FILES
            .iter()
            .map(|f| parse(f.file_name, f.text))
            .collect::<Result<_, _>>()
            .expect("every migration file parses")
    }

    #[test]
    fn every_migration_has_a_header_and_a_unique_version() {
        let all = migrations();
        assert!(all.len() >= 8, "{} migrations", all.len());
        let mut versions: Vec<i32> = all.iter().map(|m| m.version).collect();
        versions.dedup();
        assert_eq!(versions.len(), all.len(), "duplicate versions");
        for m in &all {
            assert!(!m.sql.trim().is_empty(), "{} has no SQL", m.label());
        }
    }

    /// The checksums refinery 0.10 recorded for V1 to V5, before the files had headers: a
    /// database migrated then must still match.
    #[test]
    fn checksums_match_what_refinery_recorded_before_headers() {
        let recorded = [
            (1, 1_041_063_891_185_555_494_u64),
            (2, 2_904_042_816_088_751_001),
            (3, 18_399_530_631_733_461_700),
            (4, 16_732_856_421_736_997_063),
            (5, 13_081_087_303_824_888_908),
        ];
        let all = migrations();
        for (version, checksum) in recorded {
            let m = all.iter().find(|m| m.version == version).expect("embedded");
            assert_eq!(m.checksum, checksum, "{}", m.label());
        }
    }

    #[test]
    fn headers_are_read_and_bad_ones_refused_by_what_is_wrong() {
        let check = |line: &str, expected: Result<(Step, bool), &str>| {
            let got = parse_header(line);
            match expected {
                Ok(ok) => assert_eq!(got, Ok(ok), "{line}"),
                Err(says) => {
                    let e = got.expect_err(line);
                    assert!(e.contains(says), "{line}: {e}");
                }
            }
        };
        check(
            "-- migration: expand, in a transaction",
            Ok((Step::Expand, true)),
        );
        check(
            "-- migration: expand, outside a transaction",
            Ok((Step::Expand, false)),
        );
        check(
            "-- migration: contract to floor 2, outside a transaction\r",
            Ok((Step::Contract { floor: 2 }, false)),
        );
        check("-- The first schema.", Err("the first line must be"));
        check("-- migration: expand", Err("the first line must be"));
        check(
            "-- migration: shrink, in a transaction",
            Err("the first line must be"),
        );
        check(
            "-- migration: expand, in no transaction",
            Err("the first line must be"),
        );
        check(
            "-- migration: contract to floor 0, in a transaction",
            Err("floor \"0\""),
        );
        check(
            "-- migration: contract to floor x, in a transaction",
            Err("floor \"x\""),
        );
    }

    #[test]
    fn file_names_are_read_and_bad_ones_refused_by_name() {
        let m = parse(
            "V12__add_things.sql",
            "-- migration: expand, in a transaction\nSELECT 1;",
        )
        .expect("parses");
        assert_eq!(
            (m.version, m.name.as_str(), m.sql),
            (12, "add_things", "SELECT 1;")
        );
        for (name, says) in [
            ("V0__x.sql", "positive"),
            ("Vx__x.sql", "positive"),
            ("V1_x.sql", "V{n}__{name}"),
            ("V1__.sql", "empty"),
            ("V1__x.txt", ".sql"),
        ] {
            let e = parse(name, "-- migration: expand, in a transaction\n").expect_err(name);
            assert!(e.contains(name) && e.contains(says), "{e}");
        }
        let e = parse(
            "V3__x.sql",
            "-- migration: contract to floor 4, in a transaction\n",
        )
        .expect_err("floor above its version");
        assert!(e.contains("above its own version"), "{e}");
    }

    #[test]
    fn a_ceiling_caps_the_known_schema_within_what_the_build_carries() {
        assert_eq!(known(None, 10), Ok(10));
        assert_eq!(known(Some("9"), 10), Ok(9));
        assert_eq!(known(Some(" 1 "), 10), Ok(1));
        assert_eq!(known(Some("10"), 10), Ok(10));
        for bad in ["0", "11", "-3", "nine", ""] {
            let e = known(Some(bad), 10).expect_err(bad);
            assert!(e.contains(SCHEMA_CEILING_ENV), "{e}");
        }
    }

    fn migration(version: i32) -> Migration {
        Migration {
            version,
            name: format!("m{version}"),
            step: Step::Expand,
            transactional: true,
            sql: "",
            checksum: checksum(&format!("m{version}"), version, ""),
        }
    }

    fn recorded(m: &Migration) -> Recorded {
        Recorded {
            version: m.version,
            name: m.name.clone(),
            checksum: m.checksum.to_string(),
        }
    }

    #[test]
    fn missing_versions_are_pending_in_order_even_below_applied_ones() {
        let all: Vec<Migration> = [1, 2, 6, 7, 8, 9].into_iter().map(migration).collect();
        let applied: Vec<Recorded> = [&all[0], &all[1], &all[4]].map(recorded).to_vec();
        let versions = |known| {
            pending(&all, &applied, known)
                .expect("no divergence")
                .iter()
                .map(|m| m.version)
                .collect::<Vec<_>>()
        };
        assert_eq!(versions(9), [6, 7, 9]);
        assert_eq!(versions(8), [6, 7]);
        assert_eq!(versions(2), Vec::<i32>::new());
    }

    #[test]
    fn a_divergent_history_is_refused_naming_the_migration() {
        let all: Vec<Migration> = [1, 2].into_iter().map(migration).collect();
        let mut changed = recorded(&all[1]);
        changed.checksum = "42".to_owned();
        let e = pending(&all, &[recorded(&all[0]), changed], 2).expect_err("divergent");
        assert!(e.contains("V2__m2") && e.contains("42"), "{e}");
        // A recorded version this build does not carry (a newer release's) is not divergent.
        let future = Recorded {
            version: 30,
            name: "later".to_owned(),
            checksum: "1".to_owned(),
        };
        assert!(pending(&all, &[future], 2).is_ok());
    }

    #[test]
    fn a_build_serves_at_or_above_the_floor_and_refuses_below_it() {
        assert_eq!(verdict(1, 9, 0), Verdict::Serve);
        assert_eq!(verdict(2, 2, 0), Verdict::Serve);
        assert_eq!(verdict(3, 2, 0), Verdict::TooNew);
        assert_eq!(verdict(3, 2, 4), Verdict::TooNew);
        assert_eq!(verdict(1, 10, 1), Verdict::Behind);
    }
}
