//! The text format's fields without colours, written for a fraction of what the default
//! formatter spends on them.
//!
//! The `fmt` layer formats a span's fields when the span is made, whether or not a line is ever
//! logged in it, and a worker makes two spans per run (`run` and `node`). The default formatter
//! styles every field name even with colours off, which cost a worker more instructions per run
//! than the rest of its span handling (bench/README.md, "A lean worker"). [`PlainFields`] writes
//! the same text as [`DefaultFields`] does without colours: `name=value`, separated by spaces.
//! The `message` field and errors, whose text may come from outside and so is stripped of
//! terminal escapes, are left to the default formatter.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// Fields as `name=value`, space-separated, as [`DefaultFields`] writes them without colours.
///
/// [`DefaultFields`]: tracing_subscriber::fmt::format::DefaultFields
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.finish()
    }
}

struct PlainVisitor<'writer> {
    writer: Writer<'writer>,
    is_empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// The default formatter's visitor for one field, writing where this one writes.
    fn default_visitor(&mut self) -> DefaultVisitor<'_> {
        let is_empty = std::mem::replace(&mut self.is_empty, false);
        DefaultVisitor::new(self.writer.by_ref(), is_empty)
    }

    fn write_field(&mut self, name: &str, value: &dyn fmt::Debug) -> fmt::Result {
        if !std::mem::replace(&mut self.is_empty, false) {
            self.writer.write_str(" ")?;
        }
        self.writer
            .write_str(name.strip_prefix("r#").unwrap_or(name))?;
        self.writer.write_str("=")?;
        write!(self.writer, "{value:?}")
    }
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let mut visitor = self.default_visitor();
            visitor.record_str(field, value);
            self.result = visitor.finish();
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_err() {
            return;
        }
        let mut visitor = self.default_visitor();
        visitor.record_error(field, value);
        self.result = visitor.finish();
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        // Metadata of lines from the `log` crate, which the formatter has written already.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        self.result = if name == "message" {
            let mut visitor = self.default_visitor();
            visitor.record_debug(field, value);
            visitor.finish()
        } else {
            self.write_field(name, value)
        };
    }
}

impl VisitOutput<fmt::Result> for PlainVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::format::DefaultFields;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Debug)]
    struct Failure;

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("it broke \x1b[31mred\x1b[0m")
        }
    }

    impl std::error::Error for Failure {}

    /// What a text logger without colours prints for one event inside one span, with `fields`.
    fn printed<N>(fields: N) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&out);
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .without_time()
            .fmt_fields(fields)
            .with_writer(move || Sink(Arc::clone(&sink)));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let run_id = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
            let span = tracing::info_span!(
                "run",
                run_id = %run_id,
                epoch = 3_i64,
                automation = "nightly",
                r#type = "plain",
                outcome = tracing::field::Empty,
            );
            let _entered = span.enter();
            span.record("outcome", "completed");
            let error: &(dyn std::error::Error + 'static) = &Failure;
            tracing::warn!(
                retryable = false,
                took = 1.5_f64,
                words = ?"quoted",
                error,
                "a \x1b[2Jmessage with {} arguments",
                2
            );
        });
        let bytes = out.lock().expect("log sink").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log sink").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_read_as_the_default_formatter_writes_them_without_colours() {
        let plain = printed(PlainFields);
        assert_eq!(plain, printed(DefaultFields::new()));
        assert!(
            plain.contains(
                "run{run_id=01234567-89ab-cdef-0123-456789abcdef epoch=3 automation=\"nightly\" \
                 type=\"plain\" outcome=\"completed\"}"
            ),
            "{plain}"
        );
        // Terminal escapes in the message and the error are shown, not obeyed.
        assert!(!plain.contains('\x1b'), "{plain}");
    }
}
