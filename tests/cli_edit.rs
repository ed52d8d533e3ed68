//! `cutover set` and `cutover rollback` (issue 4), run as the real binary
//! on files in temporary directories: byte-for-byte preservation, the
//! printed diff, refusal without touching the file, `--route`, symlinks,
//! permissions, and concurrent edits.
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

/// A config with two routes, comments everywhere, odd spacing, both table
/// styles and no trailing newline.
const TWO_ROUTES: &str = r#"# Cutover config for the shop.
# Blue is live.

[listen]
http = "127.0.0.1:0"   # any port

[backends.blue]
endpoints = ["127.0.0.1:9001"]

[backends.green]   # the canary
endpoints = ["127.0.0.1:9002"]

[[routes]]
name = "app"       # the storefront
weights = { blue = 90,   green=10 }   # canary at 10%
sticky = { cookie = "cutover", max_age = "1h" }

# The API keeps its own split.
[[routes]]
name = "api"
path_prefix = "/api"
[routes.weights]
blue  =  70   # most
green = 30
# end"#;

fn cutover(args: &[&str], config: &Path) -> Output {
    Command::new(common::proxy::bin())
        .args(&args[..1])
        .arg("--config")
        .arg(config)
        .args(&args[1..])
        .output()
        .expect("cutover runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh directory holding `cutover.toml` with `text`.
fn file_with(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Only these substrings change; every other byte stays.
fn replaced(text: &str, edits: &[(&str, &str)]) -> String {
    let mut out = text.to_owned();
    for (from, to) in edits {
        assert_eq!(
            out.matches(from).count(),
            1,
            "{from:?} is unique in the fixture"
        );
        out = out.replace(from, to);
    }
    out
}

fn check_valid(path: &Path) {
    let o = Command::new(common::proxy::bin())
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success(), "cutover check: {}", stderr(&o));
}

#[test]
fn set_changes_only_the_weight_values_byte_for_byte_and_prints_a_one_line_diff() {
    let (_d, path) = file_with(TWO_ROUTES);
    let o = cutover(&["set", "--route", "app", "blue=50", "green=50"], &path);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = replaced(
        TWO_ROUTES,
        &[("blue = 90,", "blue = 50,"), ("green=10 }", "green=50 }")],
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
    assert_eq!(
        stdout(&o),
        "app: blue 90 -> 50, green 10 -> 50\n",
        "one line naming the change"
    );
    check_valid(&path);

    // Without --route every route is set; one line per route.
    let (_d, path) = file_with(TWO_ROUTES);
    let o = cutover(&["set", "blue=50", "green=50"], &path);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = replaced(
        TWO_ROUTES,
        &[
            ("blue = 90,", "blue = 50,"),
            ("green=10 }", "green=50 }"),
            ("blue  =  70 ", "blue  =  50 "),
            ("green = 30\n", "green = 50\n"),
        ],
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
    assert_eq!(
        stdout(&o),
        "app: blue 90 -> 50, green 10 -> 50\napi: blue 70 -> 50, green 30 -> 50\n"
    );

    // Setting one backend leaves the other's value alone.
    let (_d, path) = file_with(TWO_ROUTES);
    let o = cutover(&["set", "--route", "api", "green=5"], &path);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        replaced(TWO_ROUTES, &[("green = 30\n", "green = 5\n")])
    );
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
    assert!(stdout(&o).contains("green 30 -> 5"), "{}", stdout(&o));
}

/// Windows line endings are bytes outside the changed values too.
#[test]
fn set_keeps_crlf_line_endings() {
    let crlf = TWO_ROUTES.replace('\n', "\r\n");
    let (_d, path) = file_with(&crlf);
    let o = cutover(&["set", "--route", "app", "blue=50", "green=50"], &path);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = replaced(
        &crlf,
        &[("blue = 90,", "blue = 50,"), ("green=10 }", "green=50 }")],
    );
    let got = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        got.matches("\r\n").count(),
        crlf.matches("\r\n").count(),
        "line endings rewritten: CRLF became LF"
    );
    assert_eq!(got, want);
}

/// A UTF-8 byte order mark (some Windows editors write one) is kept.
#[test]
fn set_keeps_a_byte_order_mark() {
    let bom = format!("\u{feff}{TWO_ROUTES}");
    let (_d, path) = file_with(&bom);
    check_valid(&path);
    let o = cutover(&["set", "--route", "app", "green=20"], &path);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = std::fs::read(&path).unwrap();
    assert!(
        got.starts_with(b"\xEF\xBB\xBF"),
        "the byte order mark was dropped"
    );
    assert_eq!(
        String::from_utf8(got).unwrap(),
        replaced(&bom, &[("green=10 }", "green=20 }")])
    );
}

fn bytes_and_mtime(path: &Path) -> (Vec<u8>, SystemTime, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (std::fs::read(path).unwrap(), m.modified().unwrap(), m.ino())
}

#[test]
fn refused_edits_exit_non_zero_and_leave_the_file_untouched() {
    let (dir, path) = file_with(TWO_ROUTES);
    // An mtime in the past, so any rewrite would show even on a coarse clock.
    let past = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(past)
        .unwrap();
    let before = bytes_and_mtime(&path);
    let cases: &[&[&str]] = &[
        &["set", "blue=50", "gren=50"],         // unknown backend
        &["set", "--route", "app", "purple=1"], // unknown backend, one route
        &["set", "--route", "nope", "blue=50"], // unknown route
        &["set", "blue=0", "green=0"],          // no positive weight
        &["set", "--route", "app", "blue=-1"],  // not a weight
        &["set", "--route", "app", "blue"],     // not BACKEND=WEIGHT
        &["rollback", "--to", "purple"],        // unknown backend
        &["rollback", "--to", "blue", "--route", "nope"],
    ];
    for args in cases {
        let o = cutover(args, &path);
        assert!(
            !o.status.success(),
            "{args:?} must fail; stdout: {}",
            stdout(&o)
        );
        assert!(!stderr(&o).trim().is_empty(), "{args:?} says why");
        assert_eq!(bytes_and_mtime(&path), before, "{args:?} touched the file");
    }
    // The unknown-backend error points into the file.
    let o = cutover(&["set", "--route", "app", "blue=50", "gren=50"], &path);
    assert!(stderr(&o).contains("gren"), "{}", stderr(&o));
    // No temporary file is left behind either.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["cutover.toml"]);
}

#[test]
fn route_flag_changes_only_that_route() {
    let (_d, path) = file_with(TWO_ROUTES);
    let o = cutover(&["set", "--route", "api", "blue=0", "green=100"], &path);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = replaced(
        TWO_ROUTES,
        &[
            ("blue  =  70 ", "blue  =  0 "),
            ("green = 30\n", "green = 100\n"),
        ],
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
    assert_eq!(stdout(&o), "api: blue 70 -> 0, green 30 -> 100\n");

    let o = cutover(&["rollback", "--to", "green", "--route", "app"], &path);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = replaced(
        &want,
        &[("blue = 90,", "blue = 0,"), ("green=10 }", "green=100 }")],
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
    assert_eq!(stdout(&o), "app: blue 90 -> 0, green 10 -> 100\n");
}

#[test]
fn rollback_to_blue_puts_every_route_on_blue() {
    let (_d, path) = file_with(TWO_ROUTES);
    let o = cutover(&["rollback", "--to", "blue"], &path);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = replaced(
        TWO_ROUTES,
        &[
            ("blue = 90,", "blue = 100,"),
            ("green=10 }", "green=0 }"),
            ("blue  =  70 ", "blue  =  100 "),
            ("green = 30\n", "green = 0\n"),
        ],
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
    assert_eq!(
        stdout(&o),
        "app: blue 90 -> 100, green 10 -> 0\napi: blue 70 -> 100, green 30 -> 0\n"
    );
    check_valid(&path);
    // Again: nothing to change, still fine, file identical.
    let o = cutover(&["rollback", "--to", "blue"], &path);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
}

#[test]
fn editing_through_a_symlink_keeps_the_link_and_changes_its_target() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("releases")).unwrap();
    let real = dir.path().join("releases/v1.toml");
    std::fs::write(&real, TWO_ROUTES).unwrap();
    let link = dir.path().join("cutover.toml");
    std::os::unix::fs::symlink("releases/v1.toml", &link).unwrap();

    let o = cutover(&["set", "--route", "app", "blue=50", "green=50"], &link);
    assert!(o.status.success(), "{}", stderr(&o));
    let meta = std::fs::symlink_metadata(&link).unwrap();
    assert!(meta.file_type().is_symlink(), "the link is still a link");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("releases/v1.toml"),
        "pointing where it did"
    );
    let want = replaced(
        TWO_ROUTES,
        &[("blue = 90,", "blue = 50,"), ("green=10 }", "green=50 }")],
    );
    assert_eq!(
        std::fs::read_to_string(&real).unwrap(),
        want,
        "the target changed"
    );
    // The temporary file went next to the target, and nothing is left over.
    let mut top: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["cutover.toml", "releases"]);
    let rel: Vec<String> = std::fs::read_dir(dir.path().join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(rel, ["v1.toml"]);

    // A chain of two links.
    let link2 = dir.path().join("current.toml");
    std::os::unix::fs::symlink("cutover.toml", &link2).unwrap();
    let o = cutover(&["rollback", "--to", "blue"], &link2);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        std::fs::symlink_metadata(&link2)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        std::fs::read_to_string(&real)
            .unwrap()
            .contains("weights = { blue = 100,   green=0 }")
    );
}

#[test]
fn file_permissions_are_kept() {
    for mode in [0o640, 0o600, 0o644, 0o444] {
        let (_d, path) = file_with(TWO_ROUTES);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let o = cutover(&["set", "--route", "app", "green=20"], &path);
        assert!(o.status.success(), "mode {mode:o}: {}", stderr(&o));
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("green=20 }"),
            "mode {mode:o}: edited"
        );
        let got = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(got, mode, "mode {mode:o} became {got:o}");
    }
}

