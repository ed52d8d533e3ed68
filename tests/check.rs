//! `cutover check --config FILE`: exit 0 on a valid file; on an invalid one
//! exit 1 with `file:line:col: key.path: what` pointing at the problem.

mod common;

use std::path::Path;
use std::process::Command;

/// A valid config; each case below breaks exactly one thing in it.
const BASE: &str = r#"[listen]
http = "127.0.0.1:8080"

[admin]
listen = "127.0.0.1:9901"

[timeouts]
connect = "1s"
request = "60s"

[backends.blue]
endpoints = ["127.0.0.1:9001"]

[backends.green]
endpoints = ["127.0.0.1:9002", "http://localhost:9003"]

[[routes]]
name = "app"
weights = { blue = 90, green = 10 }

[[routes]]
name = "api"
path_prefix = "/api"
weights = { blue = 1 }
"#;

struct Case {
    what: &'static str,
    /// Replaces the first occurrence of `.0` in BASE with `.1`.
    edit: (&'static str, &'static str),
    /// The error points at the `nth` (0-based) occurrence of this text in
    /// the broken file ...
    at: (&'static str, usize),
    /// ... and checks the column too (TOML syntax errors may point anywhere
    /// on the line).
    check_col: bool,
    /// The message names this (the key path, or the offending key).
    mentions: &'static str,
}

const CASES: &[Case] = &[
    Case {
        what: "unknown key",
        edit: ("request = \"60s\"\n", "request = \"60s\"\nmax_foo = 1\n"),
        at: ("max_foo", 0),
        check_col: true,
        mentions: "max_foo",
    },
    Case {
        what: "unknown table",
        edit: ("[admin]", "[admn]"),
        at: ("admn", 0),
        check_col: false,
        mentions: "admn",
    },
    Case {
        what: "unknown backend in weights",
        edit: ("green = 10", "gren = 10"),
        at: ("gren", 0),
        check_col: true,
        mentions: "routes[0].weights",
    },
    Case {
        what: "no positive weight",
        edit: ("weights = { blue = 1 }", "weights = { blue = 0 }"),
        at: ("{ blue = 0 }", 0),
        check_col: true,
        mentions: "routes[1].weights",
    },
    Case {
        what: "duplicate route names",
        edit: ("name = \"api\"", "name = \"app\""),
        at: ("\"app\"", 1),
        check_col: true,
        mentions: "routes[1].name",
    },
    Case {
        what: "bad endpoint address (no port)",
        edit: ("\"127.0.0.1:9002\"", "\"127.0.0.1\""),
        at: ("\"127.0.0.1\"", 0),
        check_col: true,
        mentions: "backends.green.endpoints[0]",
    },
    Case {
        what: "bad endpoint address (second in the list)",
        edit: ("\"http://localhost:9003\"", "\"ftp://localhost:9003\""),
        at: ("\"ftp://localhost:9003\"", 0),
        check_col: true,
        mentions: "backends.green.endpoints[1]",
    },
    Case {
        what: "bad listen address",
        edit: ("http = \"127.0.0.1:8080\"", "http = \"localhost-8080\""),
        at: ("\"localhost-8080\"", 0),
        check_col: true,
        mentions: "listen.http",
    },
    Case {
        what: "bad admin listen address",
        edit: (
            "listen = \"127.0.0.1:9901\"",
            "listen = \"127.0.0.1:99999\"",
        ),
        at: ("\"127.0.0.1:99999\"", 0),
        check_col: true,
        mentions: "admin.listen",
    },
    Case {
        what: "bad duration",
        edit: ("connect = \"1s\"", "connect = \"1 parsec\""),
        at: ("\"1 parsec\"", 0),
        check_col: true,
        mentions: "timeouts.connect",
    },
    Case {
        what: "duration of the wrong type",
        edit: ("request = \"60s\"", "request = 60"),
        at: ("60", 0),
        check_col: true,
        mentions: "",
    },
    Case {
        what: "TOML syntax error",
        edit: ("[backends.green]", "[backends.green"),
        at: ("[backends.green", 0),
        check_col: false,
        mentions: "",
    },
    Case {
        what: "TOML syntax error (unterminated string)",
        edit: ("name = \"api\"", "name = \"api"),
        at: ("name = \"api", 0),
        check_col: false,
        mentions: "",
    },
];

/// Runs `cutover check --config path`: (exit code, stdout + stderr).
fn check(path: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("cutover runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    (line, col)
}

fn nth_offset(text: &str, needle: &str, nth: usize) -> usize {
    text.match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} #{nth} not in the config"))
        .0
}

#[test]
fn the_base_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, BASE).unwrap();
    let (code, out) = check(&path);
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn the_shipped_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cutover.toml");
    let (code, out) = check(&path);
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn each_kind_of_bad_config_points_at_its_location_and_exits_1() {
    assert_each_case(CASES);
}

