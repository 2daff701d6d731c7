//! Logging: `tracing` events to stderr, as text or one JSON object per line.
//!
//! The filter comes from `--log-level` (a level or `tracing` directives), else `RUST_LOG`, else
//! `info`. Text output uses colours only when stderr is a terminal.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

/// Log output format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Where and how to log, as the command line chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Output format.
    pub format: LogFormat,
    /// A level or `tracing` directives, e.g. `info,kube=warn`.
    pub filter: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid log filter {filter:?}")]
    ParseFilter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },

    #[error("failed to install the log subscriber")]
    Install(#[source] tracing::subscriber::SetGlobalDefaultError),
}

/// Install the process-wide log subscriber described by `settings`, writing to stderr.
///
/// # Errors
/// When the filter does not parse or a subscriber is already installed.
pub fn init(settings: &LogSettings) -> Result<(), Error> {
    let ansi = std::io::stderr().is_terminal();
    let subscriber = build(settings, std::io::stderr, ansi)?;
    tracing::subscriber::set_global_default(subscriber).map_err(Error::Install)?;
    Ok(())
}

fn build<W>(settings: &LogSettings, writer: W, ansi: bool) -> Result<Box<dyn Subscriber + Send + Sync>, Error>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = settings.filter.clone();
    let env_filter = EnvFilter::builder()
        .parse(&filter)
        .map_err(|source| Error::ParseFilter { filter, source })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(writer);
    Ok(match settings.format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer that appends to a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("buffer lock").clone()).expect("utf-8")
        }
    }

    fn args(format: LogFormat, level: &str) -> LogSettings {
        LogSettings {
            format,
            filter: level.to_owned(),
        }
    }

    fn log_with(args: &LogSettings) -> String {
        let buffer = Buffer::default();
        let subscriber = build(args, buffer.clone(), false).expect("subscriber");
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(pod = "ns/p", "hidden at info");
            tracing::info!(pod = "ns/p", uid = "u-1", "evicting pod");
        });
        buffer.text()
    }

    #[test]
    fn json_lines_with_fields() {
        let out = log_with(&args(LogFormat::Json, "info"));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let event: serde_json::Value = serde_json::from_str(lines[0]).expect("json");
        assert_eq!(event["level"], "INFO");
        assert_eq!(event["message"], "evicting pod");
        assert_eq!(event["pod"], "ns/p");
        assert_eq!(event["uid"], "u-1");
    }

    #[test]
    fn text_lines_respect_the_filter() {
        let out = log_with(&args(LogFormat::Text, "debug"));
        assert!(out.contains("hidden at info"), "{out}");
        assert!(out.contains("evicting pod pod=\"ns/p\" uid=\"u-1\""), "{out}");
        assert!(!out.contains('\u{1b}'), "no colour codes when not a terminal");

        let out = log_with(&args(LogFormat::Text, "warn"));
        assert!(out.is_empty(), "{out}");
    }

    #[test]
    fn bad_filter_is_an_error() {
        let Err(err) = build(&args(LogFormat::Text, "info,[bad"), Buffer::default(), false) else {
            panic!("a bad filter must be rejected");
        };
        assert!(err.to_string().starts_with("invalid log filter"), "{err}");
    }
}