/// Two `set` processes started together on different routes of one file:
/// the file lock must keep either from overwriting the other's edit.
/// 20 pairs, 5 at a time (a 2-core machine).
#[test]
fn concurrent_sets_on_different_routes_both_land() {
    let dirs: Vec<(tempfile::TempDir, PathBuf)> = (0..20).map(|_| file_with(TWO_ROUTES)).collect();
    for batch in dirs.chunks(5) {
        let mut running = Vec::new();
        for (i, (_, path)) in batch.iter().enumerate() {
            let w = 11 + i;
            let spawn = |route: &str, weights: [String; 2]| {
                Command::new(common::proxy::bin())
                    .args(["set", "--config"])
                    .arg(path)
                    .args(["--route", route])
                    .args(weights)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            };
            let a = spawn("app", [format!("blue={w}"), format!("green={}", 100 - w)]);
            let b = spawn("api", [format!("blue={}", 100 - w), format!("green={w}")]);
            running.push((path.clone(), w, a, b));
        }
        for (path, w, a, b) in running {
            for child in [a, b] {
                let o = child.wait_with_output().unwrap();
                assert!(o.status.success(), "{}", stderr(&o));
            }
            let want = replaced(
                TWO_ROUTES,
                &[
                    ("blue = 90,", &format!("blue = {w},")),
                    ("green=10 }", &format!("green={} }}", 100 - w)),
                    ("blue  =  70 ", &format!("blue  =  {} ", 100 - w)),
                    ("green = 30\n", &format!("green = {w}\n")),
                ],
            );
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                want,
                "one of two concurrent edits was lost"
            );
        }
    }
}

