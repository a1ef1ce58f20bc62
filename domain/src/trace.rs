//! A run's W3C trace context (<https://www.w3.org/TR/trace-context/>): the `traceparent` a run
//! is started under, and its `tracestate`, as they are stored with the run and handed on.
//!
//! Parsing follows the specification's rules for a receiver: a value that breaks them is not an
//! error but no value at all (the caller then starts a trace of its own), and a `traceparent` of
//! a later version is read by its version-00 prefix.

use std::fmt;

/// Longest `tracestate` the specification lets a vendor propagate.
const TRACE_STATE_MAX_BYTES: usize = 512;
/// Most list members of a `tracestate`.
const TRACE_STATE_MAX_MEMBERS: usize = 32;
/// Length of a version-00 `traceparent`: `00-` + 32 + `-` + 16 + `-` + 2.
const TRACE_PARENT_LEN: usize = 55;

/// A valid `traceparent`, held in its version-00 form: `00-{trace id}-{parent id}-{flags}`,
/// lowercase hex, neither id all zeros.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceParent(String);

impl TraceParent {
    /// The context `text` carries, or `None` when the text breaks the specification (a wrong
    /// length, upper-case or other non-hex characters, an all-zero id, the version `ff`, a
    /// version-00 value with more after it).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim_matches([' ', '\t']);
        let bytes = text.as_bytes();
        if bytes.len() < TRACE_PARENT_LEN || !text.is_char_boundary(TRACE_PARENT_LEN) {
            return None;
        }
        let version = &text[0..2];
        if !is_lower_hex(version) || version == "ff" {
            return None;
        }
        // A later version may carry more fields after the first four, behind a dash.
        let exact = bytes.len() == TRACE_PARENT_LEN;
        if !exact && (version == "00" || bytes[TRACE_PARENT_LEN] != b'-') {
            return None;
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let (trace_id, parent_id, flags) = (&text[3..35], &text[36..52], &text[53..55]);
        let valid = is_lower_hex(trace_id)
            && is_lower_hex(parent_id)
            && is_lower_hex(flags)
            && !is_zero(trace_id)
            && !is_zero(parent_id);
        // Built by hand: this runs for every claimed run, and `format!` cost several times more.
        valid.then(|| {
            let mut normal = String::with_capacity(TRACE_PARENT_LEN);
            for part in ["00-", trace_id, "-", parent_id, "-", flags] {
                normal.push_str(part);
            }
            Self(normal)
        })
    }

    /// The context of a span `span_id` in trace `trace_id`, or `None` when either id is all
    /// zeros, which names no trace or span.
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> Option<Self> {
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let flags = u8::from(sampled);
        Some(Self(format!(
            "00-{}-{}-{flags:02x}",
            hex(&trace_id),
            hex(&span_id)
        )))
    }

    /// The value, as a `traceparent` header carries it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trace id: 32 lowercase hex digits.
    pub fn trace_id(&self) -> &str {
        &self.0[3..35]
    }

    /// The parent's span id: 16 lowercase hex digits.
    pub fn span_id(&self) -> &str {
        &self.0[36..52]
    }

    /// The trace flags (bit 0: the caller sampled, recording the trace).
    pub fn flags(&self) -> u8 {
        u8::from_str_radix(&self.0[53..55], 16).unwrap_or(0)
    }

    /// Whether the caller sampled the trace.
    pub fn sampled(&self) -> bool {
        self.flags() & 1 == 1
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A valid `tracestate`: a comma-separated list of at most 32 `key=value` members, 512 bytes at
/// most, as the specification's list syntax allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceState(String);

impl TraceState {
    /// The state `text` carries, or `None` when it breaks the list syntax or is empty: the
    /// specification has a receiver drop a `tracestate` it cannot parse.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() > TRACE_STATE_MAX_BYTES {
            return None;
        }
        let members: Vec<&str> = text
            .split(',')
            .map(|m| m.trim_matches([' ', '\t']))
            .filter(|m| !m.is_empty())
            .collect();
        if members.is_empty()
            || members.len() > TRACE_STATE_MAX_MEMBERS
            || !members.iter().all(|m| is_member(m))
        {
            return None;
        }
        Some(Self(members.join(",")))
    }

