//! `http`: one HTTP request per attempt, with the attempt's idempotency key attached, to the
//! destinations the worker's [`HttpPolicy`] allows.

mod destination;

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use leasehold_core::trace::TraceContext;
use leasehold_telemetry::context::{TRACEPARENT, TRACESTATE};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Client, Method, Response, StatusCode, Url, redirect};
use serde_json::{Map, Value, json};

pub use self::destination::{AddressClass, HttpAllow, HttpAllowError, HttpPolicy, Refused};

use leasehold_core::kinds::{HTTP_MAX_RESPONSE_BYTES, HTTP_METHODS};

use crate::handler::{Context, Handler, HandlerError};

/// The default, and the largest allowed, `max_response_bytes`: node outputs are stored in
/// Postgres with the run, so they stay small.
const MAX_RESPONSE_BYTES_DEFAULT: usize = HTTP_MAX_RESPONSE_BYTES as usize;

/// How much of an error response's body goes into the error message.
const ERROR_EXCERPT_BYTES: usize = 512;

/// Redirects followed per request: enough for the usual canonical-host and trailing-slash hops.
pub const MAX_REDIRECTS: usize = 5;

const FIELDS: [&str; 6] = [
    "method",
    "url",
    "headers",
    "body",
    "timeout_ms",
    "max_response_bytes",
];

/// The `http` node kind: one HTTP request per attempt, with the idempotency key attached.
///
/// The node's input:
///
/// ```json
/// {
///   "method": "POST",
///   "url": "https://api.example.com/charges",
///   "headers": { "authorization": "Bearer …" },
///   "body": { "amount": 100 },
///   "timeout_ms": 10000,
///   "max_response_bytes": 65536
/// }
/// ```
///
/// Only `url` is required. `method` defaults to `GET`, and is written in upper or lower case. `body`, when present, is sent as JSON with
/// `content-type: application/json`. Every request carries `Idempotency-Key: <key>`, replacing
/// any such header in the input, so that the server can tell a retried attempt from a new request.
/// The key is the node's in the run, and changes when an operator resets the node (a recover, a
/// rework), so that a deliberate re-run is not answered with the earlier execution's result.
/// When the worker exports traces, every request carries the attempt's span as its W3C
/// `traceparent` (and the run's `tracestate`), replacing any in the input, so that the server's
/// spans join the run's trace.
/// Without `timeout_ms` the attempt is bounded only by the node's own timeout.
///
/// The output of a 2xx response is `{"status": 200, "body": …}`, where `body` is the parsed JSON
/// if the response parses as JSON, the text as a JSON string if it does not, and `null` if it is
/// empty. Up to [`MAX_REDIRECTS`] redirects are followed.
///
/// # Destinations
/// Every address the handler connects to is checked against its [`HttpPolicy`]: an address in
/// the URL before the request, a host name's addresses as they are resolved (the connection uses
/// only the addresses checked, so a name cannot resolve to one address for the check and another
/// for the connection), and each redirect's target again. By default only public addresses may
/// be reached: loopback, link-local (cloud metadata), private, shared (CGNAT), unspecified,
/// multicast, broadcast and reserved addresses, and their IPv6 forms, are refused
/// ([`AddressClass`]) unless the worker's `--http-allow` opens them. A name that resolves to
/// some refused addresses and some allowed ones is connected to through the allowed ones only.
/// Proxies from the environment (`HTTP_PROXY`, …) are not used: a proxy would connect on the
/// handler's behalf, past these checks.
///
/// # Failures
/// - Retryable: 5xx, 408 and 429 responses, connection failures, resets, timeouts, cancellation.
///   A 429 or 503 with `Retry-After` (seconds or a date) asks for that delay
///   ([`HandlerError::RetryableAfter`]), which the node's backoff cap bounds.
/// - Terminal: bad input (the message names the field), other 4xx and 3xx responses, a
///   response larger than `max_response_bytes` (default and maximum 1 MiB), a refused
///   destination (the message names the address and its class), and more than
///   [`MAX_REDIRECTS`] redirects.
///
/// # TLS
/// HTTPS uses rustls with the ring provider and the platform's trust store (on Linux, the system
/// CA bundle, e.g. `/etc/ssl/certs` from the `ca-certificates` package). On a host without one,
/// the handler still serves plain HTTP and fails `https://` URLs terminally, saying why.
#[derive(Debug, Clone)]
pub struct Http {
    client: Client,
    policy: Arc<HttpPolicy>,
    /// Why HTTPS is unavailable, when the client had to be built without the platform's roots.
    https_unavailable: Option<String>,
}

