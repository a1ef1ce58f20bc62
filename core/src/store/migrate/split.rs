//! Reading a migration outside a transaction statement by statement: where its statements end,
//! and which index a `CREATE INDEX CONCURRENTLY` builds.

/// The statements of `sql`, split at semicolons outside quotes, quoted identifiers, dollar
/// quotes and comments; statements holding only comments and space are left out.
pub(super) fn statements(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |n| i + 2 + n + 2);
            }
            quote @ (b'\'' | b'"') => {
                // A doubled quote inside is an escaped one: skipping to the next quote and
                // going on from there reads it as two quoted parts, which splits the same.
                i = sql[i + 1..]
                    .find(quote as char)
                    .map_or(bytes.len(), |n| i + 1 + n + 1);
            }
            b'$' => match dollar_tag(&sql[i..]) {
                Some(tag) => {
                    let body = i + tag.len();
                    i = sql[body..]
                        .find(tag)
                        .map_or(bytes.len(), |n| body + n + tag.len());
                }
                None => i += 1,
            },
            b';' => {
                push(&mut out, &sql[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    push(&mut out, &sql[start..]);
    out
}

fn push<'a>(out: &mut Vec<&'a str>, statement: &'a str) {
    if !strip_comments(statement).trim().is_empty() {
        out.push(statement.trim());
    }
}

/// `$tag$` or `$$` at the start of `s`, if it opens a dollar quote.
fn dollar_tag(s: &str) -> Option<&str> {
    let end = s[1..].find('$')? + 1;
    let tag = &s[1..end];
    let plain = tag
        .chars()
        .enumerate()
        .all(|(n, c)| c == '_' || c.is_ascii_alphabetic() || (n > 0 && c.is_ascii_digit()));
    plain.then(|| &s[..=end])
}

/// `statement` without its `--` comment lines, for reading its words.
fn strip_comments(statement: &str) -> String {
    statement
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The index a `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name ON …` builds; `None` for
/// any other statement. A failed concurrent build leaves an invalid index of that name behind,
/// which the runner drops before it tries again. The name must be a plain lowercase identifier,
/// so that the catalog lookup finds it as written.
pub(super) fn concurrent_index(statement: &str) -> Result<Option<String>, String> {
    let text = strip_comments(statement);
    let words: Vec<&str> = text.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let mut at = match upper.first().map(String::as_str) {
        Some("CREATE") => 1,
        _ => return Ok(None),
    };
    if upper.get(at).map(String::as_str) == Some("UNIQUE") {
        at += 1;
    }
    if upper.get(at).map(String::as_str) != Some("INDEX")
        || upper.get(at + 1).map(String::as_str) != Some("CONCURRENTLY")
    {
        return Ok(None);
    }
    at += 2;
    if upper
        .get(at..at + 3)
        .is_some_and(|w| w == ["IF", "NOT", "EXISTS"])
    {
        at += 3;
    }
    let name = words
        .get(at)
        .filter(|_| upper.get(at).map(String::as_str) != Some("ON"))
        .ok_or_else(|| format!("a concurrent index build must name its index: {statement}"))?;
    let plain = name
        .chars()
        .all(|c| c == '_' || c.is_ascii_lowercase() || c.is_ascii_digit());
    if !plain {
        return Err(format!(
            "a concurrent index build must name its index as a plain lowercase identifier, \
             not {name}"
        ));
    }
    Ok(Some((*name).to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_end_at_semicolons_outside_quotes_and_comments() {
        let sql = "-- a comment; not a split\n\
                   CREATE INDEX a ON t (x);\n\
                   /* block; comment */ SELECT 'a;b', \"c;d\" FROM t;\n\
                   DO $body$ BEGIN PERFORM 1; END $body$;\n\
                   SELECT $$x;y$$;\n\
                   SELECT 'it''s; fine';\n\
                   -- only a trailing comment;\n";
        assert_eq!(
            statements(sql),
            [
                "-- a comment; not a split\nCREATE INDEX a ON t (x)",
                "/* block; comment */ SELECT 'a;b', \"c;d\" FROM t",
                "DO $body$ BEGIN PERFORM 1; END $body$",
                "SELECT $$x;y$$",
                "SELECT 'it''s; fine'",
            ]
        );
        assert_eq!(statements("SELECT 1"), ["SELECT 1"]);
        assert!(statements("  -- nothing\n").is_empty());
        // A positional parameter is not a dollar quote.
        assert_eq!(statements("SELECT $1; SELECT 2"), ["SELECT $1", "SELECT 2"]);
    }

    #[test]
    fn concurrent_index_builds_are_recognised_by_their_index_name() {
        let check = |sql: &str, expected: Option<&str>| {
            assert_eq!(
                concurrent_index(sql).expect(sql).as_deref(),
                expected,
                "{sql}"
            );
        };
        check(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_x_idx ON runs (x)",
            Some("runs_x_idx"),
        );
        check(
            "-- why\ncreate unique index concurrently runs_y ON runs (y)",
            Some("runs_y"),
        );
        check("CREATE INDEX runs_x_idx ON runs (x)", None);
        check("ALTER TABLE runs DROP CONSTRAINT IF EXISTS c", None);
        check("DROP INDEX CONCURRENTLY IF EXISTS runs_x_idx", None);
        for bad in [
            "CREATE INDEX CONCURRENTLY ON runs (x)",
            "CREATE INDEX CONCURRENTLY \"Runs\" ON runs (x)",
        ] {
            assert!(concurrent_index(bad).is_err(), "{bad}");
        }
    }
}
