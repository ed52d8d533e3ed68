//! Config loader and validator: any text parses into a `Config` that builds
//! a routing table, or fails with diagnostics that each point at a real
//! `file:line:col`; nothing panics.

use std::path::Path;

use cutover::config::{self, ConfigError, Loaded};

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    match config::parse(path, text) {
        Ok(config) => {
            // What a reload does next: build (and drop) the routing table.
            let loaded = Loaded {
                config,
                path: path.into(),
                sha256: String::new(),
                fingerprint: String::new(),
            };
            super::routing::build(&loaded);
        }
        Err(ConfigError::Invalid(diagnostics)) => {
            assert!(!diagnostics.is_empty(), "an error without a diagnostic");
            let lines = text.split('\n').count();
            for d in &diagnostics {
                assert_eq!(d.file, "fuzz.toml", "{d}");
                assert!(d.line >= 1 && d.line <= lines, "line out of the file: {d}");
                let width = text
                    .split('\n')
                    .nth(d.line - 1)
                    .map_or(0, |l| l.chars().count());
                assert!(
                    d.col >= 1 && d.col <= width + 1,
                    "column out of the line: {d}"
                );
                assert!(!d.message.is_empty(), "{d}");
            }
        }
        Err(e @ ConfigError::Io { .. }) => panic!("parse read a file: {e}"),
    }
}
