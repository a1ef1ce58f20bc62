//! The `exec` allow-list: what an entry of the worker's `--exec-allow` means, and whether it
//! lets a node run its `argv`. Pure rules.

use std::fmt;
use std::str::FromStr;

/// One entry of the worker's `--exec-allow`: a program and the arguments that must follow it.
///
/// An entry is written as a command line: its first word is the program, compared with a node's
/// `argv[0]` as an exact string (`sh` allows `sh`, not `/bin/sh`); the words after it are a
/// fixed prefix of arguments, which the node's `argv[1..]` must start with, word for word. So
/// `/usr/bin/python3 /opt/jobs/report.py` lets a node run that script with any further
/// arguments, and nothing else through that interpreter.
///
/// Words are split like a POSIX shell splits them, without any expansion:
/// - spaces, tabs and newlines separate words;
/// - `'…'` keeps everything up to the next `'` as it is;
/// - `"…"` keeps everything up to the next unescaped `"`, where `\"`, `\\`, `` \` ``, `\$` and
///   a backslash before a newline are escapes and any other backslash is kept;
/// - outside quotes, `\` keeps the next character as it is;
/// - `$`, `~`, `*` and the like are plain characters: nothing is expanded.
///
/// An unterminated quote, a final lone `\` or an empty entry is an error. Entries come
/// comma-separated in `LEASEHOLD_EXEC_ALLOW` (and in one flag value), so no entry can hold a
/// comma.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecAllow {
    /// The program, as `argv[0]` must name it.
    pub program: String,
    /// The arguments `argv[1..]` must start with.
    pub args: Vec<String>,
}

/// Why an `--exec-allow` entry is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--exec-allow {entry:?}: {why}")]
pub struct ExecAllowError {
    entry: String,
    why: &'static str,
}

impl FromStr for ExecAllow {
    type Err = ExecAllowError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let mut words = split_words(entry)
            .map_err(|why| ExecAllowError {
                entry: entry.to_owned(),
                why,
            })?
            .into_iter();
        let program = words
            .next()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| ExecAllowError {
                entry: entry.to_owned(),
                why: "names no program",
            })?;
        Ok(Self {
            program,
            args: words.collect(),
        })
    }
}

impl fmt::Display for ExecAllow {
    /// The entry written back in the syntax it is parsed from, each word quoted when it needs it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, word) in std::iter::once(&self.program).chain(&self.args).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let plain = !word.is_empty()
                && word
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:@%,".contains(&b));
            if plain {
                f.write_str(word)?;
            } else {
                write!(f, "'{}'", word.replace('\'', r"'\''"))?;
            }
        }
        Ok(())
    }
}

impl ExecAllow {
    /// Whether this entry lets a node run `argv`.
    pub fn permits(&self, argv: &[String]) -> bool {
        argv.first() == Some(&self.program) && argv[1..].starts_with(&self.args)
    }

