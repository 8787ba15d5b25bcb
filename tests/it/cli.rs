//! The `chorus` binary itself: help, version, config printing, tokens, serve and SIGTERM.

use chorus::client::Client;
use chorus::protocol::Encoding;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn chorus() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chorus"));
    cmd.env_remove("RUST_LOG");
    cmd
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = chorus().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn help_everywhere() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["token", "--help"],
        &["version", "--help"],
    ] {
        let (ok, out, _) = run(args);
        assert!(ok && out.contains("Usage: chorus"), "{args:?}: {out}");
    }
    let (ok, out, _) = run(&["version"]);
    assert!(
        ok && out.starts_with("chorus ") && out.contains("protocol v1"),
        "{out}"
    );
}

#[test]
fn print_config_layers_file_env_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chorus.toml");
    std::fs::write(
        &file,
        "max_frame_bytes = 2048\nrate_per_sec = 7\nmax_subscriptions = 9\n",
    )
    .unwrap();
    let out = chorus()
        .args([
            "serve",
            "--print-config",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9999",
        ])
        .env("CHORUS_RATE_PER_SEC", "11")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "max_frame_bytes = 2048",
        "rate_per_sec = 11",
        "max_subscriptions = 9",
        "listen = \"127.0.0.1:9999\"",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    std::fs::write(&file, "max_frame_bytes = 1\n").unwrap();
    let (ok, _, err) = run(&[
        "serve",
        "--print-config",
        "--config",
        file.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("max_frame_bytes"), "{err}");
}

#[test]
fn token_rejects_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for args in [
        &[
            "token",
            "--user",
            "a",
            "--org",
            "acme",
            "--ttl",
            "soon",
            "--data-dir",
            d,
        ][..],
        &[
            "token",
            "--user",
            "a",
            "--org",
            "acme",
            "--grant",
            "root",
            "--data-dir",
            d,
        ],
        &["token", "--org", "acme", "--data-dir", d],
    ] {
        let (ok, _, err) = run(args);
        assert!(!ok && !err.is_empty(), "{args:?} was accepted");
    }
}

/// `chorus token` and `chorus serve` share the generated secret; SIGTERM stops the server cleanly.
#[tokio::test]
async fn token_then_serve_then_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, token, err) = run(&[
        "token",
        "--user",
        "alice",
        "--name",
        "Alice",
        "--org",
        "acme",
        "--ttl",
        "10m",
        "--data-dir",
        d,
    ]);
    assert!(ok, "{err}");
    let mut server = chorus()
        .args([
            "serve",
            "--data-dir",
            d,
            "--listen",
            "127.0.0.1:0",
            "--quic-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let (http, quic) = loop {
        let line = lines
            .next()
            .expect("the server logs where it listens")
            .unwrap();
        let log: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(addr) = log["fields"]["http"].as_str() {
            assert!(
                log["fields"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("listening")
            );
            let quic = log["fields"]["quic"].as_str().unwrap().to_string();
            break (addr.to_string(), quic);
        }
    };
    let next = lines.next().unwrap().unwrap();
    assert!(
        next.contains("chorus token --user"),
        "start-up says how to get a token: {next}"
    );
    let mut c = Client::connect_ws(&format!("ws://{http}/ws"), None)
        .await
        .unwrap();
    let welcome = c.hello(Some(token.trim()), Encoding::Json).await.unwrap();
    assert_eq!(welcome["user"], "alice");
    tour(&http, &quic, token.trim(), d).await;
    let pid = server.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    match c.recv().await.unwrap() {
        Some(chorus::protocol::ServerFrame::Disconnect { code, .. }) => {
            assert_eq!(code.as_str(), "shutting_down")
        }
        other => panic!("expected a disconnect, got {other:?}"),
    }
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = server.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
}

/// The README's tour: create a space over HTTP, `chorus sub` in the background, `chorus pub` over
/// WebSocket and over QUIC, and the subscriber prints both messages.
async fn tour(http: &str, quic: &str, token: &str, data_dir: &str) {
    let addr: std::net::SocketAddr = http.parse().unwrap();
    let body = r#"{"space":"acme-eng","name":"Engineering"}"#;
    let (status, _, _) =
        crate::api::http(addr, "POST", "/api/spaces", Some(token), Some(body)).await;
    assert_eq!(status, 201);
    let url = format!("ws://{http}/ws");
    let mut sub = chorus()
        .args(["sub", "--url", &url, "topic:acme-eng/deploys"])
        .env("CHORUS_TOKEN", token)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    // Publish until the subscriber has subscribed and prints the first message.
    let publish = |data: &str, quic: Option<&str>| {
        let mut cmd = chorus();
        cmd.args(["pub", "--url", &url, "--data-dir", data_dir]);
        if let Some(addr) = quic {
            cmd.args(["--quic", addr]);
        }
        let out = cmd
            .args(["topic:acme-eng/deploys", data])
            .env("CHORUS_TOKEN", token)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = tokio::task::spawn_blocking(move || {
        let line = lines.next().unwrap().unwrap();
        (line, lines)
    });
    let mut delivered = 0;
    while delivered == 0 {
        delivered = publish(r#"{"version":"1.2.3"}"#, None)["delivered"]
            .as_u64()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (line, mut lines) = first.await.unwrap();
    let message: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(message["data"], serde_json::json!({"version": "1.2.3"}));
    publish(r#"{"version":"1.2.4"}"#, Some(quic));
    let line = tokio::task::spawn_blocking(move || lines.next().unwrap().unwrap())
        .await
        .unwrap();
    assert!(line.contains("1.2.4"), "{line}");
    sub.kill().unwrap();
    sub.wait().unwrap();
}