/// The proxy reads its secrets where it runs; the operator's shell may
/// not see them. `set` and `rollback` validate the text without resolving
/// `secret_env`, `secret_file`, `token_env` or `token_file` (issue 13,
/// item 2): a rollback must work exactly when it is urgent.
#[test]
fn set_and_rollback_work_without_the_proxys_secrets() {
    let text = TWO_ROUTES
        .replace(
            "sticky = { cookie = \"cutover\", max_age = \"1h\" }",
            "sticky = { cookie = \"cutover\", max_age = \"1h\", secret_env = \"CUTOVER_EDIT_UNSET_SECRET\" }\noverride = { header = \"x-force\", token_file = \"/nonexistent/token\" }",
        )
        .replace(
            "name = \"api\"\n",
            "name = \"api\"\nsticky = { cookie = \"api\", secret_file = \"no-such-secret\" }\n",
        );
    assert_ne!(text, TWO_ROUTES);
    let (_d, path) = file_with(&text);
    let run = |args: &[&str]| {
        Command::new(common::proxy::bin())
            .args(&args[..1])
            .arg("--config")
            .arg(&path)
            .args(&args[1..])
            .env_remove("CUTOVER_EDIT_UNSET_SECRET")
            .output()
            .unwrap()
    };
    let o = run(&["set", "--route", "app", "blue=50", "green=50"]);
    assert!(o.status.success(), "set: {}", stderr(&o));
    let o = run(&["rollback", "--to", "blue"]);
    assert!(o.status.success(), "rollback: {}", stderr(&o));
    let want = replaced(
        &text,
        &[
            ("blue = 90,", "blue = 100,"),
            ("green=10 }", "green=0 }"),
            ("blue  =  70 ", "blue  =  100 "),
            ("green = 30\n", "green = 0\n"),
        ],
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
    // A structural error is still refused.
    let o = run(&["set", "--route", "app", "purple=1"]);
    assert!(!o.status.success());
}

/// A root-run edit keeps the file's owner and group, not only its mode,
/// so the proxy's user can still read it.
#[test]
fn owner_and_group_are_kept() {
    use std::os::unix::fs::MetadataExt;
    let (_d, path) = file_with(TWO_ROUTES);
    let me = std::fs::metadata(&path).unwrap();
    // Another owner than ours when we can (root); otherwise our own, which
    // still checks that the gid is not replaced by the default group.
    let (uid, gid) = if me.uid() == 0 {
        (4242, 4343)
    } else {
        (me.uid(), me.gid())
    };
    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let o = cutover(&["rollback", "--to", "blue"], &path);
    assert!(o.status.success(), "{}", stderr(&o));
    let after = std::fs::metadata(&path).unwrap();
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("blue = 100,")
    );
    assert_eq!(
        (after.uid(), after.gid()),
        (uid, gid),
        "owner:group changed"
    );
    assert_eq!(after.permissions().mode() & 0o7777, 0o640);
}

