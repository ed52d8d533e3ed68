//! The `cutover set` / `cutover rollback` editor (`config::edit::edit_text`)
//! on valid configs: when it succeeds, the result parses and validates, it
//! differs from the input only in the selected routes' weights (and, for a
//! rollback, their `[routes.rollout]`), those weights are the ones asked
//! for, and the byte-order mark and line endings are kept.

use std::collections::BTreeMap;
use std::path::Path;

use cutover::config::edit::{Edit, edit_text};
use cutover::config::{self, Config};

use super::input::Input;

const BACKENDS: &[&str] = &["blue", "green", "red"];
const ROUTES: &[&str] = &["app", "api"];

/// The file's TOML, less every route's `weights` (and `rollout`), as text.
fn without_weights(text: &str, rollout_too: bool) -> String {
    let mut doc: toml::Table = toml::from_str(text.trim_start_matches('\u{feff}'))
        .expect("a config that validated is TOML");
    if let Some(toml::Value::Array(routes)) = doc.get_mut("routes") {
        for r in routes.iter_mut().filter_map(toml::Value::as_table_mut) {
            r.remove("weights");
            if rollout_too {
                r.remove("rollout");
            }
        }
    }
    format!("{doc:?}")
}

fn weights(config: &Config) -> Vec<(String, BTreeMap<String, u32>)> {
    config
        .routes
        .iter()
        .map(|r| (r.name.clone(), r.weights.iter().cloned().collect()))
        .collect()
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let rollback = input.bool();
    let route: Option<String> = match input.choose(4) {
        0 | 1 => None,
        2 => Some(ROUTES[input.choose(ROUTES.len())].to_owned()),
        _ => Some(String::from_utf8_lossy(input.bytes(8)).into_owned()),
    };
    let mut pairs: Vec<(String, u32)> = Vec::new();
    for _ in 0..1 + input.choose(3) {
        let b = BACKENDS[input.choose(BACKENDS.len())].to_owned();
        let w = match input.choose(4) {
            0 => input.u32(),
            _ => u32::from(input.u8() % 101),
        };
        pairs.push((b, w));
    }
    let to = BACKENDS[input.choose(BACKENDS.len())];
    let Ok(before) = std::str::from_utf8(input.rest()) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let Ok(old) = config::parse(path, before) else {
        return;
    };
    let edit = if rollback {
        Edit::Rollback { to }
    } else {
        Edit::Set(&pairs)
    };
    let Ok((after, _changes)) = edit_text(path, before, route.as_deref(), &edit) else {
        return;
    };
    let new = config::parse(path, &after).expect("the editor returned an invalid config");

    assert_eq!(
        without_weights(before, rollback),
        without_weights(&after, rollback),
        "more than the weights changed:\n{before}\n---\n{after}"
    );
    assert_eq!(
        before.starts_with('\u{feff}'),
        after.starts_with('\u{feff}')
    );
    if !before.contains('\r') {
        assert!(!after.contains('\r'), "a CR appeared");
    }
    if !before.contains("\r\n") {
        assert!(!after.contains("\r\n"));
    }

    // The weights are the ones asked for.
    let (old_w, new_w) = (weights(&old), weights(&new));
    assert_eq!(old_w.len(), new_w.len());
    for ((name, was), (_, now)) in old_w.iter().zip(&new_w) {
        let selected = route.as_ref().is_none_or(|r| r == name);
        let mut expected = was.clone();
        if selected {
            match &edit {
                Edit::Set(pairs) => {
                    for (b, w) in pairs.iter() {
                        if route.is_some() || was.contains_key(b) {
                            expected.insert(b.clone(), *w);
                        }
                    }
                }
                Edit::Rollback { to } if was.contains_key(*to) => {
                    for (b, w) in expected.iter_mut() {
                        *w = if b == to { 100 } else { 0 };
                    }
                }
                Edit::Rollback { .. } => {}
            }
        }
        assert_eq!(now, &expected, "route {name}:\n{before}\n---\n{after}");
    }
}
