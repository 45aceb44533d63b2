//! Local-directory mode: the same multi-document YAML users would `kubectl
//! apply`, read from a directory and watched for changes. It stands in for
//! the API server on machines without a cluster (the demo, the tests).
//!
//! Each `.yaml`/`.yml` file is read whole. A file that does not parse keeps
//! the objects it held before (the last good version); the error is logged
//! and counted. Services without a ClusterIP get one ([`ClusterIps`]), as
//! the API server would give them. After the first read, only the files
//! the directory watch names are re-read, and only the objects they held or
//! hold are compared: one file's change costs that file's work.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mesh::dir_watch::DirWatch;
use mesh::drain::Drain;
use tracing::{error, warn};

use crate::cluster_ips::ClusterIps;
use crate::metrics::RECONCILE_ERRORS;
use crate::reconcile::{Change, Reconciler};
use crate::resources::{Object, ObjectKey, parse_documents};

type Objects = BTreeMap<ObjectKey, Object>;

#[derive(Debug)]
pub struct LocalDir {
    dir: PathBuf,
    /// Per file, the objects of its last good version.
    files: BTreeMap<PathBuf, Objects>,
    /// All objects as last handed to translation.
    current: Objects,
    cluster_ips: ClusterIps,
}

impl LocalDir {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            files: BTreeMap::new(),
            current: Objects::new(),
            cluster_ips: ClusterIps::default(),
        }
    }

    /// Reads every file and returns what changed since the last read.
    pub fn read(&mut self) -> std::io::Result<Vec<Change>> {
        let mut paths: BTreeSet<PathBuf> = yaml_files(&self.dir)?.into_iter().collect();
        paths.extend(self.files.keys().cloned());
        Ok(self.reread(&paths))
    }

    /// Re-reads `paths` (gone ones drop their objects) and returns what
    /// changed: only the keys those files held or hold are looked at.
    pub fn reread(&mut self, paths: &BTreeSet<PathBuf>) -> Vec<Change> {
        let mut touched = BTreeSet::new();
        for path in paths.iter().filter(|p| is_config_file(&self.dir, p)) {
            let Some(state) = self.parse(path) else { continue };
            let before = match state {
                FileState::Gone => self.files.remove(path),
                FileState::Read(objects) => {
                    touched.extend(objects.keys().cloned());
                    self.files.insert(path.clone(), objects)
                }
            };
            touched.extend(before.into_iter().flat_map(BTreeMap::into_keys));
        }
        let before: Vec<(ObjectKey, Option<Object>)> =
            touched.into_iter().map(|key| (key.clone(), self.current.remove(&key))).collect();
        for (key, _) in &before {
            // Where two files define one object, the later file wins.
            if let Some(object) = self.files.values().rev().find_map(|objects| objects.get(key)) {
                self.current.insert(key.clone(), object.clone());
            }
        }
        self.cluster_ips.assign(&mut self.current);
        before
            .into_iter()
            .filter_map(|(key, before)| match (before, self.current.get(&key)) {
                (Some(_), None) => Some(Change::Delete(key)),
                (before, Some(after)) if before.as_ref() != Some(after) => Some(Change::Upsert(after.clone())),
                _ => None,
            })
            .collect()
    }

    /// A file's objects, `Gone` if it no longer exists, or `None` (after
    /// logging) when it does not parse: it keeps its last good objects.
    fn parse(&self, path: &Path) -> Option<FileState> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(FileState::Gone),
            Err(e) => return self.unreadable(path, &e.to_string()),
        };
        match parse_documents(&text) {
            Ok(parsed) => {
                if !parsed.skipped.is_empty() {
                    warn!(file = %path.display(), kinds = ?parsed.skipped, "ignored kinds the mesh does not read");
                }
                Some(FileState::Read(parsed.objects.into_iter().map(|o| (o.key(), o)).collect()))
            }
            Err(e) => self.unreadable(path, &e.to_string()),
        }
    }

    fn unreadable(&self, path: &Path, cause: &str) -> Option<FileState> {
        metrics::counter!(RECONCILE_ERRORS, "kind" => "file").increment(1);
        error!(file = %path.display(), %cause, "cannot read; keeping its last good objects");
        None
    }

    /// Re-reads what changed until drained.
    pub async fn follow(mut self, mut reconciler: Reconciler, mut watch: DirWatch, drain: Drain) {
        loop {
            tokio::select! {
                () = drain.signaled() => return,
                event = watch.changed.recv() => if event.is_none() { return },
            }
            let changes = match watch.take_changed() {
                Some(paths) => Ok(self.reread(&paths)),
                None => self.read(),
            };
            match changes {
                Ok(changes) if changes.is_empty() => {}
                Ok(changes) => drop(reconciler.apply(changes)),
                Err(cause) => error!(dir = %self.dir.display(), %cause, "cannot list the config directory"),
            }
        }
    }
}

