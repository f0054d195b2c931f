//! How the binaries write their logs to stderr: text for people (coloured only on a terminal)
//! or one JSON object per line for log collectors, showing what `RUST_LOG` lets through.

use std::ffi::{OsStr, OsString};
use std::io::IsTerminal;

use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

/// The format of log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One line per event for people: time, level, target, message, fields.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields` with `message`),
    /// for journald exporters, Loki, Fluent Bit and the like.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = &'static str;

    /// `text` or `json`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("text") {
            Ok(Self::Text)
        } else if s.eq_ignore_ascii_case("json") {
            Ok(Self::Json)
        } else {
            Err("text or json")
        }
    }
}

/// The environment variable that chooses the format when the command line does not.
pub const FORMAT_VAR: &str = "EDGE_BRIDGE_LOG_FORMAT";

/// Whether log lines get ANSI colour codes: only on a terminal (in a file or a journal they
/// are garbage bytes that break grep), and never with `NO_COLOR` set to anything but empty
/// (<https://no-color.org>).
pub fn ansi(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// The environment variable that chooses which events are logged.
pub const FILTER_VAR: &str = "RUST_LOG";

/// A [`FILTER_VAR`] the binaries cannot use: they refuse to start rather than log something
/// else than asked (before, a bad value silently meant the default filter).
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// Not a list of `level` and `target=level` directives.
    #[error(
        "{FILTER_VAR}={value:?}: {source} (expected comma-separated `level` or `target=level`, \
         e.g. `debug` or `info,rumqttd=off`)"
    )]
    Parse {
        value: String,
        source: tracing_subscriber::filter::ParseError,
    },
    /// Not UTF-8, so no directive can be read from it.
    #[error("{FILTER_VAR}={0:?}: not UTF-8")]
    NotUtf8(OsString),
}

/// The filter `value` (of [`FILTER_VAR`]) asks for: `default` when it is unset or empty.
///
/// A `tracing_subscriber` [`Targets`] rather than an `EnvFilter`: the same `level` and
/// `target=level` directives, without span and field-value filters, and so without the regex
/// engine those need (about 180 KiB of a gateway binary).
pub fn filter(value: Option<&OsStr>, default: &str) -> Result<Targets, FilterError> {
    let value = match value.filter(|v| !v.is_empty()) {
        None => return Ok(default.parse().expect("the default log filter parses")),
        Some(v) => v
            .to_str()
            .ok_or_else(|| FilterError::NotUtf8(v.to_owned()))?,
    };
    value.parse().map_err(|source| FilterError::Parse {
        value: value.to_owned(),
        source,
    })
}

/// [`filter`] from this process's environment.
pub fn filter_from_env(default: &str) -> Result<Targets, FilterError> {
    filter(std::env::var_os(FILTER_VAR).as_deref(), default)
}

/// [`ansi`] for this process's stderr and environment.
pub fn stderr_colour() -> bool {
    ansi(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// The stderr layer in `format`, showing what `filter` lets through.
pub fn stderr_layer<S>(format: LogFormat, filter: Targets) -> impl Layer<S> + Send + Sync
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

    #[test]
    fn the_documented_filters_parse_and_let_through_what_they_name() {
        use tracing::Level;
        // The bridge's default and the README's `RUST_LOG=debug`, `RUST_LOG=info,rumqttd=info`.
        let default = filter(None, "info,rumqttd=off").unwrap();
        assert!(default.would_enable("edge_bridge::link", &Level::INFO));
        assert!(!default.would_enable("edge_bridge::link", &Level::DEBUG));
        assert!(!default.would_enable("rumqttd::router", &Level::ERROR));

        let debug = filter(Some(OsStr::new("debug")), "info,rumqttd=off").unwrap();
        assert!(debug.would_enable("edge_bridge::link", &Level::DEBUG));
        assert!(!debug.would_enable("edge_bridge::link", &Level::TRACE));

        let broker = filter(Some(OsStr::new("info,rumqttd=info")), "info,rumqttd=off").unwrap();
        assert!(broker.would_enable("rumqttd::server::broker", &Level::INFO));
        assert!(!broker.would_enable("rumqttd::server::broker", &Level::DEBUG));

        let one_module = filter(Some(OsStr::new("warn,edge_bridge::queue=trace")), "").unwrap();
        assert!(one_module.would_enable("edge_bridge::queue::store", &Level::TRACE));
        assert!(!one_module.would_enable("edge_bridge::link", &Level::INFO));
        assert!(one_module.would_enable("edge_bridge::link", &Level::WARN));
    }

    #[test]
    fn an_empty_filter_means_the_default() {
        let f = filter(Some(OsStr::new("")), "info,rumqttd=off").unwrap();
        assert!(f.would_enable("edge_bridge", &tracing::Level::INFO));
    }

    #[test]
    fn a_bad_filter_is_an_error_naming_the_variable_and_its_value() {
        let e = filter(Some(OsStr::new("info,rumqttd=loud")), "info").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(r#"RUST_LOG="info,rumqttd=loud": "#),
            "{text}"
        );
        assert!(text.contains("target=level"), "{text}");

        let e = filter(Some(OsStr::new("a=b=c")), "info").unwrap_err();
        assert!(e.to_string().starts_with(r#"RUST_LOG="a=b=c": "#), "{e}");
    }

    #[test]
    #[cfg(unix)]
    fn a_filter_that_is_not_utf8_is_an_error() {
        use std::os::unix::ffi::OsStrExt;
        let e = filter(Some(OsStr::from_bytes(b"info,\xff=debug")), "info").unwrap_err();
        assert!(e.to_string().ends_with("not UTF-8"), "{e}");
    }
}
