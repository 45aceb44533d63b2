//! Local-directory mode: the same multi-document YAML users would `kubectl
//! apply`, read from a directory and watched for changes. It stands in for
//! the API server on machines without a cluster (the demo, the tests).
//!
//! Each `.yaml`/`.yml` file is read whole. A file that does not parse keeps
//! the objects it held before (the last good version); the error is logged
//! and counted. Services without a ClusterIP get one ([`ClusterIps`]), as
//! the API server would give them. Only what changed since the last read reaches translation.

use std::collections::BTreeMap;
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

    /// Reads the directory and returns what changed since the last read.
    pub fn read(&mut self) -> std::io::Result<Vec<Change>> {
        let mut seen = BTreeMap::new();
        for path in yaml_files(&self.dir)? {
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| parse_documents(&text).map_err(|e| e.to_string()));
            match parsed {
                Ok(parsed) => {
                    if !parsed.skipped.is_empty() {
                        warn!(file = %path.display(), kinds = ?parsed.skipped, "ignored kinds the mesh does not read");
                    }
                    let objects = parsed.objects.into_iter().map(|o| (o.key(), o)).collect();
                    seen.insert(path.clone(), objects);
                }
                Err(cause) => {
                    metrics::counter!(RECONCILE_ERRORS, "kind" => "file").increment(1);
                    error!(file = %path.display(), %cause, "cannot read; keeping its last good objects");
                    seen.insert(path.clone(), self.files.remove(&path).unwrap_or_default());
                }
            }
        }
        self.files = seen;
        let mut next: Objects = self.files.values().flat_map(|objects| objects.clone()).collect();
        self.cluster_ips.assign(&mut next);
        let changes = diff(&self.current, &next);
        self.current = next;
        Ok(changes)
    }

    /// Re-reads on every change until drained.
    pub async fn follow(mut self, mut reconciler: Reconciler, mut watch: DirWatch, drain: Drain) {
        loop {
            tokio::select! {
                () = drain.signaled() => return,
                event = watch.changed.recv() => if event.is_none() { return },
            }
            match self.read() {
                Ok(changes) if changes.is_empty() => {}
                Ok(changes) => drop(reconciler.apply(changes)),
                Err(cause) => error!(dir = %self.dir.display(), %cause, "cannot list the config directory"),
            }
        }
    }
}

fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    Ok(files)
}

fn diff(before: &Objects, after: &Objects) -> Vec<Change> {
    let removed = before.keys().filter(|k| !after.contains_key(*k)).map(|k| Change::Delete(k.clone()));
    let upserted = after
        .iter()
        .filter(|(key, object)| before.get(*key) != Some(*object))
        .map(|(_, object)| Change::Upsert(object.clone()));
    removed.chain(upserted).collect()
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
}
