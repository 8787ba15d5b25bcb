//! `--target nats`: the NATS client protocol over WebSocket (nats-server's `websocket`
//! listener), so the same scenarios run against NATS for comparison.
//!
//! NATS is a byte stream of text lines (`INFO`, `CONNECT`, `PING`, `PONG`, `SUB`, `PUB`, `MSG`,
//! `+OK`, `-ERR`), carried in WebSocket binary frames that need not align with them. The
//! connection's `Reader` re-splits the stream with a [`Splitter`], so scenarios still see one
//! "frame" per protocol unit: a `MSG` with its payload, or one control line. Its `Writer`
//! appends pushed units to one stream and wraps them into a frame on flush, as NATS clients do.
//!
//! How the Chorus notions map:
//!
//! - hello: `INFO` from the server, `CONNECT` + `PING` from us, then `PONG` (with `--token` sent
//!   as `auth_token`);
//! - channel `topic:<space>/<topic>`: subject `<space>.<topic>`; subscribe: `SUB <subject> 1` +
//!   `PING`, then `PONG`;
//! - publish: `PUB <subject> <len>` with the same JSON stamp as `data`. NATS has no reply per
//!   message: publishers send a `PING` after each batch and count the batch published at its
//!   `PONG` (the server handles a connection's input in order, so by then it has routed the
//!   batch to the subscribers);
//! - offsets: none (`Scanned::Message { offset: None }`); loss and duplicates come from the
//!   stamps' per-publisher sequence numbers.

use super::scan::{self, Scanned};
use super::wire::{MAX_FRAME, Reader, Writer};
use anyhow::{anyhow, bail};
use serde_json::{Value, json};
use std::time::Duration;

/// The subscription id every bench subscriber uses (one subscription per connection).
pub const SID: &str = "1";
/// Answer to a server `PING`.
pub const PONG: &[u8] = b"PONG\r\n";
/// Sent after a batch of `PUB`s (or a `SUB`); the `PONG` says the server has handled them.
pub const PING: &[u8] = b"PING\r\n";
/// A NATS server sends `INFO` at once; waiting longer means it is something else.
const INFO_TIMEOUT: Duration = Duration::from_secs(5);

/// The subject standing for channel `topic` of `space`.
pub fn subject(space: &str, topic: &str) -> anyhow::Result<String> {
    let subject = format!("{space}.{topic}");
    let valid = |token: &str| {
        !token.is_empty()
            && !token
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b"*>".contains(&b))
    };
    if !subject.split('.').all(valid) {
        bail!("`{subject}` is not a NATS subject (no spaces, wildcards or empty tokens)");
    }
    Ok(subject)
}

/// Append a `PUB` of `payload` on `subject`.
pub fn push_pub(out: &mut Vec<u8>, subject: &str, payload: &[u8]) {
    use std::io::Write;
    let _ = write!(out, "PUB {subject} {}\r\n", payload.len());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Re-splits the NATS byte stream into protocol units: `MSG …\r\n<payload>` (without the
/// payload's trailing CRLF) or one control line (without its CRLF).
#[derive(Debug, Default)]
pub struct Splitter {
    /// An incomplete unit, carried to the next frame.
    carry: Vec<u8>,
}

impl Splitter {
    /// Hand every unit that `data` completes to `out`.
    pub fn feed<F: FnMut(&[u8])>(&mut self, data: &[u8], out: &mut F) -> anyhow::Result<()> {
        if self.carry.is_empty() {
            let used = split(data, out)?;
            self.carry.extend_from_slice(&data[used..]);
        } else {
            self.carry.extend_from_slice(data);
            let used = split(&self.carry, out)?;
            self.carry.drain(..used);
        }
        if self.carry.len() > MAX_FRAME {
            bail!("the NATS server sent a unit over {MAX_FRAME} bytes");
        }
        Ok(())
    }
}

/// The complete units at the start of `data`; returns how many bytes they took.
fn split<F: FnMut(&[u8])>(data: &[u8], out: &mut F) -> anyhow::Result<usize> {
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            break;
        };
        let line = rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl]);
        if line.starts_with(b"MSG ") || line.starts_with(b"HMSG ") {
            let len = line
                .rsplit(|&b| b == b' ')
                .next()
                .and_then(|l| std::str::from_utf8(l).ok()?.parse::<usize>().ok())
                .filter(|&l| l <= MAX_FRAME)
                .ok_or_else(|| {
                    anyhow!(
                        "the NATS server sent a bad line: {}",
                        String::from_utf8_lossy(line)
                    )
                })?;
            let end = nl + 1 + len;
            if rest.len() < end + 2 {
                break;
            }
            out(&rest[..end]);
            pos += end + 2;
        } else {
            if !line.is_empty() {
                out(line);
            }
            pos += nl + 1;
        }
    }
    Ok(pos)
}

