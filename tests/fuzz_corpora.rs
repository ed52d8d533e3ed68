//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/*`) through
//! the same invariant checks the fuzz targets run (`fuzz/checks/`), so plain
//! `cargo test` on stable covers what the fuzzers found, without nightly.

#[path = "../fuzz/checks/mod.rs"]
mod checks;

use std::path::Path;

fn replay(target: &str) {
    let (_, check) = checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no seeds", dir.display());
    for file in &files {
        let data = std::fs::read(file).expect("a corpus file");
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{} fails {target}'s invariants", file.display());
        }
    }
}

#[test]
fn config() {
    replay("config");
}

#[test]
fn cookie() {
    replay("cookie");
}

#[test]
fn headers() {
    replay("headers");
}

#[test]
fn routing() {
    replay("routing");
}

#[test]
fn edit() {
    replay("edit");
}

#[test]
fn http1() {
    replay("http1");
}
