//! How the binaries write their logs to stderr: text for people (coloured only on a terminal)
//! or one JSON object per line for log collectors.

use std::ffi::OsStr;
use std::io::IsTerminal;

use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// The format of log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for people: time, level, target, message, fields.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields` with `message`),
    /// for journald exporters, Loki, Fluent Bit and the like.
    Json,
}

/// The environment variable that chooses the format when the command line does not.
pub const FORMAT_VAR: &str = "EDGE_BRIDGE_LOG_FORMAT";

/// Whether log lines get ANSI colour codes: only on a terminal (in a file or a journal they
/// are garbage bytes that break grep), and never with `NO_COLOR` set to anything but empty
/// (<https://no-color.org>).
pub fn ansi(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// [`ansi`] for this process's stderr and environment.
pub fn stderr_colour() -> bool {
    ansi(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// The stderr layer in `format`, showing what `filter` lets through.
pub fn stderr_layer<S>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
) -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let colour = stderr_colour();
    // Two optional layers rather than a boxed one: the format is chosen once, at start.
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(colour)
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    Layer::and_then(text, json).with_filter(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        assert!(ansi(true, None));
        assert!(ansi(true, Some(OsStr::new(""))));
        assert!(!ansi(true, Some(OsStr::new("1"))));
        assert!(!ansi(false, None));
        assert!(!ansi(false, Some(OsStr::new(""))));
    }
}