/// What would fail only later, at run time or for users (issue 13, items 8
/// and 12): each is caught by `check`.
const LATER_FAILURES: &[Case] = &[
    Case {
        what: "drain without a cookie secret (a forged cookie reaches weight 0)",
        edit: (
            "weights = { blue = 90, green = 10 }\n",
            "weights = { blue = 90, green = 10 }\nsticky = { cookie = \"cutover\" }\ndrain = true\n",
        ),
        at: ("{ cookie = \"cutover\" }", 0),
        check_col: true,
        mentions: "drain = true needs a cookie secret",
    },
    Case {
        what: "health path that is not a request target",
        edit: (
            "endpoints = [\"127.0.0.1:9001\"]\n",
            "endpoints = [\"127.0.0.1:9001\"]\nhealth = { path = \"/health check\" }\n",
        ),
        at: ("\"/health check\"", 0),
        check_col: true,
        mentions: "backends.blue.health.path",
    },
    Case {
        what: "duration past the maximum (deadline arithmetic would overflow)",
        edit: ("connect = \"1s\"", "connect = \"500000000years\""),
        at: ("\"500000000years\"", 0),
        check_col: true,
        mentions: "timeouts.connect",
    },
    Case {
        what: "duration just past 365 days",
        edit: ("request = \"60s\"", "request = \"366days\""),
        at: ("\"366days\"", 0),
        check_col: true,
        mentions: "maximum of 365 days",
    },
    Case {
        what: "two routes with the same host and path_prefix",
        edit: ("path_prefix = \"/api\"", "path_prefix = \"/\""),
        at: ("\"/\"", 0),
        check_col: true,
        mentions: "routes[1]: same host and path_prefix",
    },
    Case {
        what: "routes on one host sharing a cookie with different secrets",
        edit: (
            "weights = { blue = 90, green = 10 }\n\n[[routes]]\nname = \"api\"\n",
            "weights = { blue = 90, green = 10 }\nsticky = { cookie = \"s\", secret = \"a\" }\n\n[[routes]]\nname = \"api\"\nsticky = { cookie = \"s\", secret = \"b\" }\n",
        ),
        at: ("\"s\"", 1),
        check_col: true,
        mentions: "routes[1].sticky.cookie",
    },
    Case {
        what: "routes on one host sharing a cookie with different drain settings",
        edit: (
            "weights = { blue = 90, green = 10 }\n\n[[routes]]\nname = \"api\"\n",
            "weights = { blue = 90, green = 10 }\nsticky = { cookie = \"s\", secret = \"a\" }\ndrain = true\n\n[[routes]]\nname = \"api\"\nsticky = { cookie = \"s\", secret = \"a\" }\n",
        ),
        at: ("\"s\"", 1),
        check_col: true,
        mentions: "routes[1].sticky.cookie",
    },
];

#[test]
fn what_would_fail_later_is_caught_by_check() {
    assert_each_case(LATER_FAILURES);
}

#[test]
fn the_same_cookie_with_the_same_settings_on_two_routes_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    let text = BASE.replace(
        "weights = { blue = 90, green = 10 }\n\n[[routes]]\nname = \"api\"\n",
        "weights = { blue = 90, green = 10 }\nsticky = { cookie = \"s\", secret = \"a\" }\n\n[[routes]]\nname = \"api\"\nsticky = { cookie = \"s\", secret = \"a\" }\n",
    );
    assert_ne!(text, BASE);
    std::fs::write(&path, text).unwrap();
    let (code, out) = check(&path);
    assert_eq!(code, Some(0), "{out}");
}