    /// Whether the entry allows a command interpreter with no script named: any node could then
    /// run any code on the worker's host (`sh -c …`, `python3 -c …`).
    pub fn is_bare_interpreter(&self) -> bool {
        const INTERPRETERS: [&str; 18] = [
            "sh", "bash", "dash", "zsh", "ksh", "mksh", "fish", "csh", "tcsh", "busybox", "env",
            "perl", "ruby", "node", "nodejs", "php", "lua", "pwsh",
        ];
        let name = self.program.rsplit('/').next().unwrap_or(&self.program);
        let python = name
            .strip_prefix("python")
            .is_some_and(|v| v.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
        self.args.is_empty() && (python || INTERPRETERS.contains(&name))
    }
}

/// `line` split into words as described on [`ExecAllow`].
fn split_words(line: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    // The word being read, if one has started: `''` starts an empty word.
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("a single quote is not closed"),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '`' | '$')) => w.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err("a double quote is not closed"),
                        },
                        Some(c) => w.push(c),
                        None => return Err("a double quote is not closed"),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("it ends with a lone backslash"),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    if words.is_empty() {
        return Err("names no program");
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(s: &str) -> ExecAllow {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|&w| w.to_owned()).collect()
    }

    #[test]
    fn entries_split_like_a_shell_without_expansion() {
        let check = |line: &str, want: &[&str]| {
            assert_eq!(split_words(line), Ok(argv(want)), "{line:?}");
        };
        check("sh", &["sh"]);
        check(
            "  /usr/bin/python3\t/opt/jobs/report.py  ",
            &["/usr/bin/python3", "/opt/jobs/report.py"],
        );
        check(
            "'/opt/my jobs/run' --mode 'a b'",
            &["/opt/my jobs/run", "--mode", "a b"],
        );
        check(
            r#"sh -c "echo \"\$HOME\" \x""#,
            &["sh", "-c", r#"echo "$HOME" \x"#],
        );
        check(r"a\ b c\\d", &["a b", r"c\d"]);
        check(r#"'it'\''s' "" ''"#, &["it's", "", ""]);
        check("a'b'\"c\"d", &["abcd"]);
        check("$HOME ~ *.py", &["$HOME", "~", "*.py"]);
        check("\"a\\\nb\"", &["ab"]);
    }

    #[test]
    fn malformed_entries_are_refused() {
        for (line, why) in [
            ("", "names no program"),
            ("   ", "names no program"),
            ("'' x", "names no program"),
            ("'sh", "a single quote is not closed"),
            ("\"sh", "a double quote is not closed"),
            ("\"sh\\", "a double quote is not closed"),
            ("sh \\", "it ends with a lone backslash"),
        ] {
            let err = line.parse::<ExecAllow>().unwrap_err();
            assert_eq!(err.why, why, "{line:?}");
            assert!(err.to_string().starts_with("--exec-allow "), "{err}");
        }
    }

    #[test]
    fn a_program_alone_allows_any_arguments() {
        let sh = entry("sh");
        assert!(sh.permits(&argv(&["sh"])));
        assert!(sh.permits(&argv(&["sh", "-c", "anything"])));
        assert!(!sh.permits(&argv(&["/bin/sh", "-c", "x"])));
        assert!(!sh.permits(&argv(&["bash"])));
        assert!(!sh.permits(&[]));
    }

    #[test]
    fn an_argument_prefix_must_match_word_for_word() {
        let report = entry("/usr/bin/python3 /opt/jobs/report.py");
        assert!(report.permits(&argv(&["/usr/bin/python3", "/opt/jobs/report.py"])));
        assert!(report.permits(&argv(&[
            "/usr/bin/python3",
            "/opt/jobs/report.py",
            "--day",
            "1"
        ])));
        assert!(!report.permits(&argv(&["/usr/bin/python3"])));
        assert!(!report.permits(&argv(&["/usr/bin/python3", "-c", "import os"])));
        assert!(!report.permits(&argv(&["/usr/bin/python3", "/opt/jobs/report.py2"])));
        assert!(!report.permits(&argv(&["/usr/bin/python3", "/opt/jobs/report.py "])));
        assert!(!report.permits(&argv(&["python3", "/opt/jobs/report.py"])));
        // Options the interpreter reads before the script are arguments like any other.
        assert!(!report.permits(&argv(&["/usr/bin/python3", "-i", "/opt/jobs/report.py"])));
    }

    #[test]
    fn entries_print_in_their_own_syntax() {
        for line in [
            "sh",
            "/usr/bin/python3 /opt/x.py",
            "'/opt/my jobs/run' 'it'\\''s' ''",
        ] {
            let parsed = entry(line);
            assert_eq!(entry(&parsed.to_string()), parsed, "{line:?} as {parsed}");
        }
        assert_eq!(entry("'a b' c").to_string(), "'a b' c");
    }

    #[test]
    fn bare_interpreters_are_told_apart_from_scripts() {
        for bare in [
            "sh",
            "/bin/sh",
            "bash",
            "/usr/bin/python3",
            "python3.12",
            "python",
            "/usr/bin/env",
            "node",
            "perl",
        ] {
            assert!(entry(bare).is_bare_interpreter(), "{bare}");
        }
        for not in [
            "/bin/sh /opt/jobs/x.sh",
            "python3 report.py",
            "/opt/jobs/report",
            "pythonista",
            "/usr/bin/jq",
        ] {
            assert!(!entry(not).is_bare_interpreter(), "{not}");
        }
    }
}
