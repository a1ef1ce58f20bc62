//! A strict reader of the Prometheus text exposition format (0.0.4), and a plain HTTP GET to
//! fetch it: what the metrics tests scrape with.
//!
//! Checked: every sample line is `name{labels} value` with a valid name, quoted label values
//! and a number; every metric family has exactly one `# TYPE` line before its samples; a
//! histogram's buckets, per label set, have ascending `le` bounds ending at `+Inf`, cumulative
//! counts, and a `_count` equal to the `+Inf` bucket, with a `_sum`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub types: HashMap<String, String>,
}

impl Exposition {
    /// The sum of the samples named `name` whose labels include every pair of `labels`; zero
    /// when there is none (a counter not yet incremented).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Whether a sample named `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

/// GETs `path` from `addr` over HTTP/1.1; the status code and the body.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no end of head in {answer:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    // axum answers with a Content-Length: the body is read whole, unchunked.
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    Ok((status, body.to_owned()))
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse().map_err(|_| format!("bad value {text:?}")),
    }
}

/// `{a="x",b="y"}` (already without its braces) into pairs.
fn labels(mut text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    while !text.is_empty() {
        let (name, rest) = text
            .split_once("=\"")
            .ok_or_else(|| format!("bad label in {text:?}"))?;
        if !valid_name(name) || name.contains(':') {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {rest:?}")),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} repeated"));
        }
        text = &rest[end + 1..];
        text = text.strip_prefix(',').unwrap_or(text);
    }
    Ok(labels)
}

/// The family a sample belongs to, given the declared types.
fn family<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        matches!(
            types.get(base).map(String::as_str),
            Some("histogram" | "summary")
        )
        .then_some(base)
    })
}

/// Parses `text` strictly; the first rule broken is the error.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut exposition = Exposition::default();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            if words.first() == Some(&"TYPE") {
                let [_, name, kind] = words[..] else {
                    return Err(at("bad TYPE line".into()));
                };
                if !valid_name(name) {
                    return Err(at(format!("bad name {name:?}")));
                }
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(at(format!("bad type {kind:?}")));
                }
                // A family's samples need its TYPE before them, so a TYPE after them is a
                // second one.
                if exposition
                    .types
                    .insert(name.to_owned(), kind.to_owned())
                    .is_some()
                {
                    return Err(at(format!("second TYPE for {name}")));
                }
            }
            continue;
        }
        let (series, value_text) = line.rsplit_once(' ').ok_or_else(|| at("no value".into()))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .ok_or_else(|| at("unclosed labels".into()))?;
                (name, labels(inner).map_err(at)?)
            }
            None => (series, BTreeMap::new()),
        };
        if !valid_name(name) {
            return Err(at(format!("bad name {name:?}")));
        }
        if family(name, &exposition.types).is_none() {
            return Err(at(format!("{name} has no TYPE before it")));
        }
        exposition.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value: value(value_text).map_err(at)?,
        });
    }
    check_histograms(&exposition)?;
    Ok(exposition)
}

/// A histogram's label set less `le`.
type Series = Vec<(String, String)>;

fn check_histograms(exposition: &Exposition) -> Result<(), String> {
    for (name, kind) in &exposition.types {
        if kind != "histogram" {
            continue;
        }
        // Per label set less `le`: the buckets in order of appearance.
        let mut series: BTreeMap<Series, Vec<(f64, f64)>> = BTreeMap::new();
        let key = |s: &Sample| {
            s.labels
                .iter()
                .filter(|(k, _)| k.as_str() != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        for s in &exposition.samples {
            if s.name == format!("{name}_bucket") {
                let le = s
                    .labels
                    .get("le")
                    .ok_or_else(|| format!("{name}_bucket without le"))?;
                series
                    .entry(key(s))
                    .or_default()
                    .push((value(le)?, s.value));
            }
        }
        if series.is_empty() {
            return Err(format!("histogram {name} has no buckets"));
        }
        for (labels, buckets) in &series {
            let what = format!("{name}{labels:?}");
            for pair in buckets.windows(2) {
                if pair[0].0 >= pair[1].0 {
                    return Err(format!("{what}: le not ascending: {buckets:?}"));
                }
                if pair[0].1 > pair[1].1 {
                    return Err(format!("{what}: buckets not cumulative: {buckets:?}"));
                }
            }
            let (last_le, inf) = *buckets.last().expect("a bucket");
            if last_le != f64::INFINITY {
                return Err(format!("{what}: no +Inf bucket"));
            }
            let one = |suffix: &str| {
                let found: Vec<f64> = exposition
                    .samples
                    .iter()
                    .filter(|s| s.name == format!("{name}{suffix}") && key(s) == *labels)
                    .map(|s| s.value)
                    .collect();
                match found[..] {
                    [v] => Ok(v),
                    _ => Err(format!("{what}: {} {suffix} samples", found.len())),
                }
            };
            let count = one("_count")?;
            one("_sum")?;
            if count != inf {
                return Err(format!("{what}: _count {count} but +Inf bucket {inf}"));
            }
        }
    }
    Ok(())
}

#[test]
fn the_reader_takes_a_good_exposition_and_refuses_broken_ones() {
    let good = "# TYPE a_total counter\na_total{k=\"v\\\"q\"} 3\n\n# TYPE h histogram\n\
                h_bucket{le=\"0.1\"} 1\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.7\nh_count 2\n";
    let parsed = parse(good).expect("good");
    assert_eq!(parsed.sum("a_total", &[("k", "v\"q")]), 3.0);
    assert_eq!(parsed.sum("h_count", &[]), 2.0);
    for (bad, why) in [
        ("a_total 3\n", "no TYPE"),
        ("# TYPE a counter\na{k=v} 1\n", "unquoted"),
        ("# TYPE a counter\na one\n", "not a number"),
        ("# TYPE a counter\n# TYPE a counter\na 1\n", "two TYPEs"),
        (
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n",
            "le order",
        ),
        (
            "# TYPE h histogram\nh_bucket{le=\"0.1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "not cumulative",
        ),
        (
            "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
            "count",
        ),
        (
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_sum 1\nh_count 2\n",
            "no +Inf",
        ),
    ] {
        assert!(parse(bad).is_err(), "{why}: {bad:?} was taken");
    }
}
