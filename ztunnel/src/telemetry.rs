//! Logging. Access logs go to the `access` target (one line per
//! connection); everything else to the component targets. The filter can be
//! changed at run time through the admin endpoint.

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::cli::LogFormat;

/// Changes the log filter of the running process.
#[derive(Clone, Debug)]
pub struct LogLevelHandle(reload::Handle<EnvFilter, Registry>);

#[derive(Debug, thiserror::Error)]
pub enum LogLevelError {
    #[error("invalid log filter {filter:?}: {cause}")]
    Invalid { filter: String, cause: tracing_subscriber::filter::ParseError },
    #[error("cannot apply log filter: {0}")]
    Reload(reload::Error),
}

impl From<reload::Error> for LogLevelError {
    fn from(error: reload::Error) -> Self {
        Self::Reload(error)
    }
}

impl LogLevelHandle {
    pub fn set(&self, filter: &str) -> Result<(), LogLevelError> {
        let parsed =
            EnvFilter::try_new(filter).map_err(|cause| LogLevelError::Invalid { filter: filter.to_owned(), cause })?;
        self.0.reload(parsed)?;
        Ok(())
    }

    pub fn current(&self) -> String {
        self.0.with_current(ToString::to_string).unwrap_or_default()
    }
}

pub fn init(filter: &str, format: LogFormat) -> Result<LogLevelHandle, LogLevelError> {
    let parsed =
        EnvFilter::try_new(filter).map_err(|cause| LogLevelError::Invalid { filter: filter.to_owned(), cause })?;
    let (filter_layer, handle) = reload::Layer::new(parsed);
    let registry = tracing_subscriber::registry().with(filter_layer);
    match format {
        LogFormat::Plain => registry.with(tracing_subscriber::fmt::layer()).init(),
        LogFormat::Json => registry.with(mesh::json_log::layer()).init(),
    }
    Ok(LogLevelHandle(handle))
}