/// `rollback --to blue` without `--route` rolls back every route that has
/// blue and names the ones it skipped; naming a route without blue fails.
#[test]
fn rollback_skips_and_names_routes_without_the_backend() {
    let text = format!(
        "{TWO_ROUTES}\n\n[backends.red]\nendpoints = [\"127.0.0.1:9003\"]\n\n[[routes]]\nname = \"new\"\npath_prefix = \"/new\"\nweights = {{ red = 1 }}\n"
    );
    let (_d, path) = file_with(&text);
    let o = cutover(&["rollback", "--to", "blue"], &path);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "app: blue 90 -> 100, green 10 -> 0\napi: blue 70 -> 100, green 30 -> 0\nnew: skipped (no backend \"blue\")\n"
    );
    let got = std::fs::read_to_string(&path).unwrap();
    assert!(got.contains("blue = 100,") && got.contains("weights = { red = 1 }"));
    let o = cutover(&["rollback", "--to", "blue", "--route", "new"], &path);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no backend \"blue\""), "{}", stderr(&o));
}

/// A file with mixed line endings keeps each line's own ending.
#[test]
fn mixed_line_endings_are_kept() {
    // CRLF in the first half, LF in the second.
    let split = TWO_ROUTES.find("[[routes]]").unwrap();
    let mixed = format!(
        "{}{}",
        TWO_ROUTES[..split].replace('\n', "\r\n"),
        &TWO_ROUTES[split..]
    );
    let (_d, path) = file_with(&mixed);
    let o = cutover(&["set", "--route", "api", "blue=50", "green=50"], &path);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = replaced(
        &mixed,
        &[
            ("blue  =  70 ", "blue  =  50 "),
            ("green = 30\n", "green = 50\n"),
        ],
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
}
