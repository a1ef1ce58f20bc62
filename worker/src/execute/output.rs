//! Whether a handler's output fits the checkpoint, measured the way PostgreSQL measures it.
//!
//! `run_nodes.output` is `jsonb` with `CHECK (octet_length(output::text) <= 1 MiB)`. jsonb's text
//! is not the text the worker sends: PostgreSQL writes `": "` and `", "` between members and
//! elements, prints every number as its `numeric` value (`1e3` becomes `1000`, `1e-7`
//! `0.0000001`), and escapes strings its own way. An output that passes a check on its compact
//! JSON may still break the constraint, and the failed write would block the run; so the worker
//! computes the jsonb text's length exactly, without building it.

use leasehold_core::run::MAX_NODE_OUTPUT_BYTES;
use serde_json::Value;

use crate::handler::HandlerError;

/// A handler's output as the checkpoint can hold it: within the size limit as the database
/// measures it, and without the NUL character, which jsonb refuses. Either is the handler's
/// failure, for good: the same output would fail the same way again.
pub(super) fn storable(output: Value) -> Result<Value, HandlerError> {
    if contains_nul(&output) {
        return Err(HandlerError::Terminal(
            "output contains a NUL character (\\u0000), which the checkpoint cannot store".into(),
        ));
    }
    let bytes = jsonb_text_len(&output);
    if bytes > MAX_NODE_OUTPUT_BYTES {
        return Err(HandlerError::Terminal(format!(
            "output too large: {bytes} bytes as stored (jsonb text), more than the \
             {MAX_NODE_OUTPUT_BYTES} a node output may hold"
        )));
    }
    Ok(output)
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// `octet_length(value::jsonb::text)` in a UTF-8 database, for the JSON the worker sends.
pub(super) fn jsonb_text_len(value: &Value) -> usize {
    // `{}` and `[]` around members joined by `", "`.
    let joined = |parts: usize, total: usize| 2 + total + 2 * parts.saturating_sub(1);
    match value {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => numeric_text_len(&n.to_string()),
        Value::String(s) => string_text_len(s),
        Value::Array(items) => joined(items.len(), items.iter().map(jsonb_text_len).sum()),
        // Each member is `"key": value`. Keys are unique in a `Map`, as in jsonb, which keeps
        // the last of duplicates.
        Value::Object(map) => joined(
            map.len(),
            map.iter()
                .map(|(k, v)| string_text_len(k) + 2 + jsonb_text_len(v))
                .sum(),
        ),
    }
}

/// A JSON string as jsonb writes it: in quotes, with `"` and `\` escaped, the five control
/// characters with short escapes as such, other control characters as `\u00XX`, and everything
/// else (DEL and non-ASCII included) as its UTF-8 bytes.
fn string_text_len(s: &str) -> usize {
    2 + s
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
            c if u32::from(c) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum::<usize>()
}

/// The length of the `numeric` text of JSON number `n`, as jsonb prints it.
///
/// `numeric` keeps the digits after the point that the input shows, less the exponent, and
/// prints in positional notation: `1.50e1` is `15.0`, `1e3` is `1000`, `1.5e-3` is `0.0015`,
/// `-0.0` is `0.0` (zero has no sign). So the text is an optional `-`, the integer digits
/// without leading zeros (at least `0`), and `max(0, fraction digits - exponent)` digits after a
/// point.
fn numeric_text_len(n: &str) -> usize {
    let (negative, n) = match n.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, n),
    };
    let (mantissa, exponent) = match n.find(['e', 'E']) {
        Some(i) => (&n[..i], n[i + 1..].parse::<i64>().unwrap_or(0)),
        None => (n, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: Vec<u8> = int.bytes().chain(frac.bytes()).collect();
    let len = |x: usize| i64::try_from(x).unwrap_or(i64::MAX);
    // Where the point falls in `digits` once the exponent has moved it.
    let point = len(int.len()).saturating_add(exponent);
    let scale = (len(frac.len()) - exponent).max(0);
    let first_nonzero = digits.iter().position(|d| *d != b'0');
    let int_digits = match first_nonzero {
        Some(first) if len(first) < point => point - len(first),
        _ => 1,
    };
    let sign = negative && first_nonzero.is_some();
    let total = i64::from(sign) + int_digits + if scale > 0 { 1 + scale } else { 0 };
    usize::try_from(total).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn outputs_postgres_cannot_store_fail_their_node_for_good() {
        assert!(storable(json!({"ok": [1, "two", null]})).is_ok());
        // A backslash followed by "u0000" is text, not NUL.
        assert!(storable(json!({"path": "C:\\u0000"})).is_ok());
        for bad in [
            json!({"text": "a\u{0}b"}),
            json!([{"deep": ["\u{0}"]}]),
            json!({"key\u{0}": 1}),
            json!("x".repeat(MAX_NODE_OUTPUT_BYTES + 1)),
        ] {
            assert!(
                matches!(storable(bad.clone()), Err(HandlerError::Terminal(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_limit_is_on_the_jsonb_text_not_the_compact_json() {
        // 2 bytes an element in compact JSON, 3 in jsonb's text (", " between elements).
        let zeros = |n: usize| Value::Array(vec![json!(0); n]);
        let fits = (MAX_NODE_OUTPUT_BYTES + 1) / 3;
        assert_eq!(jsonb_text_len(&zeros(fits)), 3 * fits);
        assert!(storable(zeros(fits)).is_ok());
        let over = zeros(fits + 1);
        assert!(serde_json::to_vec(&over).unwrap().len() < MAX_NODE_OUTPUT_BYTES);
        let Err(HandlerError::Terminal(message)) = storable(over) else {
            panic!("an output over the limit as stored must fail for good");
        };
        assert!(
            message.contains("output too large: 1048578 bytes"),
            "{message}"
        );
    }

    #[test]
    fn numbers_are_measured_as_numeric_prints_them() {
        let check = |n: &str, text: &str| assert_eq!(numeric_text_len(n), text.len(), "{n}");
        check("0", "0");
        check("-5", "-5");
        check("18446744073709551615", "18446744073709551615");
        check("1.0", "1.0");
        check("-0.0", "0.0");
        check("-0", "0");
        check("1e3", "1000");
        check("1E+3", "1000");
        check("1.50e1", "15.0");
        check("1.5e-3", "0.0015");
        check("-1.5e-3", "-0.0015");
        check("0.000e5", "0");
        check("-0.001e2", "-0.1");
        check("1e20", "100000000000000000000");
        check("123.456", "123.456");
        check("0.001", "0.001");
        check("5e-324", &format!("0.{}5", "0".repeat(323)));
    }

    #[test]
    fn strings_are_measured_as_jsonb_escapes_them() {
        let check = |s: &str, text: &str| assert_eq!(string_text_len(s), text.len(), "{s:?}");
        check("", r#""""#);
        check("plain", r#""plain""#);
        check("a\"b\\c", r#""a\"b\\c""#);
        check("\n\t\r\u{8}\u{c}", r#""\n\t\r\b\f""#);
        check("\u{1}\u{1f}", r#""\u0001\u001f""#);
        check("\u{7f}é€😀", "\"\u{7f}é€😀\"");
    }

    #[test]
    fn containers_are_measured_with_jsonbs_separators() {
        let check = |v: Value, text: &str| assert_eq!(jsonb_text_len(&v), text.len(), "{v}");
        check(json!(null), "null");
        check(json!(false), "false");
        check(json!([]), "[]");
        check(json!({}), "{}");
        check(json!([1, [2, {}]]), "[1, [2, {}]]");
        check(
            json!({"b": [1, 2, {}], "a": {"c": null}}),
            r#"{"a": {"c": null}, "b": [1, 2, {}]}"#,
        );
    }

    /// The measure against the database's own, for values of every kind: what the worker sends is
    /// serde_json's text, which PostgreSQL parses into jsonb and prints again.
    #[tokio::test]
    async fn the_measure_is_the_databases() {
        let b = leasehold_testkit::fixtures::worker_setup().await;
        let values = [
            json!(null),
            json!(true),
            json!(0),
            json!(-17),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1.0),
            json!(-0.0),
            json!(0.1),
            json!(1e20),
            json!(1.5e-7),
            json!(f64::MAX),
            json!(f64::MIN_POSITIVE),
            json!(5e-324),
            json!(123_456.789),
            json!(""),
            json!("quote \" backslash \\ slash / tab \t newline \n bell \u{7} del \u{7f}"),
            json!("é € 😀 \u{2028}"),
            json!([]),
            json!({}),
            json!([1, [2, [3, {}]], {"a": []}]),
            json!({"b": 1, "a": {"nested": [true, false, null, "x"]}, "": ""}),
            json!({"status": 200, "body": {"items": [1.25, 2.5e3, -3e-2], "next": null}}),
        ];
        for value in values {
            let sent = serde_json::to_string(&value).expect("serialises");
            let stored: i32 = b
                .sql
                .query_one("SELECT octet_length($1::text::jsonb::text)", &[&sent])
                .await
                .expect("the database measures it")
                .get(0);
            assert_eq!(
                jsonb_text_len(&value),
                usize::try_from(stored).unwrap(),
                "{sent}"
            );
        }
    }
}
