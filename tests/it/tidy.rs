//! Architecture checks: sans-IO cores never depend on async runtimes, sockets or databases.

use std::path::Path;

const FORBIDDEN: &[&str] = &[
    "tokio",
    "quinn",
    "tungstenite",
    "axum",
    "hyper",
    "rusqlite",
    "sqlx",
    "async_nats",
    "async-nats",
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `use`/path mention of a forbidden crate in non-test code.
fn violations(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    // Test modules may use anything; they sit at the end of a file.
    let code = text.split("#[cfg(test)]").next().unwrap();
    let mut found = Vec::new();
    for (i, line) in code.lines().enumerate() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        for krate in FORBIDDEN {
            if line.contains(&format!("{krate}::")) || line.starts_with(&format!("use {krate}")) {
                found.push(format!("{}:{}: {}", file.display(), i + 1, line));
            }
        }
    }
    found
}

#[test]
fn sans_io_cores_stay_pure() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for core in [
        "src/protocol",
        "src/session",
        "presence/src",
        "signaling/src",
    ] {
        rust_files(&root.join(core), &mut files);
    }
    for file in [
        "src/access.rs",
        "src/auth.rs",
        "src/channel.rs",
        "src/chat/rules.rs",
        "src/docs/sync.rs",
        "src/transport/wsframe.rs",
        "src/bench/rtc_peer/media.rs",
        "src/bench/rtc_peer/negotiation.rs",
    ] {
        files.push(root.join(file));
    }
    assert!(files.len() >= 11, "the cores moved: update this test");
    let bad: Vec<_> = files.iter().flat_map(|f| violations(f)).collect();
    assert!(
        bad.is_empty(),
        "sans-IO cores must not use IO crates:\n{}",
        bad.join("\n")
    );
    for manifest in ["presence/Cargo.toml", "signaling/Cargo.toml"] {
        let text = std::fs::read_to_string(root.join(manifest)).unwrap();
        let deps = text.split("[dependencies]").nth(1).unwrap_or("");
        let deps = deps.split("[dev-dependencies]").next().unwrap();
        for krate in FORBIDDEN {
            assert!(
                !deps.lines().any(|l| l.trim_start().starts_with(krate)),
                "{manifest} depends on {krate}"
            );
        }
    }
}

#[test]
fn the_checker_catches_violations() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("core.rs");
    std::fs::write(&file, "use std::fmt;\nuse tokio::sync::Notify;\n// tokio::spawn in a comment is fine\n#[cfg(test)]\nmod tests { use tokio::time; }\n").unwrap();
    let found = violations(&file);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains(":2:"));
}
