//! docs/lease_protocol.md names the statements that implement each rule and the tests that prove
//! it, with a link to the file of each. This test keeps those names and links true as the code
//! moves: every linked file exists, and every name linked to a file stands in it.

use std::path::{Path, PathBuf};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("core sits in the repository")
        .to_path_buf()
}

/// The `[text](target)` links of a markdown text, in order.
fn links(markdown: &str) -> Vec<(&str, &str)> {
    let mut found = Vec::new();
    let mut rest = markdown;
    while let Some(open) = rest.find('[') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find("](") else { break };
        let text = &rest[..close];
        let after = &rest[close + 2..];
        let Some(end) = after.find(')') else { break };
        if !text.contains('[') {
            found.push((text, &after[..end]));
        }
        rest = &after[end..];
    }
    found
}

/// The names in backticks of a link's text that are Rust or SQL identifiers (not paths).
fn names(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2).filter(|name| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn stands_in(name: &str, file: &str) -> bool {
    file.match_indices(name).any(|(at, _)| {
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let before = file[..at].chars().next_back().is_none_or(|c| !word(c));
        let after = file[at + name.len()..]
            .chars()
            .next()
            .is_none_or(|c| !word(c));
        before && after
    })
}

#[test]
fn every_statement_and_test_the_protocol_names_stands_where_it_links() {
    let docs = repository().join("docs");
    let protocol = std::fs::read_to_string(docs.join("lease_protocol.md")).expect("the protocol");
    let mut broken = Vec::new();
    let mut checked = 0;
    for (text, target) in links(&protocol) {
        if target.starts_with("http") || target.starts_with('#') {
            continue;
        }
        let path = docs.join(target.split('#').next().unwrap_or(target));
        let Ok(file) = std::fs::read_to_string(&path) else {
            broken.push(format!("{target}: no such file"));
            continue;
        };
        for name in names(text) {
            checked += 1;
            if !stands_in(name, &file) {
                broken.push(format!("{name}: not in {target}"));
            }
        }
    }
    assert!(
        checked >= 50,
        "only {checked} names checked: is the page still there?"
    );
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn links_and_names_are_read_as_written() {
    let text = "see [`claim_runs`](../core/src/store/claims.rs) and [a, `b_c`](x.rs)";
    assert_eq!(
        links(text),
        vec![
            ("`claim_runs`", "../core/src/store/claims.rs"),
            ("a, `b_c`", "x.rs")
        ]
    );
    assert_eq!(
        names("`a`, `core/x.rs`, `b_1`").collect::<Vec<_>>(),
        ["a", "b_1"]
    );
    assert!(stands_in("claim", "fn claim(x)"));
    assert!(!stands_in("claim", "fn claim_runs(x)"));
}