/// Classify one unit (`scan::scan` sends units starting with a letter, `+` or `-` here).
pub fn scan(unit: &[u8]) -> Option<Scanned> {
    if unit.starts_with(b"MSG ") || unit.starts_with(b"HMSG ") {
        let nl = unit.iter().position(|&b| b == b'\n')?;
        let mut payload = &unit[nl + 1..];
        if unit[0] == b'H' {
            // HMSG <subject> <sid> [reply] <header len> <total len>: skip the headers.
            let line = unit[..nl].strip_suffix(b"\r")?;
            let headers = line.rsplit(|&b| b == b' ').nth(1)?;
            let headers: usize = std::str::from_utf8(headers).ok()?.parse().ok()?;
            payload = payload.get(headers..)?;
        }
        return Some(Scanned::Message {
            offset: None,
            stamp: scan::json_data_stamp(payload),
        });
    }
    Some(match unit {
        b"PING" => Scanned::Ping,
        b"PONG" => Scanned::Pong,
        _ => Scanned::Other,
    })
}

/// The message of a `-ERR '…'` line.
pub fn error(unit: &[u8]) -> Option<String> {
    let text = unit.strip_prefix(b"-ERR")?;
    let text = String::from_utf8_lossy(text);
    Some(format!(
        "nats: {}",
        text.trim().trim_matches('\'').to_lowercase()
    ))
}

/// Read units until `want` says it has what it waits for; answer pings meanwhile, fail on
/// `-ERR`. Units after the awaited one in the same read are dropped (set-up only).
async fn until<T>(
    reader: &mut Reader,
    writer: &mut Writer,
    mut want: impl FnMut(&[u8]) -> Option<T>,
) -> anyhow::Result<T> {
    loop {
        let mut units: Vec<Vec<u8>> = Vec::new();
        let open = reader.read(&mut |u, _| units.push(u.to_vec())).await?;
        for unit in &units {
            if let Some(e) = error(unit) {
                bail!("{e}");
            }
            if unit.as_slice() == b"PING" {
                writer.push(PONG);
            } else if let Some(got) = want(unit) {
                writer.flush().await?;
                return Ok(got);
            }
        }
        for ping in reader.take_pings() {
            writer.pong(&ping);
        }
        writer.flush().await?;
        if !open {
            bail!(
                "the NATS server closed the connection ({})",
                reader.closed.as_deref().unwrap_or("no reason")
            );
        }
    }
}

/// Say hello on a fresh WebSocket connection: read `INFO`, send `CONNECT` and `PING`, wait for
/// `PONG`. Returns the `INFO` object.
pub async fn handshake(
    reader: &mut Reader,
    writer: &mut Writer,
    token: Option<&str>,
) -> anyhow::Result<Value> {
    reader.nats_stream();
    writer.nats_stream();
    let info = until(reader, writer, |u| {
        Some(match u.strip_prefix(b"INFO ") {
            Some(json) => serde_json::from_slice::<Value>(json)
                .map_err(|e| anyhow!("the NATS server sent a bad INFO: {e}")),
            None => Err(anyhow!(
                "not a NATS server: it sent `{}` instead of INFO",
                String::from_utf8_lossy(&u[..u.len().min(80)])
            )),
        })
    });
    let info = tokio::time::timeout(INFO_TIMEOUT, info)
        .await
        .map_err(|_| {
            anyhow!(
                "no INFO from the server within {} s: is this a nats-server websocket listener?",
                INFO_TIMEOUT.as_secs()
            )
        })???;
    let mut connect = json!({
        "verbose": false,
        "pedantic": false,
        "tls_required": false,
        "name": "chorus-bench",
        "lang": "rust",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "echo": true,
        "headers": false,
        "no_responders": false,
    });
    if let Some(token) = token {
        connect["auth_token"] = json!(token);
    }
    let mut line = b"CONNECT ".to_vec();
    serde_json::to_writer(&mut line, &connect)?;
    line.extend_from_slice(b"\r\n");
    writer.push(&line);
    writer.push(PING);
    writer.flush().await?;
    until(reader, writer, |u| (u == b"PONG").then_some(())).await?;
    Ok(info)
}

