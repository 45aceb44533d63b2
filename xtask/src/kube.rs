//! A real Kubernetes API server for the controller's tests, built from
//! Debian's `kubernetes` source package (no registry here ships the binary)
//! and cached outside the repository, with Debian's etcd beside it.
//!
//! The recipe, and why each step is there, is in ARCHITECTURE.md ("Testing
//! against a real API server"): Kubernetes 1.20 builds only in GOPATH mode
//! through its own make rules, because its generated OpenAPI code is not in
//! the tarball.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cmd;

/// What the build needs, and what the tests run (etcd, kubectl's package
/// only where no kubectl is installed). reflect2 1.0.2 replaces the
/// vendored 1.0.1, which crashes under Go 1.18+ (see [`patch_reflect2`]).
const PACKAGES: &[&str] =
    &["golang-go", "etcd-server", "make", "rsync", "dpkg-dev", "golang-github-modern-go-reflect2-dev"];
const VERSION: &str = "v1.20.2";
/// Bumped when the recipe changes, so an older cached binary is rebuilt.
const RECIPE: &str = "2";
const SOURCES_FILE: &str = "/etc/apt/sources.list.d/ambit-deb-src.sources";

/// The cache directory for this Kubernetes version.
fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/ambit/kubernetes").join(format!("{VERSION}-{RECIPE}"))
}

/// Builds kube-apiserver once (about 5 minutes on 2 cores) and returns its
/// path; later calls find it in the cache.
pub fn ensure_apiserver() -> anyhow::Result<PathBuf> {
    let binary = cache_dir().join("kube-apiserver");
    if binary.is_file() && Path::new("/usr/bin/etcd").is_file() && kubectl_installed() {
        return Ok(binary);
    }
    if !kubectl_installed() {
        crate::setup::apt_install(&["kubernetes-client"])?;
    }
    crate::setup::apt_install(PACKAGES)?;
    if binary.is_file() {
        return Ok(binary);
    }
    enable_source_packages()?;
    let work = cache_dir().join("build");
    let tree = unpack_source(&work)?;
    patch_reflect2(&tree)?;
    build(&work, &tree)?;
    let built = tree.join("_output/bin/kube-apiserver");
    std::fs::copy(&built, &binary).with_context(|| format!("copy {}", built.display()))?;
    // The source tree and Go cache are large; only the binary is kept.
    std::fs::remove_dir_all(&work).with_context(|| format!("remove {}", work.display()))?;
    Ok(binary)
}

fn kubectl_installed() -> bool {
    Command::new("kubectl").arg("version").arg("--client").output().is_ok_and(|o| o.status.success())
}

/// Adds a deb-src entry for the mirror the machine already uses.
fn enable_source_packages() -> anyhow::Result<()> {
    if Path::new(SOURCES_FILE).is_file() {
        return Ok(());
    }
    let entry = "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n\
                 Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";
    std::fs::write(SOURCES_FILE, entry).with_context(|| format!("write {SOURCES_FILE}"))?;
    cmd::run(Command::new("apt-get").args(["update", "-qq"]))
}

/// Downloads the source package and unpacks its upstream tarball into `work`.
fn unpack_source(work: &Path) -> anyhow::Result<PathBuf> {
    if work.exists() {
        std::fs::remove_dir_all(work)?;
    }
    std::fs::create_dir_all(work)?;
    cmd::run(Command::new("apt-get").args(["source", "--download-only", "-qq", "kubernetes"]).current_dir(work))?;
    let tarball = std::fs::read_dir(work)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".orig.tar.gz"))
        .context("apt-get source kubernetes left no .orig.tar.gz")?;
    let tree = work.join("src");
    std::fs::create_dir_all(&tree)?;
    cmd::run(Command::new("tar").arg("-xzf").arg(&tarball).arg("--strip-components=1").arg("-C").arg(&tree))?;
    Ok(tree)
}

/// Kubernetes 1.20 vendors modern-go/reflect2 1.0.1, whose unsafe map
/// iteration faults under Go 1.18 and later: the API server dies on its
/// first custom resource (`fatal error: fault` in `mapiternext`). 1.0.2 is
/// the upstream fix and API-compatible; Debian packages it.
fn patch_reflect2(tree: &Path) -> anyhow::Result<()> {
    let vendored = tree.join("vendor/github.com/modern-go/reflect2");
    let fixed = Path::new("/usr/share/gocode/src/github.com/modern-go/reflect2");
    if !fixed.join("unsafe_map.go").is_file() {
        bail!("{} is missing (package golang-github-modern-go-reflect2-dev)", fixed.display());
    }
    // 1.0.2 reorganised its files: replace the package, do not overlay it.
    for entry in std::fs::read_dir(&vendored)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "go" || e == "s") {
            std::fs::remove_file(&path)?;
        }
    }
    for entry in std::fs::read_dir(fixed)? {
        let path = entry?.path();
        let source = path.extension().is_some_and(|e| e == "go" || e == "s");
        if source && !path.to_string_lossy().ends_with("_test.go") {
            let name = path.file_name().context("file name")?;
            std::fs::copy(&path, vendored.join(name)).with_context(|| format!("copy {}", path.display()))?;
        }
    }
    Ok(())
}

/// `make WHAT=cmd/kube-apiserver` from a GOPATH path, with the version
/// variables a git checkout would otherwise provide.
fn build(work: &Path, tree: &Path) -> anyhow::Result<()> {
    let gopath = work.join("gopath");
    let link = gopath.join("src/k8s.io/kubernetes");
    std::fs::create_dir_all(link.parent().context("GOPATH link has a parent")?)?;
    std::os::unix::fs::symlink(tree, &link).with_context(|| format!("symlink {}", link.display()))?;
    let status = Command::new("make")
        .arg("WHAT=cmd/kube-apiserver")
        .current_dir(&link)
        .env("GOPATH", &gopath)
        .env("GOCACHE", work.join("gocache"))
        .env("KUBE_GIT_VERSION", VERSION)
        .env("KUBE_GIT_TREE_STATE", "clean")
        .env("KUBE_GIT_MAJOR", "1")
        .env("KUBE_GIT_MINOR", "20")
        .status()
        .context("run make for kube-apiserver")?;
    if !status.success() {
        bail!("building kube-apiserver from Debian's source failed ({status})");
    }
    Ok(())
}
