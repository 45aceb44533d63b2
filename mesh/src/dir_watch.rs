//! Noticing changes to files in a directory, for config read from files.
//!
//! Watch the directory, not the file: editors and Kubernetes ConfigMap
//! volumes replace files by renaming, which a watch on the old inode would
//! miss. Events coalesce: while a reload is pending, more events add
//! nothing, so a burst of writes costs one reload. Which files changed is
//! kept too (bounded), for readers that re-read only those.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// Paths remembered between two reloads; beyond this, "everything".
const MAX_PENDING_PATHS: usize = 4096;

/// Keeps the watch alive; `changed` yields once per burst of changes.
#[derive(Debug)]
pub struct DirWatch {
    pub changed: mpsc::Receiver<()>,
    pending: Arc<Mutex<Pending>>,
    _watcher: notify::RecommendedWatcher,
}

/// What changed since the last [`DirWatch::take_changed`].
#[derive(Debug, Default)]
struct Pending {
    everything: bool,
    paths: BTreeSet<PathBuf>,
}

impl Pending {
    fn note(&mut self, event: &notify::Event) {
        if event.paths.is_empty() || event.kind == notify::EventKind::Any {
            self.everything = true;
        }
        self.paths.extend(event.paths.iter().cloned());
        if self.paths.len() > MAX_PENDING_PATHS {
            self.everything = true;
            self.paths.clear();
        }
    }
}

impl DirWatch {
    pub fn new(dir: &Path) -> notify::Result<Self> {
        let (tx, changed) = mpsc::channel(1);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let noted = pending.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let mut pending = noted.lock().unwrap_or_else(PoisonError::into_inner);
            match event {
                Ok(event) if could_change_contents(&event.kind) => pending.note(&event),
                Ok(_) => return,
                // The watch lost events (a queue overflow): assume anything changed.
                Err(_) => pending.everything = true,
            }
            let _ = tx.try_send(());
        })?;
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(Self { changed, pending, _watcher: watcher })
    }

    /// The paths changed since the last call, or `None` when that is not
    /// known (read everything). Call it after `changed` yields.
    pub fn take_changed(&self) -> Option<BTreeSet<PathBuf>> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let Pending { everything, paths } = std::mem::take(&mut *pending);
        (!everything).then_some(paths)
    }
}

/// Whether an event in the watched directory can change a file. Access
/// events (open, read, close without writing) must not count: reloading
/// opens the file, and reacting to that would reload forever.
fn could_change_contents(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    matches!(kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any)
}

#[cfg(test)]
mod tests {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};

    #[test]
    fn only_changes_trigger_reloads() {
        assert!(super::could_change_contents(&EventKind::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(super::could_change_contents(&EventKind::Create(CreateKind::File)));
        assert!(!super::could_change_contents(&EventKind::Access(AccessKind::Open(AccessMode::Read))));
        assert!(!super::could_change_contents(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
    }

    /// A real inotify watch names the files written since the last take.
    #[tokio::test]
    async fn names_the_files_that_changed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut watch = super::DirWatch::new(dir.path()).unwrap_or_else(|e| panic!("watch: {e}"));
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, "x").unwrap_or_else(|e| panic!("write: {e}"));
        let woke = tokio::time::timeout(std::time::Duration::from_secs(10), watch.changed.recv()).await;
        assert_eq!(woke.ok().flatten(), Some(()), "no change noticed");
        let changed = watch.take_changed().unwrap_or_default();
        assert!(changed.contains(&file), "{changed:?} does not name {}", file.display());
        assert_eq!(watch.take_changed(), Some(Default::default()), "taken once");
    }
}
