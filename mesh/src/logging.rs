//! Logging, the same for every binary: `--log-level` / `AMBIT_LOG` takes a
//! filter in `RUST_LOG` syntax (tracing's `EnvFilter`: `info`,
//! `warn,ztunnel=debug`, `info,access=off`); `--log-format` /
//! `AMBIT_LOG_FORMAT` is `plain` (coloured only on a terminal, so files and
//! pipes get no escape codes) or `json` (one object per line, see
//! [`crate::json_log`]). The filter can be changed at run time through the
//! returned [`LogLevelHandle`] (the agent's admin endpoint does).

use std::io::IsTerminal as _;

use serde::Serialize;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

#[derive(Clone, Debug, clap::Args, Serialize)]
pub struct LogArgs {
    /// Log filter, `RUST_LOG` syntax (e.g. `info`, `warn,ztunnel=debug`,
    /// `info,access=off`).
    #[arg(long, env = "AMBIT_LOG", default_value = "info")]
    pub log_level: String,
    /// `plain` (coloured on a terminal only) or `json` (one object per line).
    #[arg(long, env = "AMBIT_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

/// Changes the log filter of the running process.
#[derive(Clone, Debug)]
pub struct LogLevelHandle(reload::Handle<EnvFilter, Registry>);

#[derive(Debug, thiserror::Error)]
pub enum LogLevelError {
    #[error("invalid log filter {filter:?}: {cause}")]
    Invalid { filter: String, cause: tracing_subscriber::filter::ParseError },
    #[error("cannot apply log filter: {0}")]
    Reload(#[from] reload::Error),
}

impl LogLevelHandle {
    pub fn set(&self, filter: &str) -> Result<(), LogLevelError> {
        self.0.reload(parse(filter)?)?;
        Ok(())
    }

    pub fn current(&self) -> String {
        self.0.with_current(ToString::to_string).unwrap_or_default()
    }
}

fn parse(filter: &str) -> Result<EnvFilter, LogLevelError> {
    EnvFilter::try_new(filter).map_err(|cause| LogLevelError::Invalid { filter: filter.to_owned(), cause })
}

/// Installs the process's logger.
pub fn init(args: &LogArgs) -> Result<LogLevelHandle, LogLevelError> {
    let (filter, handle) = reload::Layer::new(parse(&args.log_level)?);
    let registry = tracing_subscriber::registry().with(filter);
    match args.log_format {
        LogFormat::Plain => {
            let colour = std::io::stdout().is_terminal();
            registry.with(tracing_subscriber::fmt::layer().with_ansi(colour)).init();
        }
        LogFormat::Json => registry.with(crate::json_log::layer()).init(),
    }
    Ok(LogLevelHandle(handle))
}

/// The admin endpoint's `/logging`: the current filter, or, with
/// `?level=<filter>`, a new one (400 if it does not parse).
pub fn admin_response(handle: &LogLevelHandle, query: Option<&str>) -> crate::http_server::Response {
    use crate::http_server::text;
    let level = query.into_iter().flat_map(|q| q.split('&')).find_map(|pair| pair.strip_prefix("level="));
    match level {
        None => text(http::StatusCode::OK, format!("{}\n", handle.current())),
        Some(level) => match handle.set(level) {
            Ok(()) => text(http::StatusCode::OK, format!("log level set to {level}\n")),
            Err(e) => text(http::StatusCode::BAD_REQUEST, format!("{e}\n")),
        },
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn flags_and_bad_filters() {
        let args = Args::try_parse_from(["x", "--log-level", "warn,access=off", "--log-format", "json"]).unwrap();
        assert_eq!((args.log.log_level.as_str(), args.log.log_format), ("warn,access=off", LogFormat::Json));
        let defaults = Args::try_parse_from(["x"]).unwrap();
        assert_eq!((defaults.log.log_level.as_str(), defaults.log.log_format), ("info", LogFormat::Plain));
        assert!(parse("info,[").is_err());
    }
}