/// Secrets read from a file or the environment may exist only where the
/// proxy runs: `check` warns (exit 0) and `check --strict` fails (exit 1),
/// both naming the key at its location.
#[test]
fn unresolvable_secrets_are_warnings_and_errors_with_strict() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    let text = BASE.replace(
        "name = \"api\"\n",
        "name = \"api\"\nsticky = { cookie = \"k\", secret_env = \"CUTOVER_CHECK_UNSET_SECRET\" }\noverride = { header = \"x-force\", token_file = \"missing-token\" }\n",
    );
    std::fs::write(&path, &text).unwrap();
    let run = |strict: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
        cmd.args(["check", "--config"]).arg(&path);
        if strict {
            cmd.arg("--strict");
        }
        let out = cmd
            .env_remove("CUTOVER_CHECK_UNSET_SECRET")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let file = path.display().to_string();
    let (l1, c1) = line_col(
        &text,
        nth_offset(&text, "\"CUTOVER_CHECK_UNSET_SECRET\"", 0),
    );
    let (l2, c2) = line_col(&text, nth_offset(&text, "\"missing-token\"", 0));
    let env_at = format!(
        "{file}:{l1}:{c1}: routes[1].sticky.secret_env: environment variable CUTOVER_CHECK_UNSET_SECRET is not set"
    );
    let file_at = format!("{file}:{l2}:{c2}: routes[1].override.token_file: cannot read");

    let (code, out, err) = run(false);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(": ok"), "{out}");
    assert!(err.contains(&format!("warning: {env_at}")), "{err}");
    assert!(err.contains(&format!("warning: {file_at}")), "{err}");

    let (code, out, err) = run(true);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains(&env_at) && err.contains(&file_at), "{err}");
    assert!(!err.contains("warning"), "{err}");
}

fn assert_each_case(cases: &[Case]) {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        assert!(
            BASE.contains(case.edit.0),
            "{}: edit does not apply",
            case.what
        );
        let text = BASE.replacen(case.edit.0, case.edit.1, 1);
        let path = dir.path().join(format!("case{i}.toml"));
        std::fs::write(&path, &text).unwrap();
        let (code, out) = check(&path);
        let (line, col) = line_col(&text, nth_offset(&text, case.at.0, case.at.1));
        let file = path.display().to_string();
        let location = if case.check_col {
            format!("{file}:{line}:{col}:")
        } else {
            format!("{file}:{line}:")
        };
        let mut problems = Vec::new();
        if code != Some(1) {
            problems.push(format!("exit code {code:?}, expected 1"));
        }
        if !out.contains(&location) {
            problems.push(format!("no {location:?}"));
        }
        if !out.contains(case.mentions) {
            problems.push(format!("does not mention {:?}", case.mentions));
        }
        // Exactly one problem was introduced, so exactly one is reported.
        let reported = out.matches(&format!("{file}:")).count();
        if reported != 1 {
            problems.push(format!("{reported} locations reported, expected 1"));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{} ({}): {}\n  output: {}",
                case.what,
                file,
                problems.join("; "),
                out.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn errors_found_while_parsing_name_the_key_path_too() {
    // The issue asks for `file:line:col: key.path: what` for every error,
    // "like a compiler"; errors from deserializing (unknown key, wrong type)
    // must name the key path as the validation errors do.
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (edit, key) in [
        (
            ("request = \"60s\"\n", "request = \"60s\"\nmax_foo = 1\n"),
            "timeouts.max_foo",
        ),
        (("request = \"60s\"", "request = 60"), "timeouts.request"),
        (("name = \"api\"", "name = 7"), "routes[1].name"),
        (
            ("weights = { blue = 1 }", "weights = { blue = \"1\" }"),
            "routes[1].weights.blue",
        ),
    ] {
        let text = BASE.replacen(edit.0, edit.1, 1);
        let path = dir.path().join("c.toml");
        std::fs::write(&path, &text).unwrap();
        let (code, out) = check(&path);
        if code != Some(1) || !out.contains(key) {
            failures.push(format!("{key}: exit {code:?}, output: {}", out.trim()));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let text = BASE.replacen("green = 10", "gren = 10", 1).replacen(
        "connect = \"1s\"",
        "connect = \"soon\"",
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.toml");
    std::fs::write(&path, &text).unwrap();
    let (code, out) = check(&path);
    assert_eq!(code, Some(1), "{out}");
    let file = path.display().to_string();
    for (needle, key) in [
        ("\"soon\"", "timeouts.connect"),
        ("gren", "routes[0].weights"),
    ] {
        let (line, col) = line_col(&text, nth_offset(&text, needle, 0));
        let location = format!("{file}:{line}:{col}: {key}");
        assert!(out.contains(&location), "no {location:?} in {out}");
    }
}

#[test]
fn a_missing_file_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let (code, out) = check(&path);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("absent.toml"), "{out}");
}
