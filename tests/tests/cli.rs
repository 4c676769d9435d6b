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
        stdout.contains("ok (4 entities, 2 sources, 5 views, 2 feature services)"),
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
