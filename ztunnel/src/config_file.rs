//! The static config cause: a YAML file of the mesh config model, watched
//! for changes. A bad file never replaces a good config: the error is
//! logged, counted, and the last good version stays in force.

use std::path::{Path, PathBuf};

use mesh::config::{ConfigError, Snapshot};
use mesh::dir_watch::DirWatch;
use mesh::drain::Drain;
use tracing::{error, info, warn};

use crate::metrics::CONFIG_UPDATES;
use crate::state::State;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("config file {path}: {cause}")]
    Invalid { path: PathBuf, cause: ConfigError },
    #[error("cannot watch config file {path}: {cause}")]
    Watch { path: PathBuf, cause: notify::Error },
}

/// A file's contents and the snapshot they make.
#[derive(Debug)]
pub struct Loaded {
    pub text: String,
    pub snapshot: Snapshot,
}

pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|cause| LoadError::Read { path: path.to_owned(), cause })?;
    let snapshot = Snapshot::from_yaml(&text).map_err(|cause| LoadError::Invalid { path: path.to_owned(), cause })?;
    Ok(Loaded { text, snapshot })
}

/// Reloads the file when its directory changes ([`DirWatch`]). Unchanged
/// contents are ignored.
#[derive(Debug)]
pub struct ConfigWatcher {
    path: PathBuf,
    /// The contents last acted on, good or bad.
    last_text: String,
    watch: DirWatch,
}

impl ConfigWatcher {
    pub fn new(path: &Path, loaded_text: String) -> Result<Self, LoadError> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let watch = DirWatch::new(dir).map_err(|cause| LoadError::Watch { path: path.to_owned(), cause })?;
        Ok(Self { path: path.to_owned(), last_text: loaded_text, watch })
    }

    pub async fn run(mut self, state: State, drain: Drain) {
        loop {
            tokio::select! {
                () = drain.signaled() => break,
                event = self.watch.changed.recv() => if event.is_none() { break },
            }
            self.reload(&state);
        }
    }

    fn reload(&mut self, state: &State) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            // Mid-rename the file can be briefly absent; the next event reloads.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                warn!(path = %self.path.display(), "config file missing; keeping the last good config");
                return;
            }
            Err(cause) => {
                let error = LoadError::Read { path: self.path.clone(), cause };
                return self.reject(state, &error);
            }
        };
        // One change fires several events; report each new content once.
        if text == self.last_text {
            return;
        }
        match Snapshot::from_yaml(&text) {
            Ok(snapshot) => {
                let config = snapshot.config();
                let (workloads, services) = (config.workloads.len(), config.services.len());
                let version = state.apply(snapshot);
                metrics::counter!(CONFIG_UPDATES, "result" => "applied").increment(1);
                info!(version, workloads, services, "config applied");
            }
            Err(cause) => {
                let error = LoadError::Invalid { path: self.path.clone(), cause };
                self.reject(state, &error);
            }
        }
        self.last_text = text;
    }

    fn reject(&self, state: &State, error: &LoadError) {
        metrics::counter!(CONFIG_UPDATES, "result" => "rejected").increment(1);
        let version = state.current().version;
        error!(%error, kept_version = version, "config rejected; keeping the last good config");
    }
}
