//! Noticing changes to files in a directory, for config read from files.
//!
//! Watch the directory, not the file: editors and Kubernetes ConfigMap
//! volumes replace files by renaming, which a watch on the old inode would
//! miss. Events coalesce: while a reload is pending, more events add
//! nothing, so a burst of writes costs one reload.

use std::path::Path;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// Keeps the watch alive; `changed` yields once per burst of changes.
#[derive(Debug)]
pub struct DirWatch {
    pub changed: mpsc::Receiver<()>,
    _watcher: notify::RecommendedWatcher,
}

impl DirWatch {
    pub fn new(dir: &Path) -> notify::Result<Self> {
        let (tx, changed) = mpsc::channel(1);
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| could_change_contents(&e.kind)) {
                let _ = tx.try_send(());
            }
        })?;
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(Self { changed, _watcher: watcher })
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
}