enum FileState {
    Read(Objects),
    Gone,
}

/// A `.yaml`/`.yml` file directly in `dir`, not hidden.
fn is_config_file(dir: &Path, path: &Path) -> bool {
    path.parent() == Some(dir)
        && path.extension().is_some_and(|e| e == "yaml" || e == "yml")
        && !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| is_config_file(dir, p))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n";

    fn keys(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Upsert(o) => format!("+{}", o.key()),
                Change::Delete(k) => format!("-{k}"),
            })
            .collect()
    }

    #[test]
    fn only_changes_are_reported_and_bad_files_keep_their_objects() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap_or_default();
        write("ns.yaml", NS);
        write("notes.txt", "not yaml at all: [");
        let mut local = LocalDir::new(dir.path());
        assert_eq!(keys(&local.read().unwrap_or_default()), ["+Namespace a"]);
        assert!(local.read().unwrap_or_default().is_empty(), "nothing changed");
        write("ns.yaml", "apiVersion: v1\nkind: [");
        assert!(local.read().unwrap_or_default().is_empty(), "a broken file keeps its last good objects");
        write("ns.yaml", &format!("{NS}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: b}}\n"));
        assert_eq!(keys(&local.read().unwrap_or_default()), ["+Namespace b"]);
        std::fs::remove_file(dir.path().join("ns.yaml")).unwrap_or_default();
        assert_eq!(keys(&local.read().unwrap_or_default()), ["-Namespace a", "-Namespace b"]);
    }

    /// Only the named files are re-read; where two files define an object
    /// the later one wins, and removing it brings back the earlier one.
    #[test]
    fn rereads_only_named_files_and_the_later_file_wins() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = |name: &str| dir.path().join(name);
        let write = |name: &str, text: &str| std::fs::write(path(name), text).unwrap_or_default();
        let ns =
            |labels: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: a, labels: {{{labels}}}}}\n");
        write("1.yaml", &ns("from: one"));
        write("2.yaml", NS.replace("name: a", "name: b").as_str());
        let mut local = LocalDir::new(dir.path());
        assert_eq!(keys(&local.read().unwrap_or_default()), ["+Namespace a", "+Namespace b"]);
        write("2.yaml", &ns("from: two"));
        write("3.yaml", "kind: [");
        let named = |names: &[&str]| names.iter().map(|n| path(n)).collect::<BTreeSet<_>>();
        let changes = local.reread(&named(&["2.yaml", "other.txt"]));
        assert_eq!(keys(&changes), ["+Namespace a", "-Namespace b"], "2.yaml now redefines a; 3.yaml was not named");
        let Some(Change::Upsert(crate::resources::Object::Namespace(a))) = changes.first() else {
            panic!("no upsert of a: {changes:?}");
        };
        assert_eq!(a.metadata.labels.as_ref().and_then(|l| l.get("from")).map(String::as_str), Some("two"));
        std::fs::remove_file(path("2.yaml")).unwrap_or_default();
        assert_eq!(keys(&local.reread(&named(&["2.yaml"]))), ["+Namespace a"], "back to 1.yaml's version");
        assert!(local.reread(&named(&["2.yaml"])).is_empty(), "nothing left to change");
    }
}
