//! `cutover set` and `cutover rollback`: edit the weights in a config file
//! without disturbing anything else (comments, order, formatting), validate
//! the result with the same code as `cutover check`, and replace the file
//! atomically. Edits are serialized by an exclusive lock on the file's
//! directory, so two concurrent edits cannot lose one another.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use toml_edit::{DocumentMut, Item, TableLike, Value};

/// What to do to the weights of the selected routes.
pub enum Edit<'a> {
    /// Set these backends' weights; others keep theirs.
    Set(&'a [(String, u32)]),
    /// Give `to` all the weight (100) and every other backend 0.
    Rollback { to: &'a str },
}

/// Applies `edit` to `route` (or every route) of the file at `path` and
/// returns one line per changed route describing the change.
pub fn apply(path: &Path, route: Option<&str>, edit: Edit<'_>) -> anyhow::Result<Vec<String>> {
    // Edit the symlink's target in place of the link, so the link survives.
    let target =
        fs::canonicalize(path).with_context(|| format!("cannot open {}", path.display()))?;
    let dir = target
        .parent()
        .context("config file has no directory")?
        .to_path_buf();
    let lock = File::open(&dir).with_context(|| format!("cannot open {}", dir.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", dir.display()))?;

    if let Edit::Set(pairs) = &edit
        && let Some((dup, _)) = pairs
            .iter()
            .enumerate()
            .find_map(|(i, (b, _))| pairs[..i].iter().find(|(o, _)| o == b))
    {
        bail!("backend \"{dup}\" is given twice");
    }
    let before =
        fs::read_to_string(&target).with_context(|| format!("cannot read {}", target.display()))?;
    let (after, changes) = edit_text(&target, &before, route, &edit).map_err(|e| {
        if e.is::<super::ConfigError>() {
            anyhow::anyhow!("the edited config would be invalid; file left unchanged:\n{e}")
        } else {
            e
        }
    })?;
    if after != before {
        write_atomically(&target, &dir, after.as_bytes())?;
    }
    Ok(changes)
}

/// The pure part of [`apply`]: the edited text of `before` (the file at
/// `path`, which names it in errors) and one line per changed route, or an
/// error, a [`super::ConfigError`] when the result would not validate.
/// Reads and writes nothing; the fuzzer drives it (fuzz/checks/edit.rs).
pub fn edit_text(
    path: &Path,
    before: &str,
    route: Option<&str>,
    edit: &Edit<'_>,
) -> anyhow::Result<(String, Vec<String>)> {
    // toml_edit writes "\n" and drops a byte-order mark: put both back.
    let bom = before.starts_with('\u{feff}');
    let mut doc: DocumentMut =
        before
            .trim_start_matches('\u{feff}')
            .parse()
            .map_err(|e: toml_edit::TomlError| {
                anyhow::anyhow!("{}: {}", path.display(), e.message())
            })?;
    let changes = edit_routes(&mut doc, route, edit)?;
    let mut after = restore_line_endings(before.trim_start_matches('\u{feff}'), &doc.to_string());
    if bom {
        after.insert(0, '\u{feff}');
    }
    // The same validation as `cutover check`, without resolving secrets:
    // the operator's shell need not see the proxy's secret files or
    // environment, least of all during a rollback.
    super::parse(path, &after)?;
    Ok((after, changes))
}

fn edit_routes(
    doc: &mut DocumentMut,
    only: Option<&str>,
    edit: &Edit<'_>,
) -> anyhow::Result<Vec<String>> {
    let Some(routes) = doc.get_mut("routes") else {
        bail!("the config has no [[routes]]");
    };
    let tables: Vec<&mut dyn TableLike> = match routes {
        Item::ArrayOfTables(a) => a.iter_mut().map(|t| t as &mut dyn TableLike).collect(),
        Item::Value(Value::Array(a)) => a
            .iter_mut()
            .filter_map(|v| v.as_inline_table_mut().map(|t| t as &mut dyn TableLike))
            .collect(),
        _ => bail!("`routes` is not an array of tables"),
    };
    let mut changes = Vec::new();
    let mut matched = false;
    let mut rolled_back = false;
    let mut listed = std::collections::HashSet::new();
    for table in tables {
        let name = table
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_owned();
        if only.is_some_and(|o| o != name) {
            continue;
        }
        matched = true;
        let Some(weights) = table.get_mut("weights").and_then(|w| w.as_table_like_mut()) else {
            bail!("route \"{name}\" has no weights table");
        };
        listed.extend(weights.iter().map(|(k, _)| k.to_owned()));
        let old: Vec<(String, i64)> = weights
            .iter()
            .map(|(k, v)| (k.to_owned(), v.as_integer().unwrap_or(0)))
            .collect();
        match edit {
            Edit::Set(pairs) => {
                for (backend, w) in pairs.iter() {
                    // Without --route only backends a route already lists
                    // change; naming the route may add one.
                    if only.is_some() || weights.contains_key(backend) {
                        set_weight(weights, backend, i64::from(*w));
                    }
                }
            }
            Edit::Rollback { to } => {
                if !old.iter().any(|(k, _)| k == to) {
                    if only.is_some() {
                        bail!("route \"{name}\" has no backend \"{to}\" in its weights");
                    }
                    // Roll back every route that has `to`; name the others.
                    changes.push(format!("{name}: skipped (no backend \"{to}\")"));
                    continue;
                }
                rolled_back = true;
                for (backend, _) in &old {
                    set_weight(weights, backend, if backend == to { 100 } else { 0 });
                }
            }
        }
        let new: Vec<(String, i64)> = weights
            .iter()
            .map(|(k, v)| (k.to_owned(), v.as_integer().unwrap_or(0)))
            .collect();
        changes.push(describe(&name, &old, &new));
        // A rollout owns its route's weights: removing its section is what
        // makes the file's weights win, even when they did not change.
        if matches!(edit, Edit::Rollback { .. }) && table.remove("rollout").is_some() {
            changes.push(format!(
                "{name}: [routes.rollout] removed: the rollout ends, these weights are in force"
            ));
        }
    }
    if !matched {
        bail!("no route named \"{}\"", only.unwrap_or_default());
    }
    if let Edit::Rollback { to } = edit
        && !rolled_back
    {
        bail!("no route has backend \"{to}\" in its weights");
    }
    if let (Edit::Set(pairs), None) = (edit, only)
        && let Some((missing, _)) = pairs.iter().find(|(b, _)| !listed.contains(b.as_str()))
    {
        bail!(
            "no route lists backend \"{missing}\" in its weights; name one with --route to add it"
        );
    }
    Ok(changes)
}

/// Replaces a weight's value, keeping the whitespace and comments around it.
fn set_weight(weights: &mut dyn TableLike, backend: &str, w: i64) {
    match weights.get_mut(backend).and_then(|i| i.as_value_mut()) {
        Some(v) => {
            let decor = v.decor().clone();
            *v = Value::from(w);
            *v.decor_mut() = decor;
        }
        None => {
            weights.insert(backend, toml_edit::value(w));
        }
    }
}

/// "app: blue 90 -> 50, green 10 -> 50".
fn describe(route: &str, old: &[(String, i64)], new: &[(String, i64)]) -> String {
    let parts: Vec<String> = new
        .iter()
        .map(|(k, n)| match old.iter().find(|(o, _)| o == k) {
            Some((_, o)) if o != n => format!("{k} {o} -> {n}"),
            Some(_) => format!("{k} {n}"),
            None => format!("{k} (new) {n}"),
        })
        .collect();
    format!("{route}: {}", parts.join(", "))
}

/// Gives each line of `after` (which toml_edit wrote with "\n") the line
/// ending its line had in `before`, so a file with mixed endings keeps them.
/// Lines correspond one to one, except lines the edit inserted (a new
/// weight under `[routes.weights]`), which take their neighbour's ending.
fn restore_line_endings(before: &str, after: &str) -> String {
    let old: Vec<(&str, &str)> = before.split_inclusive('\n').map(split_ending).collect();
    let normalized = after.replace("\r\n", "\n");
    let new: Vec<(&str, &str)> = normalized.split_inclusive('\n').map(split_ending).collect();
    let mut extra = new.len().saturating_sub(old.len());
    let last = old
        .iter()
        .rev()
        .find(|(_, e)| !e.is_empty())
        .map_or("\n", |(_, e)| *e);
    let mut out = String::with_capacity(after.len() + old.len());
    let mut j = 0;
    for (i, (line, ending)) in new.iter().enumerate() {
        let inserted = extra > 0
            && old.get(j).is_some_and(|(o, _)| o != line)
            && new.get(i + 1).map(|(n, _)| n) == old.get(j).map(|(o, _)| o);
        let theirs = if inserted {
            extra -= 1;
            j.checked_sub(1).and_then(|k| old.get(k))
        } else {
            j += 1;
            old.get(j - 1)
        };
        out.push_str(line);
        if !ending.is_empty() {
            out.push_str(
                theirs
                    .map(|(_, e)| *e)
                    .filter(|e| !e.is_empty())
                    .unwrap_or(last),
            );
        }
    }
    out
}

/// `("a = 1", "\r\n")` from `"a = 1\r\n"`.
fn split_ending(line: &str) -> (&str, &str) {
    if let Some(l) = line.strip_suffix("\r\n") {
        (l, "\r\n")
    } else if let Some(l) = line.strip_suffix('\n') {
        (l, "\n")
    } else {
        (line, "")
    }
}

/// Temp file in the same directory, fsync, keep owner, group and
/// permissions, rename over, fsync the directory.
fn write_atomically(target: &Path, dir: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(target)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".cutover-edit-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    // A root-run rollback must not leave a file the proxy's user cannot
    // read. Owner before mode: chown may clear set-id bits.
    if let Err(e) = std::os::unix::fs::fchown(tmp.as_file(), Some(meta.uid()), Some(meta.gid())) {
        // Not root and not the owner: rewrite the file in place instead,
        // which keeps its owner, group and mode (a reader may then see a
        // partial file once; the watcher rereads after the next event).
        tracing::warn!(error = %e, "cannot keep the file's owner on a new file; rewriting it in place");
        drop(tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(target)
            .with_context(|| format!("cannot write {}", target.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        return Ok(());
    }
    fs::set_permissions(tmp.path(), meta.permissions())?;
    tmp.as_file().sync_all()?;
    let target: PathBuf = target.to_path_buf();
    tmp.persist(&target)
        .with_context(|| format!("cannot replace {}", target.display()))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[[routes]]\nname = \"app\" # the app\nweights = { blue = 90, green = 10 } # canary\n\n[[routes]]\nname = \"api\"\n[routes.weights]\nblue = 1 # one\ngreen = 0\n";

    #[test]
    fn set_keeps_comments_and_layout() {
        let mut doc: DocumentMut = TEXT.parse().unwrap();
        let pairs = [("blue".to_owned(), 50), ("green".to_owned(), 50)];
        let changes = edit_routes(&mut doc, Some("app"), &Edit::Set(&pairs)).unwrap();
        assert_eq!(changes, ["app: blue 90 -> 50, green 10 -> 50"]);
        assert_eq!(
            doc.to_string(),
            TEXT.replace("blue = 90, green = 10", "blue = 50, green = 50")
        );
    }

    #[test]
    fn rollback_every_route() {
        let mut doc: DocumentMut = TEXT.parse().unwrap();
        let changes = edit_routes(&mut doc, None, &Edit::Rollback { to: "blue" }).unwrap();
        assert_eq!(
            changes,
            [
                "app: blue 90 -> 100, green 10 -> 0",
                "api: blue 1 -> 100, green 0"
            ]
        );
        assert!(doc.to_string().contains("blue = 100 # one\n"));
        assert!(edit_routes(&mut doc, Some("nope"), &Edit::Rollback { to: "blue" }).is_err());
    }

    #[test]
    fn mixed_line_endings_are_kept_line_by_line() {
        let before = "a = 1\r\nb = 2\n[t]\r\nc = 3\n";
        assert_eq!(
            restore_line_endings(before, "a = 1\nb = 5\n[t]\nc = 3\n"),
            before.replace("b = 2", "b = 5")
        );
        // An inserted line takes its neighbour's ending.
        assert_eq!(
            restore_line_endings(before, "a = 1\nb = 2\n[t]\nc = 3\nd = 4\n"),
            "a = 1\r\nb = 2\n[t]\r\nc = 3\nd = 4\n"
        );
        assert_eq!(
            restore_line_endings(before, "a = 1\nb = 2\n[t]\nz = 0\nc = 3\n"),
            "a = 1\r\nb = 2\n[t]\r\nz = 0\r\nc = 3\n"
        );
        assert_eq!(restore_line_endings("a = 1", "a = 2"), "a = 2");
    }

    #[test]
    fn rollback_skips_and_names_routes_without_the_backend() {
        let text = "[[routes]]\nname = \"app\"\nweights = { blue = 0, green = 1 }\n[[routes]]\nname = \"new\"\nweights = { green = 1 }\n";
        let mut doc: DocumentMut = text.parse().unwrap();
        let changes = edit_routes(&mut doc, None, &Edit::Rollback { to: "blue" }).unwrap();
        assert_eq!(
            changes,
            [
                "app: blue 0 -> 100, green 1 -> 0",
                "new: skipped (no backend \"blue\")"
            ]
        );
        assert!(edit_routes(&mut doc, Some("new"), &Edit::Rollback { to: "blue" }).is_err());
        assert!(edit_routes(&mut doc, None, &Edit::Rollback { to: "red" }).is_err());
    }

    #[test]
    fn rollback_removes_the_rollout_section() {
        let text = "[[routes]]\nname = \"app\"\nweights = { blue = 100, green = 0 }\n[routes.rollout]\nid = \"v2\"\ncanary = \"green\"\nsteps = [50, 100]\n";
        let mut doc: DocumentMut = text.parse().unwrap();
        let changes = edit_routes(&mut doc, None, &Edit::Rollback { to: "blue" }).unwrap();
        assert_eq!(
            changes[1],
            "app: [routes.rollout] removed: the rollout ends, these weights are in force"
        );
        assert!(!doc.to_string().contains("rollout"), "{doc}");
    }
}
