//! Where log lines go and how they look, shared by every Leasehold binary (`leasehold` and
//! worker binaries of one's own), so that each honours `--log-format` and `LEASEHOLD_LOG` alike.
//!
//! A line about a run is logged inside the run's span (`run`: `run_id`, `epoch`, `claimant`,
//! `tenant`, `automation`) and, for a node, the attempt's span within it (`node`: `node_id`,
//! `kind`, `attempt`): the text format prints them before the message, the JSON format lists
//! them in `spans`, outermost first, so that a log pipeline can select a run's lines by field.
//! The run's span carries its `trace_id` too, the trace its spans are exported in.
//!
//! Traces go beside the logs, through the same subscriber: when an OTLP endpoint is given
//! (`--otlp-endpoint` or the standard `OTEL_EXPORTER_OTLP_*` variables) [`init_logging`] adds
//! `leasehold-telemetry`'s layer, which has a filter of its own, so that the log filter never
//! decides which spans are exported.

use std::io::IsTerminal;

use leasehold_telemetry::Traces;
use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use super::plain_fields::PlainFields;

/// The variable holding the log filter (`tracing` syntax, such as `leasehold_core=debug`).
pub const LOG_FILTER_VAR: &str = "LEASEHOLD_LOG";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event, for people.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// The logging flags, flattened into a binary's own parser.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// How log lines on stderr look: `text`, or `json` (one object a line, the run's and node's
    /// fields under `spans`).
    #[arg(
        long,
        global = true,
        env = "LEASEHOLD_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    /// Export traces over OTLP/gRPC to this collector (`http://host:4317`): a coordinator, a
    /// worker and dev do; off without it or `OTEL_EXPORTER_OTLP_ENDPOINT` (or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`). The other standard `OTEL_*` variables apply as the
    /// OpenTelemetry SDK reads them.
    #[arg(long, global = true, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// Installs the process's logger: lines go to stderr in `args.log_format`, filtered by
/// `LEASEHOLD_LOG` or else by `default_filter`; with `service`, and an OTLP endpoint in `args`
/// or the environment, spans are exported too, named `service` unless `OTEL_SERVICE_NAME` says
/// otherwise. Call once, inside the Tokio runtime, before anything logs; pass what it returns to
/// [`Traces::shutdown`] at exit so that the last spans are sent.
pub fn init_logging(
    args: &LogArgs,
    default_filter: &str,
    service: Option<&str>,
) -> Result<Option<Traces>, leasehold_telemetry::Error> {
    let filter = EnvFilter::try_from_env(LOG_FILTER_VAR).unwrap_or_else(|_| default_filter.into());
    let ansi = std::io::stderr().is_terminal();
    let traces = match service {
        Some(service) => leasehold_telemetry::install(args.otlp_endpoint.as_deref(), service)?,
        None => None,
    };
    subscriber_with(
        args.log_format,
        filter,
        std::io::stderr,
        ansi,
        traces.as_ref(),
    )
    .init();
    Ok(traces)
}

/// The logger [`init_logging`] installs without traces, writing to `writer`: colours in the
/// text format only when `ansi` (a pipe or a file gets none).
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    subscriber_with(format, filter, writer, ansi, None)
}

/// [`subscriber`], feeding `traces` too when given. The log filter belongs to the log lines
/// alone, so that a quiet log (`warn`, as in dev) still exports every span.
fn subscriber_with<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
    traces: Option<&Traces>,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let lines = tracing_subscriber::fmt::layer().with_writer(writer);
    let lines: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text if ansi => lines.with_ansi(true).boxed(),
        LogFormat::Text => lines.with_ansi(false).fmt_fields(PlainFields).boxed(),
        // The event's own fields beside `message` at the top level; the spans' fields in
        // `spans` only (the innermost span again under `span` would repeat it on every line).
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .boxed(),
    };
    let Some(traces) = traces else {
        // The log filter alone decides, so it filters for the whole subscriber: a filter of one
        // layer among several keeps a record of what it let through for every span entered and
        // left, which cost a worker more than writing its lines.
        return Box::new(tracing_subscriber::registry().with(filter.and_then(lines)));
    };
    let layers = vec![
        lines.with_filter(filter).boxed(),
        traces.layer::<Registry>(),
    ];
    Box::new(tracing_subscriber::registry().with(layers))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn log_format_takes_text_or_json() {
        let parse = |args: &[&str]| Command::try_parse_from(args).map(|c| c.log.log_format);
        // The default holds only where the variable is unset, as in the test environment.
        if std::env::var_os("LEASEHOLD_LOG_FORMAT").is_none() {
            assert_eq!(parse(&["test"]).unwrap(), LogFormat::Text);
        }
        assert_eq!(
            parse(&["test", "--log-format", "json"]).unwrap(),
            LogFormat::Json
        );
        assert_eq!(
            parse(&["test", "--log-format=text"]).unwrap(),
            LogFormat::Text
        );
    }

    #[test]
    fn a_bad_log_format_is_refused_naming_the_flag_and_the_choices() {
        let error = Command::try_parse_from(["test", "--log-format", "xml"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--log-format"), "{error}");
        assert!(error.contains("'xml'"), "{error}");
        assert!(error.contains("text") && error.contains("json"), "{error}");
    }
}
