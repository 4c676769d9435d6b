//! End-to-end: the command line's `validate`, and `serve` refusing a bad configuration.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::process::Command;

use end_to_end::gateway_binary;

const BAD: &str = r#"
[entities.user_id]
type = "strng"

[sources.tables]
kind = "static"
timeuot = "5ms"

[views.users]
source = "tabels"
entities = ["user_id"]
path = "users.csv"
features = { age = { type = "int64" } }

[feature_services.m]
features = ["users:age", "users:height"]
"#;

#[test]
fn validate_lists_every_error_with_its_position_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, BAD).unwrap();
    let output = Command::new(gateway_binary())
        .args(["validate", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 5, "{stderr}");
    assert!(
        lines[0].contains("bad.toml:3:1: entities.user_id.type: unknown type `strng`"),
        "{stderr}"
    );
    assert!(
        lines[1].contains("bad.toml:7:1: sources.tables.timeuot: unknown field `timeuot`"),
        "{stderr}"
    );
    assert!(
        lines[2].contains("bad.toml:10:1: views.users.source: unknown source `tabels`"),
        "{stderr}"
    );
    assert!(
        lines[3].contains("feature_services.m.features.1: view `users` has no feature `height`"),
        "{stderr}"
    );
    assert_eq!(lines[4], "4 error(s)");
}

#[test]
fn validate_accepts_the_demo_configuration() {
    let dir = tempfile::tempdir().unwrap();
    // The demo config refers to its tables by relative path; validation does no I/O, so the
    // tables need not exist.
    let path = dir.path().join("demo.toml");
    std::fs::write(&path, include_str!("../../services/gateway/demo/demo.toml")).unwrap();
    let output = Command::new(gateway_binary())
        .args(["validate", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("ok (4 entities, 3 sources, 7 views, 4 feature services)"),
        "{stdout}"
    );
}

#[test]
fn serve_refuses_a_bad_configuration_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, BAD).unwrap();
    let output = Command::new(gateway_binary())
        .args([
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(!String::from_utf8(output.stdout).unwrap().contains("ready"));
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("nothing started")
    );
}

#[test]
fn serve_reports_a_source_that_cannot_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        BAD.replace("strng", "string")
            .replace("timeuot", "timeout")
            .replace("tabels", "tables")
            .replace(", \"users:height\"", ""),
    )
    .unwrap();
    let output = Command::new(gateway_binary())
        .args([
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("source `tables`: view `users`: cannot read"),
        "{stderr}"
    );
}

/// A file whose `[limits]` and `[server]` hold values of the wrong type, beside other problems:
/// every one is listed, none hides the others.
const MISTYPED: &str = r#"
[limits]
max_key_bytes = "big"
max_in_flight = -5

[server]
worker_threads = "many"

[entities.user_id]
type = "string"

[sources.tables]
kind = "static"

[views.users]
source = "tabels"
entities = ["user_id"]
path = "users.csv"
features = { age = { type = "int64" } }

[feature_services.m]
features = ["users:age"]
"#;

#[test]
fn mistyped_limits_and_server_fields_do_not_hide_other_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mistyped.toml");
    std::fs::write(&path, MISTYPED).unwrap();
    let output = Command::new(gateway_binary())
        .args(["validate", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    for expected in [
        "mistyped.toml:3:1: limits.max_key_bytes: invalid type: string \"big\"",
        "mistyped.toml:4:1: limits.max_in_flight: invalid value: integer `-5`",
        "mistyped.toml:7:1: server.worker_threads: invalid type: string \"many\"",
        "mistyped.toml:16:1: views.users.source: unknown source `tabels`",
    ] {
        assert!(stderr.contains(expected), "`{expected}` not in:\n{stderr}");
    }
    assert!(stderr.ends_with("4 error(s)\n"), "{stderr}");
}

/// A source whose URL names a secret that is not set in the environment.
const NEEDS_SECRET: &str = r#"
[entities.user_id]
type = "string"

[sources.kv]
kind = "redis"
url = "redis://:${FG_TEST_UNSET_PASSWORD}@127.0.0.1:1"

[views.user]
source = "kv"
entities = ["user_id"]
key = "user:{user_id}"
features = { score = { type = "double" } }

[feature_services.m]
features = ["user:score"]
"#;

#[test]
fn an_unset_secret_is_a_positioned_error_for_validate_and_serve_unless_validate_is_told_no_env() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.toml");
    std::fs::write(&path, NEEDS_SECRET).unwrap();
    let expected = "secret.toml:7:1: sources.kv.url: `${FG_TEST_UNSET_PASSWORD}` is not set";
    let run = |args: &[&str]| {
        Command::new(gateway_binary())
            .args(args)
            .env_remove("FG_TEST_UNSET_PASSWORD")
            .output()
            .unwrap()
    };
    let file = path.to_str().unwrap();
    let validate = run(&["validate", file]);
    assert_eq!(validate.status.code(), Some(2));
    let stderr = String::from_utf8(validate.stderr).unwrap();
    assert!(stderr.contains(expected), "{stderr}");

    let serve = run(&[
        "serve",
        "--config",
        file,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(serve.status.code(), Some(2));
    let stderr = String::from_utf8(serve.stderr).unwrap();
    assert!(stderr.contains(expected), "{stderr}");
    assert!(stderr.contains("nothing started"), "{stderr}");

    let no_env = run(&["validate", "--no-env", file]);
    assert!(
        no_env.status.success(),
        "{}",
        String::from_utf8_lossy(&no_env.stderr)
    );
}

#[test]
fn demo_without_dir_says_where_its_training_log_goes_and_that_it_is_removed_on_exit() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(gateway_binary())
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its log is read to the end on a thread of its own, so the pipe stays open.
    let (lines, received) = std::sync::mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let line = received
        .iter()
        .find(|l| l.contains("training log goes to"))
        .expect("the demo says where its training log goes");
    assert!(line.contains("removed on exit"), "{line}");
    assert!(line.contains("--dir DIR"), "{line}");
    let log = line
        .split("training log goes to ")
        .nth(1)
        .and_then(|rest| rest.split(" (").next())
        .unwrap()
        .to_owned();
    let dir = std::path::Path::new(&log).parent().unwrap().to_owned();
    // Serving, then a clean shutdown: the temporary directory goes with it.
    assert!(received.iter().any(|l| l.contains("serving")));
    assert!(dir.exists(), "{}", dir.display());
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit}");
    assert!(!dir.exists(), "{} is left behind", dir.display());
}