/// Subscribe to `subject` as [`SID`] and wait until the server has it.
pub async fn subscribe(
    reader: &mut Reader,
    writer: &mut Writer,
    subject: &str,
) -> anyhow::Result<()> {
    writer.push(format!("SUB {subject} {SID}\r\n").as_bytes());
    writer.push(PING);
    writer.flush().await?;
    until(reader, writer, |u| (u == b"PONG").then_some(())).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::scan::{ChannelScanner, Stamp, write_stamp};
    use crate::protocol::Encoding;

    fn stamp() -> Stamp {
        Stamp {
            phase: 4,
            publisher: 2,
            seq: 99,
            t_ns: 123_456_789,
        }
    }

    fn msg(subject: &str, payload: &[u8]) -> Vec<u8> {
        let mut out = format!("MSG {subject} {SID} {}\r\n", payload.len()).into_bytes();
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        out
    }

    #[test]
    fn splits_the_stream_across_any_boundary() {
        let mut payload = Vec::new();
        write_stamp(&mut payload, Encoding::Json, stamp(), 100);
        let mut wire = b"INFO {\"server_id\":\"x\"}\r\nPING\r\n".to_vec();
        wire.extend(msg("bench-1.fanout", &payload));
        // A payload holding CRLF and MSG-like bytes is taken by its length.
        wire.extend(msg("bench-1.fanout", b"a\r\nMSG x 1 3\r\nb"));
        wire.extend(b"HMSG s 1 12 14\r\nNATS/1.0\r\n\r\nhi\r\n-ERR 'Slow Consumer'\r\nPONG\r\n");
        for cut in [1, 2, 5, 17, 100, wire.len()] {
            let mut splitter = Splitter::default();
            let mut got: Vec<Vec<u8>> = Vec::new();
            for piece in wire.chunks(cut) {
                splitter.feed(piece, &mut |u| got.push(u.to_vec())).unwrap();
            }
            assert_eq!(got.len(), 7, "cut {cut}");
            assert!(splitter.carry.is_empty());
            assert_eq!(scan(&got[0]), Some(Scanned::Other));
            assert_eq!(scan(&got[1]), Some(Scanned::Ping));
            assert_eq!(
                scan(&got[2]),
                Some(Scanned::Message {
                    offset: None,
                    stamp: Some(stamp())
                })
            );
            assert!(got[3].ends_with(b"a\r\nMSG x 1 3\r\nb"));
            assert_eq!(
                scan(&got[3]),
                Some(Scanned::Message {
                    offset: None,
                    stamp: None
                })
            );
            assert!(got[4].ends_with(b"\r\n\r\nhi"));
            assert_eq!(error(&got[5]).as_deref(), Some("nats: slow consumer"));
            assert_eq!(scan(&got[6]), Some(Scanned::Pong));
        }
        let mut splitter = Splitter::default();
        assert!(splitter.feed(b"MSG s 1 x\r\n", &mut |_| {}).is_err());
    }

    #[test]
    fn channel_scanner_reads_msg_units() {
        let subject = subject("bench-1", "fanout").unwrap();
        let scanner = ChannelScanner::new(&subject);
        let mut payload = Vec::new();
        write_stamp(&mut payload, Encoding::Json, stamp(), 100);
        let wire = msg(&subject, &payload);
        let unit = &wire[..wire.len() - 2];
        let want = Scanned::Message {
            offset: None,
            stamp: Some(stamp()),
        };
        assert_eq!(scanner.scan(unit), want);
        assert_eq!(crate::bench::scan::scan(unit), want);
        // Another subject, another layout: the generic path.
        let packed = Stamp { t_ns: 5, ..stamp() }.pack();
        let mut payload = br#"{"x":"", "s":""#.to_vec();
        payload.extend_from_slice(&packed);
        payload.extend_from_slice(br#""}"#);
        let other = msg("other.x", &payload);
        assert!(matches!(
            scanner.scan(&other[..other.len() - 2]),
            Scanned::Message {
                offset: None,
                stamp: Some(Stamp { t_ns: 5, .. })
            }
        ));
        assert_eq!(scanner.scan(b"PING"), Scanned::Ping);
    }

    /// A nats-server on free ports (a websocket listener included), killed when dropped.
    struct NatsServer {
        child: std::process::Child,
        ws: u16,
        _dir: tempfile::TempDir,
    }

    impl NatsServer {
        /// Start one, or `None` when `nats-server` is not installed.
        fn start() -> Option<NatsServer> {
            let bin = [
                "nats-server",
                "/usr/sbin/nats-server",
                "/usr/bin/nats-server",
            ]
            .into_iter()
            .find(|bin| {
                std::process::Command::new(bin)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            })?;
            let listeners: Vec<_> = (0..2)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
                .collect();
            let port = |i: usize| listeners[i].local_addr().unwrap().port();
            let (client, ws) = (port(0), port(1));
            drop(listeners);
            let dir = tempfile::tempdir().unwrap();
            let conf = dir.path().join("nats.conf");
            std::fs::write(
                &conf,
                format!(
                    "listen: \"127.0.0.1:{client}\"\n\
                     websocket {{ listen: \"127.0.0.1:{ws}\", no_tls: true }}\n"
                ),
            )
            .unwrap();
            let child = std::process::Command::new(bin)
                .arg("-c")
                .arg(&conf)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let server = NatsServer {
                child,
                ws,
                _dir: dir,
            };
            let ready = std::time::Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", ws)).is_err() {
                assert!(
                    ready.elapsed() < Duration::from_secs(10),
                    "nats-server did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(server)
        }

        fn scenario(&self, args: &[&str]) -> crate::bench::Scenario {
            use clap::Parser;
            let mut argv = vec!["bench".to_string()];
            argv.extend(args.iter().map(|a| a.to_string()));
            argv.extend([
                "--target".into(),
                "nats".into(),
                "--url".into(),
                format!("ws://127.0.0.1:{}", self.ws),
                "--json".into(),
                "--server-pid".into(),
                self.child.id().to_string(),
            ]);
            crate::bench::BenchArgs::try_parse_from(argv)
                .unwrap()
                .scenario
        }
    }

    impl Drop for NatsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The fan-out and connections scenarios against a real nats-server (skipped when it is
    /// not installed).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scenarios_against_nats_server() {
        let Some(nats) = NatsServer::start() else {
            eprintln!("skipped: nats-server is not installed");
            return;
        };
        let scenario = nats.scenario(&[
            "fanout", "-s", "10", "-p", "2", "-r", "400", "-d", "0.5", "--warmup", "0.2",
        ]);
        let report = scenario.run().await.unwrap_or_else(|e| panic!("{e:#}"));
        let step = &report.steps[0];
        assert!(step.pass, "{}", report.render());
        let published = step.counter("published");
        assert!((150..=250).contains(&published), "{}", report.render());
        assert_eq!(step.counter("sent"), published);
        assert_eq!(step.counter("received"), published * 10);
        assert_eq!(step.latency.as_ref().unwrap().count, published * 10);
        assert!(step.usage.server.is_some());
        assert!(report.target.starts_with("nats ws://"));

        let scenario = nats.scenario(&["connections", "-n", "50", "--hold", "0.2"]);
        let report = scenario.run().await.unwrap_or_else(|e| panic!("{e:#}"));
        assert!(report.steps[0].pass, "{}", report.render());
        assert_eq!(report.summary["connected"], 50);
        assert!(report.summary["server_rss_per_connection_kib"].is_number());
    }

    #[test]
    fn publishes_and_subjects() {
        let mut out = Vec::new();
        push_pub(&mut out, "a.b", b"hello");
        assert_eq!(out, b"PUB a.b 5\r\nhello\r\n");
        assert!(subject("bench-x", "fanout").is_ok());
        assert!(subject("bench x", "fanout").is_err());
        assert!(subject("bench", "fan.*").is_err());
        assert!(subject("bench", "").is_err());
    }
}
