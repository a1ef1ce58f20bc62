//! The channel to the coordinator, and a failed call turned into one line a person can act on.

use std::error::Error as _;
use std::time::Duration;

use anyhow::Context;
use leasehold_coordinator::api::MAX_RESPONSE_BYTES;
use leasehold_proto::bearer::{AuthedChannel, Bearer};
use leasehold_proto::codes::code_name;
use leasehold_proto::v1::automations_client::AutomationsClient;
use leasehold_proto::v1::gates_client::GatesClient;
use leasehold_proto::v1::history_client::HistoryClient;
use leasehold_proto::v1::runs_client::RunsClient;
use leasehold_proto::v1::schedules_client::SchedulesClient;
use leasehold_proto::v1::stats_client::StatsClient;
use leasehold_proto::v1::workers_client::WorkersClient;
use tonic::transport::Endpoint;
use tonic::{Code, Response, Status};
use tonic_types::StatusExt;

use super::Global;
use super::tls::{self, Connector, Tls};

/// How long connecting may take before the coordinator counts as unreachable; without it a
/// dropped SYN waits for the operating system's timeout (minutes).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on an open connection, so that a watch whose coordinator vanished without
/// closing the connection notices and reconnects.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// How long a ping may go unanswered before the connection counts as dead.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The endpoint as a URL: one without a scheme gets `https://` when TLS options are given and
/// `http://` otherwise; TLS options with an `http://` endpoint are a mistake worth naming.
fn endpoint_url(endpoint: &str, tls: &Tls) -> anyhow::Result<String> {
    if !endpoint.contains("://") {
        let scheme = if tls.given() { "https" } else { "http" };
        return Ok(format!("{scheme}://{endpoint}"));
    }
    if tls.given() && !endpoint.starts_with("https://") {
        anyhow::bail!(
            "--tls-ca, --tls-cert and --tls-key need an https:// endpoint, and the endpoint is \
             {endpoint}"
        );
    }
    Ok(endpoint.to_owned())
}

/// A connected coordinator: cheap clients for each service, and the endpoint for messages.
#[derive(Clone)]
pub struct Coordinator {
    channel: AuthedChannel,
    endpoint: String,
    /// For an `https://` endpoint: why its last TLS connection failed.
    tls: Option<Connector>,
    /// Whether calls carry a token, for the message of an UNAUTHENTICATED answer.
    has_token: bool,
}

impl Coordinator {
    /// Connects to `--endpoint`, over TLS for an `https://` one. Calls carry the token of
    /// `--token` or `LEASEHOLD_TOKEN`, else the one the credentials file keeps for the endpoint,
    /// else none.
    pub async fn connect(global: &Global) -> anyhow::Result<Self> {
        let endpoint = endpoint_url(&global.endpoint, &global.tls)?;
        let token = match &global.token {
            Some(Ok(token)) => Some(token.clone()),
            Some(Err(e)) => anyhow::bail!("--token (or {}): {e}", crate::token::TOKEN_ENV),
            None => crate::credentials::lookup(&endpoint)?,
        };
        let bearer = match &token {
            Some(token) => Bearer::new(&token.expose())?,
            None => Bearer::none(),
        };
        let invalid = || format!("--endpoint {endpoint:?} is not a URL like http://host:port");
        // tonic dials the plain-scheme address, through the TLS connector for `https://`; the
        // requests still name the `https://` origin.
        let (dial, tls) = match endpoint.strip_prefix("https://") {
            Some(address) => (format!("http://{address}"), Some(global.tls.connector()?)),
            None => (endpoint.clone(), None),
        };
        let dial = Endpoint::from_shared(dial)
            .with_context(invalid)?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let connected = match &tls {
            None => dial.connect().await,
            Some(connector) => {
                let connector = connector.clone();
                dial.origin(endpoint.parse().with_context(invalid)?)
                    .connect_with_connector(tower::service_fn(move |uri| {
                        let connector = connector.clone();
                        async move { connector.connect(uri).await }
                    }))
                    .await
            }
        };
        let channel = connected.map_err(|e| unreachable_error(&endpoint, &e, tls.as_ref()))?;
        Ok(Self {
            channel: bearer.channel(channel),
            endpoint,
            tls,
            has_token: token.is_some(),
        })
    }

