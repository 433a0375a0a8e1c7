//! One way to log, for every binary: the human format on a terminal (colours, timestamps),
//! a journald-friendly format otherwise (no timestamps, since journald stamps each line, a
//! `<N>` syslog priority prefix that journald turns into the entry's priority, no colours),
//! or JSON lines on request (`--log-format json`). Span fields (store, revision, workload,
//! segment) come with every line.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human on a terminal, journald otherwise.
    #[default]
    Auto,
    /// Timestamps and colours, for a person at a terminal.
    Human,
    /// Priority prefixes and no timestamps, for systemd's journal.
    Journald,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The logging flags every binary takes (`#[command(flatten)]`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LogArgs {
    /// How log lines look: auto (human on a terminal, journald otherwise), human, journald or
    /// json. What is logged is set by RUST_LOG (e.g. `info`, `debug`, `backroom_netd=debug`).
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, env = "BACKROOM_LOG_FORMAT", global = true)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Sets up logging for this process; `default` is the filter when RUST_LOG is not set.
    pub fn init(&self, default: &str) {
        init(self.log_format, default);
    }
}

/// Sets up logging to stderr for this process (once; later calls do nothing).
pub fn init(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let terminal = std::io::stderr().is_terminal();
    let format = match format {
        LogFormat::Auto if terminal => LogFormat::Human,
        LogFormat::Auto => LogFormat::Journald,
        f => f,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human | LogFormat::Auto => builder.with_ansi(terminal).try_init(),
        LogFormat::Journald => builder.with_ansi(false).event_format(Journald).try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .flatten_event(true)
            .try_init(),
    };
}

/// `<6>netd{segment=pos}: message key=value`.
pub struct Journald;

/// The syslog priority journald reads from a line's `<N>` prefix.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{}", span.name())?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(writer, "{{{fields}}}")?;
                }
                write!(writer, ": ")?;
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journald_lines_carry_priority_and_span_fields() {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .event_format(Journald)
            .finish();
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("segment", name = "pos");
            let _g = span.enter();
            tracing::warn!(uplink = "eno1", "the uplink is missing");
            tracing::error!("drift repair failed");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "<4>segment{name=\"pos\"}: the uplink is missing uplink=\"eno1\"");
        assert!(lines[1].starts_with("<3>segment"), "{}", lines[1]);
    }
}