impl Http {
    /// A handler with its own connection pool that reaches public addresses only.
    pub fn new() -> Self {
        Self::with_policy(HttpPolicy::default())
    }

    /// A handler with its own connection pool that reaches public addresses and what `policy`
    /// allows.
    pub fn with_policy(policy: HttpPolicy) -> Self {
        // reqwest is built without a crypto provider so that the whole workspace uses ring; the
        // error only says that a provider is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let policy = Arc::new(policy);
        match Self::builder(&policy).build() {
            Ok(client) => Self {
                client,
                policy,
                https_unavailable: None,
            },
            // The platform verifier refuses to start without any trusted roots. An empty root
            // set of our own still lets plain HTTP work, and `https://` URLs get a clear error.
            Err(e) => {
                let reason = error_chain(&e);
                tracing::warn!(error = %reason, "http handler: HTTPS unavailable");
                let client = Self::builder(&policy)
                    .tls_certs_only([])
                    .build()
                    .expect("a client without TLS roots needs nothing from the platform");
                Self {
                    client,
                    policy,
                    https_unavailable: Some(reason),
                }
            }
        }
    }

    fn builder(policy: &Arc<HttpPolicy>) -> reqwest::ClientBuilder {
        let redirects = Arc::clone(policy);
        Client::builder()
            .user_agent(concat!("leasehold-worker/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(CheckedResolver(Arc::clone(policy)))
            // A redirect to an address in the URL reaches no resolver: it is checked here. One to
            // a name is checked when the name is resolved.
            .redirect(redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > MAX_REDIRECTS {
                    let error = format!("more than {MAX_REDIRECTS} redirects");
                    return attempt.error(error);
                }
                match redirects.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(refused) => attempt.error(refused),
                }
            }))
            .no_proxy()
    }
}

/// Resolves host names with the system's resolver and hands the connector only the addresses
/// the policy allows, so that what was checked is what is connected to.
struct CheckedResolver(Arc<HttpPolicy>);

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.0);
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let allowed = policy.filter(&name, resolved)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Handler for Http {
    async fn run(&self, ctx: Context) -> Result<Value, HandlerError> {
        let req = Request::parse(&ctx.input)?;
        if let Err(refused) = self.policy.check_url(&req.url) {
            return Err(HandlerError::Terminal(format!(
                "{} {}: {refused}",
                req.method,
                redacted(&req.url)
            )));
        }
        if req.url.scheme() == "https"
            && let Some(reason) = &self.https_unavailable
        {
            return Err(HandlerError::Terminal(format!(
                "input.url: HTTPS is unavailable on this worker: {reason}"
            )));
        }
        let key = HeaderValue::from_str(&ctx.idempotency_key).map_err(|e| {
            HandlerError::Terminal(format!("idempotency key is not a valid header value: {e}"))
        })?;

        let what = format!("{} {}", req.method, redacted(&req.url));
        let timeout = req.timeout;
        // The attempt's span is current here; `None` when traces are off.
        let trace = leasehold_telemetry::current_trace();
        let exchange = self.exchange(req, key, trace);
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::timeout(t, exchange).await.unwrap_or_else(|_| {
                    Err(HandlerError::Retryable(format!(
                        "timed out after {} ms",
                        t.as_millis()
                    )))
                }),
                None => exchange.await,
            }
        };
        let result = tokio::select! {
            result = deadline => result,
            () = ctx.cancel.cancelled() => Err(HandlerError::Retryable("cancelled".into())),
        };
        result.map_err(|e| e.within(&what))
    }

    fn input_schema(&self) -> Option<Value> {
        super::schema_of("http")
    }
}

