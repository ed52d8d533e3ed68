//! Rollout state on disk: one JSON file per route, `<state_dir>/<route>.json`,
//! replaced atomically (write a temporary file in the same directory, fsync
//! it, rename it over the old one, fsync the directory) so a crash at any
//! point leaves either the old state or the new one, never half of either.
//!
//! These calls block: the controller runs them in `spawn_blocking`.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::machine::Rollout;

/// The file format's version, written in every file.
const VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct OnDisk {
    version: u32,
    route: String,
    #[serde(flatten)]
    rollout: Rollout,
}

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The state file of `route` in `dir`.
pub fn path(dir: &Path, route: &str) -> PathBuf {
    dir.join(format!("{route}.json"))
}

/// Reads the state of `route`: `Ok(None)` when there is no file.
pub fn load(dir: &Path, route: &str) -> Result<Option<Rollout>, StoreError> {
    let path = path(dir, route);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Read { path, source }),
    };
    let disk: OnDisk = serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
        path: path.clone(),
        why: e.to_string(),
    })?;
    if disk.version != VERSION || disk.route != route {
        return Err(StoreError::Corrupt {
            path,
            why: format!(
                "version {} for route \"{}\", expected version {VERSION} for \"{route}\"",
                disk.version, disk.route
            ),
        });
    }
    Ok(Some(disk.rollout))
}

/// Replaces the state of `route` atomically and durably.
pub fn save(dir: &Path, route: &str, rollout: &Rollout) -> Result<(), StoreError> {
    let path = path(dir, route);
    let werr = |source| StoreError::Write {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(dir).map_err(werr)?;
    let disk = OnDisk {
        version: VERSION,
        route: route.to_owned(),
        rollout: rollout.clone(),
    };
    let mut bytes = serde_json::to_vec_pretty(&disk).map_err(|e| werr(e.into()))?;
    bytes.push(b'\n');
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{route}.json."))
        .tempfile_in(dir)
        .map_err(werr)?;
    tmp.write_all(&bytes).map_err(werr)?;
    tmp.as_file().sync_all().map_err(werr)?;
    tmp.persist(&path).map_err(|e| werr(e.error))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(werr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OnFailure, RolloutSpec};
    use std::time::Duration;

    fn rollout() -> Rollout {
        let plan = RolloutSpec {
            id: "v2".into(),
            canary: "green".into(),
            baseline: "blue".into(),
            steps: vec![1, 100],
            hold: Duration::from_secs(1),
            min_requests: 1,
            on_failure: OnFailure::Rollback,
            notify: None,
            start: None,
        };
        Rollout::start(&plan, &[("blue".into(), 100), ("green".into(), 0)], 12.5)
    }

    #[test]
    fn round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("state");
        assert!(load(&sub, "app").unwrap().is_none());
        let mut r = rollout();
        save(&sub, "app", &r).unwrap();
        assert_eq!(load(&sub, "app").unwrap(), Some(r.clone()));
        r.canary_weight = 100;
        save(&sub, "app", &r).unwrap();
        assert_eq!(load(&sub, "app").unwrap(), Some(r));
        // Only the state file is left: no temporary file.
        assert_eq!(fs::read_dir(&sub).unwrap().count(), 1);
    }

    #[test]
    fn corrupt_or_foreign_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(path(dir.path(), "app"), "{\"version\": 1, \"rou").unwrap();
        let e = load(dir.path(), "app").unwrap_err().to_string();
        assert!(e.contains("app.json is corrupt"), "{e}");
        save(dir.path(), "other", &rollout()).unwrap();
        fs::copy(path(dir.path(), "other"), path(dir.path(), "app")).unwrap();
        let e = load(dir.path(), "app").unwrap_err().to_string();
        assert!(e.contains("for route \"other\""), "{e}");
    }

    #[test]
    fn an_unwritable_directory_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "").unwrap();
        assert!(save(&file.join("sub"), "app", &rollout()).is_err());
    }
}