    /// The value, as a `tracestate` header carries it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TraceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A run's trace context: where its spans hang, and the vendors' state that goes with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The span the run's work continues.
    pub parent: TraceParent,
    /// The callers' vendor state, handed on unchanged.
    pub state: Option<TraceState>,
}

/// One `key=value` list member: a key of lowercase letters, digits and `_-*/` (with an optional
/// `tenant@system` form), a value of printable ASCII other than `,` and `=`, not ending in a space.
fn is_member(member: &str) -> bool {
    let Some((key, value)) = member.split_once('=') else {
        return false;
    };
    let key_ok = |k: &str, max: usize| {
        !k.is_empty()
            && k.len() <= max
            && k.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'_' | b'-' | b'*' | b'/')
            })
    };
    let key_valid = match key.split_once('@') {
        Some((tenant, system)) => key_ok(tenant, 241) && key_ok(system, 14),
        None => key_ok(key, 256) && key.as_bytes()[0].is_ascii_lowercase(),
    };
    let value_valid = !value.is_empty()
        && value.len() <= 256
        && !value.ends_with(' ')
        && value
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=');
    key_valid && value_valid
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_zero(text: &str) -> bool {
    text.bytes().all(|b| b == b'0')
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn check(text: &str, expected: Option<&str>) {
        assert_eq!(
            TraceParent::parse(text).as_ref().map(TraceParent::as_str),
            expected,
            "{text:?}"
        );
    }

    #[test]
    fn a_traceparent_is_read_as_the_specification_says() {
        check(VALID, Some(VALID));
        check(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        // A later version is read by its version-00 prefix, with or without more fields.
        check(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-follows",
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09"),
        );
        check(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some(VALID),
        );
        // Surrounding blanks are allowed.
        check(&format!(" {VALID}\t"), Some(VALID));
    }

    #[test]
    fn a_traceparent_breaking_the_specification_is_no_traceparent() {
        let refused = [
            "",
            "junk",
            // Version ff is invalid; version 00 has nothing after its flags.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            // Upper case, a non-hex digit, all-zero ids.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Short ids, wrong separators, bad flags.
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0z",
            // Multi-byte text where the ids are.
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
        ];
        for text in refused {
            check(text, None);
        }
    }

    #[test]
    fn a_traceparent_names_its_trace_span_and_sampling() {
        let parsed = TraceParent::parse(VALID).expect("valid");
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.span_id(), "00f067aa0ba902b7");
        assert!(parsed.sampled());
        let made = TraceParent::new([0xab; 16], [1, 2, 3, 4, 5, 6, 7, 8], false).expect("ids");
        assert_eq!(
            made.as_str(),
            "00-abababababababababababababababab-0102030405060708-00"
        );
        assert!(!made.sampled());
        assert_eq!(TraceParent::parse(made.as_str()), Some(made));
        assert_eq!(TraceParent::new([0; 16], [1; 8], true), None);
        assert_eq!(TraceParent::new([1; 16], [0; 8], true), None);
    }

    #[test]
    fn a_tracestate_is_kept_when_it_follows_the_list_syntax() {
        let parse = |t: &str| TraceState::parse(t).map(|s| s.as_str().to_owned());
        assert_eq!(
            parse("congo=t61rcWkgMzE").as_deref(),
            Some("congo=t61rcWkgMzE")
        );
        assert_eq!(
            parse("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE,,").as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        assert_eq!(parse("tenant@sys=v").as_deref(), Some("tenant@sys=v"));
        for bad in [
            "", " , ", "novalue", "Upper=v", "1abc=v", "k=a,b=", "k=v=w", "k=\u{7f}",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        let too_many = (0..33).map(|i| format!("k{i}=v")).collect::<Vec<_>>();
        assert_eq!(parse(&too_many.join(",")), None);
        assert!(parse(&too_many[..32].join(",")).is_some());
        assert_eq!(parse(&format!("k={}", "v".repeat(600))), None);
    }
}