impl Http {
    async fn exchange(
        &self,
        req: Request,
        key: HeaderValue,
        trace: Option<TraceContext>,
    ) -> Result<Value, HandlerError> {
        let mut headers = req.headers;
        headers.insert("idempotency-key", key);
        if let Some(trace) = trace {
            // Both are checked W3C values: lowercase hex and dashes, and printable ASCII.
            if let Ok(parent) = HeaderValue::from_str(trace.parent.as_str()) {
                headers.insert(TRACEPARENT, parent);
            }
            headers.remove(TRACESTATE);
            if let Some(state) = trace
                .state
                .and_then(|s| HeaderValue::from_str(s.as_str()).ok())
            {
                headers.insert(TRACESTATE, state);
            }
        }
        let mut builder = self.client.request(req.method, req.url);
        if let Some(body) = req.body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            builder = builder.body(body);
        }
        let mut response = builder.headers(headers).send().await.map_err(send_error)?;

        let status = response.status();
        match classify(status) {
            Outcome::Success => {
                let body = read_capped(&mut response, req.max_response_bytes).await?;
                Ok(json!({ "status": status.as_u16(), "body": parse_body(&body) }))
            }
            outcome => {
                // Read before the body, which `excerpt` consumes.
                let asked = asked_delay(status, response.headers(), SystemTime::now());
                let excerpt = excerpt(&mut response).await;
                let message = format!("HTTP {status}: {excerpt}");
                Err(match (outcome, asked) {
                    (Outcome::Retry, Some(after)) => HandlerError::RetryableAfter {
                        message: format!("{message} (Retry-After: {} ms)", after.as_millis()),
                        after,
                    },
                    (Outcome::Retry, None) => HandlerError::Retryable(message),
                    _ => HandlerError::Terminal(message),
                })
            }
        }
    }
}

/// The delay a 429 or 503 response asks for in its `Retry-After` header (RFC 9110, 10.2.3):
/// seconds, or an HTTP date (a date already past asks for none). Other statuses, a missing
/// header, or one that says neither, ask for nothing, and the node's backoff applies.
fn asked_delay(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if !matches!(status.as_u16(), 429 | 503) {
        return None;
    }
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// What a response status means for the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Retry,
    Fail,
}

fn classify(status: StatusCode) -> Outcome {
    match status.as_u16() {
        200..=299 => Outcome::Success,
        // The server is overloaded or asked us to come back later: another attempt may succeed.
        408 | 429 | 500..=599 => Outcome::Retry,
        _ => Outcome::Fail,
    }
}

/// A request that failed before a response arrived. Only a request that could never be sent is
/// terminal, or one to a refused destination; anything on the wire (connect, reset, TLS
/// handshake, timeout) may go better next time.
fn send_error(e: reqwest::Error) -> HandlerError {
    if let Some(refused) = find_source::<Refused>(&e) {
        return HandlerError::Terminal(refused.to_string());
    }
    let (terminal, e) = (e.is_builder() || e.is_redirect(), e.without_url());
    let message = error_chain(&e);
    if terminal {
        HandlerError::Terminal(message)
    } else {
        HandlerError::Retryable(message)
    }
}

/// The first error of type `T` in `e`'s chain of sources, `e` included.
fn find_source<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut next = Some(e);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        next = error.source();
    }
    None
}