    pub fn automations(&self) -> AutomationsClient<AuthedChannel> {
        AutomationsClient::new(self.channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    pub fn runs(&self) -> RunsClient<AuthedChannel> {
        RunsClient::new(self.channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    pub fn gates(&self) -> GatesClient<AuthedChannel> {
        GatesClient::new(self.channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    pub fn workers(&self) -> WorkersClient<AuthedChannel> {
        WorkersClient::new(self.channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    pub fn stats(&self) -> StatsClient<AuthedChannel> {
        StatsClient::new(self.channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    pub fn schedules(&self) -> SchedulesClient<AuthedChannel> {
        SchedulesClient::new(self.channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    pub fn history(&self) -> HistoryClient<AuthedChannel> {
        HistoryClient::new(self.channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// The answer of a call, or its failure as one line.
    pub fn check<T>(&self, result: Result<Response<T>, Status>) -> anyhow::Result<T> {
        result
            .map(Response::into_inner)
            .map_err(|status| self.error(&status))
    }

    /// A failed call as one line: the coordinator's own answer as `CODE: message` (with the
    /// fields at fault for INVALID_ARGUMENT), or, when the call never got an answer, that the
    /// coordinator could not be reached.
    pub fn error(&self, status: &Status) -> anyhow::Error {
        // A refused TLS connection may end a call with any code: hyper reports only that the
        // connection closed, and the connector kept why.
        let refused_tls =
            status.source().is_some() && self.tls.as_ref().and_then(Connector::failure).is_some();
        if refused_tls || is_local_transport_failure(status) {
            return unreachable_error(&self.endpoint, status, self.tls.as_ref());
        }
        if status.code() == Code::Unauthenticated && !self.has_token {
            return anyhow::anyhow!(
                "{} (no token was given: pass --token or set {}; `leasehold dev` saves its own \
                 for client commands on this machine)",
                status_line(status),
                crate::token::TOKEN_ENV
            );
        }
        anyhow::anyhow!(status_line(status))
    }
}

/// Every item of a listing, page after page: `fetch` asks for the page after a token (empty for
/// the first) and answers with its items and the next token (empty after the last page).
pub async fn all_pages<T, F, Fut>(mut fetch: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = anyhow::Result<(Vec<T>, String)>>,
{
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let (items, next) = fetch(page_token).await?;
        all.extend(items);
        if next.is_empty() {
            return Ok(all);
        }
        page_token = next;
    }
}

/// A status made by the client for a call that never reached the coordinator (refused, reset,
/// timed out) rather than sent by it: tonic keeps the transport error as its source.
pub fn is_local_transport_failure(status: &Status) -> bool {
    status.code() == Code::Unavailable && status.source().is_some()
}

/// A call that never got an answer: a TLS handshake that failed, said as why (from `error`, or
/// as `tls` kept it when the connection reported only that it closed), or a coordinator that
/// could not be reached.
fn unreachable_error(
    endpoint: &str,
    error: &(dyn std::error::Error + 'static),
    tls: Option<&Connector>,
) -> anyhow::Error {
    let failure = tls::rustls_error(error)
        .cloned()
        .or_else(|| tls.and_then(Connector::failure));
    if let Some(failure) = failure {
        return anyhow::anyhow!(
            "TLS handshake with the coordinator at {endpoint} failed: {}",
            tls::reason(&failure)
        );
    }
    anyhow::anyhow!(
        "cannot reach the coordinator at {endpoint} (is it running? start one with `leasehold dev`): {}",
        cause_chain(error)
    )
}

/// An error and its sources, joined by `: `, without the repeats transport errors are prone to.
/// A status contributes its message, not its debug-like `Display`.
fn cause_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = match e.downcast_ref::<Status>() {
            Some(status) => status.message().to_owned(),
            None => e.to_string(),
        };
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// `CODE: message`, where for INVALID_ARGUMENT the message is the BadRequest violations, each
/// naming its field.
pub fn status_line(status: &Status) -> String {
    let code = code_name(status.code());
    let violations: Vec<String> = status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|v| violation_text(&v.field, &v.description))
                .collect()
        })
        .unwrap_or_default();
    if !violations.is_empty() {
        return format!("{code}: {}", violations.join("; "));
    }
    let message = status.message().trim();
    if message.is_empty() {
        code.to_owned()
    } else {
        format!("{code}: {}", one_line(message))
    }
}

/// A field violation as `field: description`. Descriptions often start with the field already,
/// or with its tail (`nodes[1].depends_on[0] …` for the field `spec.nodes[1].depends_on[0]`);
/// then the full field replaces that start instead of being repeated.
fn violation_text(field: &str, description: &str) -> String {
    let description = one_line(description);
    if field.is_empty() {
        return description;
    }
    let tails = std::iter::once(field).chain(
        field
            .char_indices()
            .filter(|&(_, c)| c == '.')
            .map(|(i, _)| &field[i + 1..]),
    );
    for tail in tails {
        if let Some(rest) = description.strip_prefix(tail)
            && (rest.is_empty() || rest.starts_with([' ', ':']))
        {
            return format!("{field}{rest}");
        }
    }
    if description.is_empty() {
        field.to_owned()
    } else {
        format!("{field}: {description}")
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use tonic_types::ErrorDetails;

    use super::*;

    #[test]
    fn a_violation_names_its_full_field_once() {
        let check = |field: &str, description: &str, expected: &str| {
            assert_eq!(violation_text(field, description), expected);
        };
        check(
            "spec.nodes[1].depends_on[0]",
            "nodes[1].depends_on[0] (node \"b\"): unknown node \"zz\"",
            "spec.nodes[1].depends_on[0] (node \"b\"): unknown node \"zz\"",
        );
        check(
            "page_size",
            "must not be negative",
            "page_size: must not be negative",
        );
        check("spec.id", "id: too long", "spec.id: too long");
        check("run_id", "run_id: not a uuid", "run_id: not a uuid");
        check("spec", "", "spec");
        // A description that merely starts with the same letters is not the field.
        check("id", "identical", "id: identical");
    }

    #[test]
    fn invalid_argument_lists_the_violations_and_other_codes_their_message() {
        let status = Status::with_error_details(
            Code::InvalidArgument,
            "invalid spec: …",
            ErrorDetails::with_bad_request_violation("spec.nodes[0].kind", "nodes[0].kind: empty"),
        );
        assert_eq!(
            status_line(&status),
            "INVALID_ARGUMENT: spec.nodes[0].kind: empty"
        );
        assert_eq!(
            status_line(&Status::not_found("run 1 not found\n")),
            "NOT_FOUND: run 1 not found"
        );
        assert_eq!(status_line(&Status::aborted("")), "ABORTED");
    }
}