/// reqwest's own message is vague ("error sending request"); the cause is in its sources. Callers
/// strip the URL first (`without_url`): the message names the request without its query.
fn error_chain(e: &dyn StdError) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Reads the whole body, failing as soon as it passes `cap` so that a huge response is never
/// buffered.
async fn read_capped(response: &mut Response, cap: usize) -> Result<Vec<u8>, HandlerError> {
    let too_large = || HandlerError::Terminal(format!("response larger than {cap} bytes"));
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        HandlerError::Retryable(format!(
            "reading the response: {}",
            error_chain(&e.without_url())
        ))
    })? {
        if body.len() + chunk.len() > cap {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The start of an error response's body, for the message; a failure to read it is not the error
/// being reported, so it only shortens the excerpt.
async fn excerpt(response: &mut Response) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(ERROR_EXCERPT_BYTES);
    String::from_utf8_lossy(&body).trim().to_owned()
}

fn parse_body(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// The URL for messages, without credentials, query or fragment, which may hold secrets.
fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// The node's input, checked.
#[derive(Debug)]
struct Request {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
    timeout: Option<Duration>,
    max_response_bytes: usize,
}

impl Request {
    fn parse(input: &Value) -> Result<Self, HandlerError> {
        let bad =
            |field: &str, why: String| HandlerError::Terminal(format!("input.{field}: {why}"));
        let input = super::input_object(input, &FIELDS, "a url")?;

        let method = match input.get("method") {
            None => Method::GET,
            // Upper or lower case, as the schema's enum lists them.
            Some(v) => v
                .as_str()
                .and_then(|m| {
                    HTTP_METHODS
                        .iter()
                        .find(|known| **known == m || known.to_ascii_lowercase() == m)
                })
                .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
                .ok_or_else(|| {
                    bad(
                        "method",
                        format!(
                            "must be one of {} (or in lower case), not {v}",
                            HTTP_METHODS.join(", ")
                        ),
                    )
                })?,
        };

        let url = input
            .get("url")
            .ok_or_else(|| bad("url", "required".into()))?;
        let url = url
            .as_str()
            .ok_or_else(|| bad("url", format!("must be a string, not {url}")))?;
        let url = Url::parse(url).map_err(|e| bad("url", format!("{e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(
                "url",
                format!("scheme must be http or https, not {}", url.scheme()),
            ));
        }

        let headers = match input.get("headers") {
            None => HeaderMap::new(),
            Some(v) => parse_headers(v, &bad)?,
        };

        let body = input
            .get("body")
            .map(|b| serde_json::to_vec(b).expect("a serde_json::Value always serializes"));

        let timeout = match input.get("timeout_ms") {
            None => None,
            Some(v) => Some(Duration::from_millis(
                v.as_u64().filter(|ms| *ms > 0).ok_or_else(|| {
                    bad(
                        "timeout_ms",
                        format!("must be a positive whole number of milliseconds, not {v}"),
                    )
                })?,
            )),
        };

        let max_response_bytes = match input.get("max_response_bytes") {
            None => MAX_RESPONSE_BYTES_DEFAULT,
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n <= MAX_RESPONSE_BYTES_DEFAULT)
                .ok_or_else(|| {
                    bad(
                        "max_response_bytes",
                        format!(
                            "must be a whole number up to {MAX_RESPONSE_BYTES_DEFAULT}, not {v}"
                        ),
                    )
                })?,
        };

        Ok(Self {
            method,
            url,
            headers,
            body,
            timeout,
            max_response_bytes,
        })
    }
}

fn parse_headers(
    value: &Value,
    bad: &impl Fn(&str, String) -> HandlerError,
) -> Result<HeaderMap, HandlerError> {
    let object: &Map<String, Value> = value.as_object().ok_or_else(|| {
        bad(
            "headers",
            format!("must be an object of name to value, not {value}"),
        )
    })?;
    let mut headers = HeaderMap::new();
    for (name, value) in object {
        let field = format!("headers.{name}");
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| bad(&field, format!("not a valid header name: {e}")))?;
        let value = value
            .as_str()
            .ok_or_else(|| bad(&field, format!("must be a string, not {value}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|e| bad(&field, format!("not a valid header value: {e}")))?;
        headers.insert(header, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let check = |code: u16, want: Outcome| {
            assert_eq!(
                classify(StatusCode::from_u16(code).unwrap()),
                want,
                "{code}"
            );
        };
        check(200, Outcome::Success);
        check(204, Outcome::Success);
        check(299, Outcome::Success);
        check(304, Outcome::Fail);
        check(400, Outcome::Fail);
        check(404, Outcome::Fail);
        check(408, Outcome::Retry);
        check(409, Outcome::Fail);
        check(429, Outcome::Retry);
        check(500, Outcome::Retry);
        check(503, Outcome::Retry);
    }

    #[test]
    fn retry_after_is_read_from_429_and_503_as_seconds_or_a_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").expect("date");
        let asked = |code: u16, value: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert(RETRY_AFTER, HeaderValue::from_str(value).expect("value"));
            }
            asked_delay(StatusCode::from_u16(code).unwrap(), &headers, now)
        };
        assert_eq!(asked(429, Some("120")), Some(Duration::from_secs(120)));
        assert_eq!(asked(503, Some(" 0 ")), Some(Duration::ZERO));
        assert_eq!(
            asked(503, Some("Wed, 21 Oct 2026 07:28:30 GMT")),
            Some(Duration::from_secs(30))
        );
        // A date already past asks for no wait at all.
        assert_eq!(
            asked(429, Some("Wed, 21 Oct 2026 07:00:00 GMT")),
            Some(Duration::ZERO)
        );
        assert_eq!(asked(429, None), None);
        assert_eq!(asked(429, Some("soon")), None);
        assert_eq!(asked(429, Some("-5")), None);
        // Only the statuses that mean "come back later" are taken at their word.
        assert_eq!(asked(500, Some("120")), None);
        assert_eq!(asked(301, Some("120")), None);
    }

    #[test]
    fn the_handler_and_its_schema_accept_the_same_inputs() {
        let url = "http://example.com/";
        super::super::tests::agree(
            &Http::new(),
            |input| Request::parse(input).is_ok(),
            &[
                json!({"url": url}),
                json!({"url": url, "method": "POST", "body": {"a": [1]}}),
                json!({"url": url, "method": "delete", "headers": {"Accept": "text/plain"}}),
                json!({"url": url, "timeout_ms": 1, "max_response_bytes": 0}),
                json!({"url": url, "max_response_bytes": 1_048_576, "body": null}),
                json!({}),
                json!(null),
                json!(url),
                json!({"url": ""}),
                json!({"url": 3}),
                json!({"uri": url}),
                json!({"url": url, "method": "FETCH"}),
                json!({"url": url, "method": "Post"}),
                json!({"url": url, "method": 1}),
                json!({"url": url, "headers": []}),
                json!({"url": url, "headers": {"Accept": 1}}),
                json!({"url": url, "timeout_ms": 0}),
                json!({"url": url, "timeout_ms": "5"}),
                json!({"url": url, "timeout_ms": 1.5}),
                json!({"url": url, "max_response_bytes": 1_048_577}),
                json!({"url": url, "max_response_bytes": -1}),
            ],
        );
    }

    #[test]
    fn bad_input_names_the_field() {
        let check = |input: Value, field: &str| {
            let err = Request::parse(&input).unwrap_err();
            assert!(
                matches!(&err, HandlerError::Terminal(m) if m.starts_with(&format!("input.{field}:"))),
                "{input} gave {err:?}"
            );
        };
        check(json!({}), "url");
        check(json!({ "url": 3 }), "url");
        check(json!({ "url": "not a url" }), "url");
        check(json!({ "url": "ftp://example.com/" }), "url");
        check(json!({ "url": "http://x/", "method": "FETCH" }), "method");
        check(json!({ "url": "http://x/", "headers": [] }), "headers");
        check(
            json!({ "url": "http://x/", "headers": { "a b": "c" } }),
            "headers.a b",
        );
        check(
            json!({ "url": "http://x/", "headers": { "a": "c\nd" } }),
            "headers.a",
        );
        check(
            json!({ "url": "http://x/", "headers": { "a": 1 } }),
            "headers.a",
        );
        check(json!({ "url": "http://x/", "timeout_ms": 0 }), "timeout_ms");
        check(
            json!({ "url": "http://x/", "max_response_bytes": 2_000_000 }),
            "max_response_bytes",
        );
        check(json!({ "url": "http://x/", "header": {} }), "header");
    }

    #[test]
    fn good_input_gets_defaults() {
        let req = Request::parse(&json!({ "url": "http://x/", "method": "post" })).unwrap();
        assert_eq!(req.method, Method::POST);
        assert_eq!(req.max_response_bytes, MAX_RESPONSE_BYTES_DEFAULT);
        assert!(req.timeout.is_none() && req.body.is_none());
    }

    #[test]
    fn messages_leave_secrets_out_of_urls() {
        let url = Url::parse("https://user:pw@example.com/a?token=s#f").unwrap();
        assert_eq!(redacted(&url), "https://example.com/a");
    }

    #[test]
    fn bodies_parse_as_json_or_text() {
        assert_eq!(parse_body(b""), Value::Null);
        assert_eq!(parse_body(br#"{"a":1}"#), json!({ "a": 1 }));
        assert_eq!(parse_body(b"plain"), json!("plain"));
    }
}
