//! The bench's frame scanner: pulls what a load test needs (the offset of a `message`, the stamp
//! its publisher put in `data`, the id of a `reply`) straight out of the frame bytes, without
//! building a `ServerFrame` or a `serde_json::Value`. A subscriber receiving millions of messages
//! a second cannot afford a full decode per message; the tool must never be the bottleneck.
//!
//! The fast paths match the exact layout the server writes (`protocol::encode_message`: `type`,
//! `channel`, `offset`, `data` in that order, and `data`'s keys sorted, as `serde_json::Map`
//! keeps them). Anything else falls back to a full decode, so a frame is never misread, only
//! read more slowly.
//!
//! The stamp a bench publisher puts in `data` (JSON shown; MessagePack is the same map):
//!
//! ```text
//! {"s":"<32 hex digits>","x":"xxxx…"}
//! ```
//!
//! `s` packs the stamp into 128 bits, written as fixed-width lowercase hex so it sits at a known
//! place and reads without parsing numbers (8 digits at a time, see `hex8`): the phase (16
//! bits), the publisher (16), its sequence number (48) and the send time in nanoseconds (48, a
//! run of 78 hours). `x` pads the message to the requested size and comes last, so the scanner
//! never walks it.
//!
//! With `--target nats` the "frames" are NATS protocol units (`nats::Splitter`): a `MSG` line
//! and its payload (the same JSON stamp), or a control line; `scan` hands them to `nats::scan`.

use crate::protocol::{Encoding, ServerFrame};
use serde::Deserialize;

/// What a bench publisher writes into every message, and subscribers read back. Each field
/// must fit its width in the packed form (see the module's notes); `pack` keeps the low bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Packed")]
pub struct Stamp {
    /// The run phase (warm-up or measured step) the message belongs to: below 2^16.
    pub phase: u32,
    /// Index of the publishing connection: below 2^16.
    pub publisher: u32,
    /// The publisher's sequence number, from 0, continuous over the whole run: below 2^48.
    pub seq: u64,
    /// Send time in nanoseconds since the run's shared start `Instant`: below 2^48.
    pub t_ns: u64,
}

/// Hex digits of a packed stamp.
pub const STAMP_HEX: usize = 32;
const LOW48: u64 = (1 << 48) - 1;

impl Stamp {
    /// The 32 hex digits of `s`.
    pub fn pack(&self) -> [u8; STAMP_HEX] {
        debug_assert!(self.phase <= 0xffff && self.publisher <= 0xffff);
        debug_assert!(self.seq <= LOW48 && self.t_ns <= LOW48);
        let v = (u128::from(self.phase & 0xffff) << 112)
            | (u128::from(self.publisher & 0xffff) << 96)
            | (u128::from(self.seq & LOW48) << 48)
            | u128::from(self.t_ns & LOW48);
        let mut out = [0u8; STAMP_HEX];
        for (i, digit) in out.iter_mut().enumerate() {
            *digit = b"0123456789abcdef"[(v >> (124 - 4 * i)) as usize & 0xf];
        }
        out
    }

    /// Read the 32 hex digits of `s`; `None` unless all are lowercase hex.
    #[inline]
    pub fn unpack(hex: &[u8]) -> Option<Stamp> {
        let hex: &[u8; STAMP_HEX] = hex.try_into().ok()?;
        let [a, b, c, d] = hex.as_chunks::<8>().0 else {
            unreachable!("32 bytes are four chunks of 8")
        };
        let (a, b, c, d) = (hex8(*a), hex8(*b), hex8(*c), hex8(*d));
        if a.1 | b.1 | c.1 | d.1 != 0 {
            return None;
        }
        let high = (u64::from(a.0) << 32) | u64::from(b.0);
        let low = (u64::from(c.0) << 32) | u64::from(d.0);
        Some(Stamp {
            phase: (high >> 48) as u32,
            publisher: (high >> 32) as u32 & 0xffff,
            seq: ((high & 0xffff_ffff) << 16) | (low >> 48),
            t_ns: low & LOW48,
        })
    }
}

/// A stamp as it appears in `data`, for the full decode.
#[derive(Deserialize)]
struct Packed {
    s: String,
}

impl TryFrom<Packed> for Stamp {
    type Error = &'static str;
    fn try_from(p: Packed) -> Result<Stamp, Self::Error> {
        Stamp::unpack(p.s.as_bytes()).ok_or("`s` is not 32 lowercase hex digits")
    }
}

/// Eight lowercase hex digits, most significant first, read at once as the bytes of one `u64`:
/// their value, and a mask that is not zero when some byte is not a lowercase hex digit (the
/// value is then meaningless). Callers check the masks of several chunks at once.
#[inline]
fn hex8(digits: [u8; 8]) -> (u32, u64) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0x80;
    let v = u64::from_be_bytes(digits);
    // With every byte below 0x80, adding at most 0x7f to each never carries into the next: a
    // byte's high bit then tells whether it was at least (or above) a bound. A byte at 0x80
    // or above is refused by the mask whatever the sums do.
    let at_least = |lo: u8| v.wrapping_add(ONES * u64::from(0x80 - lo));
    let above = |hi: u8| v.wrapping_add(ONES * u64::from(0x7f - hi));
    let digit = at_least(b'0') & !above(b'9');
    let letter = at_least(b'a') & !above(b'f');
    let invalid = (v | !(digit | letter)) & HIGH;
    // '0'..='9' are 0x30..=0x39, 'a'..='f' 0x61..=0x66: the low nibble, plus 9 for letters
    // (bit 6 set).
    let nibbles = (v & (ONES * 0x0f)) + ((v >> 6) & ONES) * 9;
    let pairs = ((nibbles >> 4) | nibbles) & 0x00ff_00ff_00ff_00ff;
    let quads = ((pairs >> 8) | pairs) & 0x0000_ffff_0000_ffff;
    (((quads >> 16) | quads) as u32, invalid)
}

/// One server frame, as far as a load test cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanned {
    /// A `message`: its offset (none on targets without offsets, NATS), and the stamp if a
    /// bench publisher sent it.
    Message {
        offset: Option<u64>,
        stamp: Option<Stamp>,
    },
    /// A `reply` to request `id`.
    Reply { id: u64 },
    /// A server `ping`: answer with `Writer::answer_ping`.
    Ping,
    /// A `PONG` answering our `PING` (NATS).
    Pong,
    /// Anything else (`error`, `disconnect`, unknown types): decode it with [`decode`].
    Other,
}

/// Classify one frame (either encoding, as the first byte tells).
pub fn scan(frame: &[u8]) -> Scanned {
    let fast = match frame.first() {
        Some(b'{') => scan_json(frame),
        Some(0x80..=0x8f | 0xde | 0xdf) => scan_msgpack(frame),
        Some(b'A'..=b'Z' | b'a'..=b'z' | b'+' | b'-') => super::nats::scan(frame),
        _ => None,
    };
    fast.unwrap_or_else(|| slow(frame))
}

/// A scanner for one channel: its `message` frames start with bytes known in advance (type,
/// channel name, `offset` key; or `MSG <subject> <sid> ` on NATS), so one comparison replaces
/// walking them. Other frames go through [`scan`].
#[derive(Debug, Clone)]
pub struct ChannelScanner {
    json: Vec<u8>,
    msgpack: Vec<u8>,
    nats: Vec<u8>,
}

impl ChannelScanner {
    pub fn new(channel: &str) -> ChannelScanner {
        let mut json = br#"{"type":"message","channel":"#.to_vec();
        serde_json::to_writer(&mut json, channel).expect("strings serialize");
        json.extend_from_slice(br#","offset":"#);
        let mut msgpack = vec![0x84];
        for part in [
            &b"type"[..],
            b"message",
            b"channel",
            channel.as_bytes(),
            b"offset",
        ] {
            mp_write_str(&mut msgpack, part);
        }
        let nats = format!("MSG {channel} {} ", super::nats::SID).into_bytes();
        ChannelScanner {
            json,
            msgpack,
            nats,
        }
    }

    /// As [`scan`], faster for this channel's messages.
    #[inline]
    pub fn scan(&self, frame: &[u8]) -> Scanned {
        self.ours(frame).unwrap_or_else(|| scan(frame))
    }

    fn ours(&self, frame: &[u8]) -> Option<Scanned> {
        let (offset, stamp) = if let Some(rest) = frame.strip_prefix(&self.json[..]) {
            let mut c = Cursor::new(rest);
            let offset = c.json_uint()?;
            c.expect(br#","data":"#)?;
            (Some(offset), json_stamp(&mut c)?)
        } else if let Some(rest) = frame.strip_prefix(&self.nats[..]) {
            let mut c = Cursor::new(rest);
            c.json_uint()?;
            c.expect(b"\r\n")?;
            (None, json_stamp(&mut c)?)
        } else {
            let mut c = Cursor::new(frame.strip_prefix(&self.msgpack[..])?);
            let offset = c.mp_uint()?;
            (c.mp_str()? == b"data").then_some(())?;
            (Some(offset), mp_stamp(&mut c)?)
        };
        Some(Scanned::Message {
            offset,
            stamp: Some(stamp),
        })
    }
}

/// Fully decode a frame of either encoding.
pub fn decode(frame: &[u8]) -> Option<ServerFrame> {
    match Encoding::sniff(frame)? {
        Encoding::Json => serde_json::from_slice(frame).ok(),
        Encoding::Msgpack => rmp_serde::from_slice(frame).ok(),
    }
}

/// The stamp in a JSON `data` (a NATS payload): the fast path, else a full parse.
pub fn json_data_stamp(data: &[u8]) -> Option<Stamp> {
    json_stamp(&mut Cursor::new(data)).or_else(|| serde_json::from_slice(data).ok())
}

/// The full decode, for frames off the fast path.
fn slow(frame: &[u8]) -> Scanned {
    match decode(frame) {
        Some(ServerFrame::Message { offset, data, .. }) => Scanned::Message {
            offset: Some(offset),
            stamp: Stamp::deserialize(&data).ok(),
        },
        Some(ServerFrame::Reply { id, .. }) => Scanned::Reply { id },
        Some(ServerFrame::Ping) => Scanned::Ping,
        _ => Scanned::Other,
    }
}

/// A cursor over frame bytes; every method returns `None` when the bytes are not as expected.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(b: &'a [u8]) -> Self {
        Cursor { b, pos: 0 }
    }

    fn expect(&mut self, lit: &[u8]) -> Option<()> {
        let end = self.pos + lit.len();
        (self.b.get(self.pos..end)? == lit).then(|| self.pos = end)
    }

    fn byte(&mut self) -> Option<u8> {
        let b = *self.b.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(s)
    }

    // JSON

    /// An unsigned decimal integer.
    #[inline]
    fn json_uint(&mut self) -> Option<u64> {
        let digits = &self.b[self.pos..];
        let mut v: u64 = 0;
        let mut n = 0;
        // 19 digits never overflow a u64; a 20th needs checking; more are not a u64.
        while n < digits.len().min(20) {
            let d = digits[n].wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            v = if n < 19 {
                v * 10 + u64::from(d)
            } else {
                v.checked_mul(10)?.checked_add(u64::from(d))?
            };
            n += 1;
        }
        if n == 0 || digits.get(n).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        self.pos += n;
        Some(v)
    }

    /// The rest of a JSON string whose opening quote was consumed, up to and past its closing quote.
    fn json_skip_string(&mut self) -> Option<()> {
        loop {
            match self.byte()? {
                b'"' => return Some(()),
                b'\\' => {
                    self.byte()?;
                }
                _ => {}
            }
        }
    }

    // MessagePack

    fn mp_map_len(&mut self) -> Option<usize> {
        Some(match self.byte()? {
            m @ 0x80..=0x8f => usize::from(m & 0x0f),
            0xde => usize::from(u16::from_be_bytes(self.take(2)?.try_into().ok()?)),
            0xdf => u32::from_be_bytes(self.take(4)?.try_into().ok()?) as usize,
            _ => return None,
        })
    }

    fn mp_str(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            m @ 0xa0..=0xbf => usize::from(m & 0x1f),
            0xd9 => usize::from(self.byte()?),
            0xda => usize::from(u16::from_be_bytes(self.take(2)?.try_into().ok()?)),
            0xdb => u32::from_be_bytes(self.take(4)?.try_into().ok()?) as usize,
            _ => return None,
        };
        self.take(len)
    }

    fn mp_uint(&mut self) -> Option<u64> {
        Some(match self.byte()? {
            v @ 0x00..=0x7f => u64::from(v),
            0xcc => u64::from(self.byte()?),
            0xcd => u64::from(u16::from_be_bytes(self.take(2)?.try_into().ok()?)),
            0xce => u64::from(u32::from_be_bytes(self.take(4)?.try_into().ok()?)),
            0xcf => u64::from_be_bytes(self.take(8)?.try_into().ok()?),
            _ => return None,
        })
    }
}

const JSON_MESSAGE: &[u8] = br#"{"type":"message","channel":""#;
const JSON_REPLY: &[u8] = br#"{"type":"reply","id":"#;
const JSON_PING: &[u8] = br#"{"type":"ping"}"#;

fn scan_json(frame: &[u8]) -> Option<Scanned> {
    let mut c = Cursor::new(frame);
    if c.expect(JSON_MESSAGE).is_some() {
        c.json_skip_string()?;
        c.expect(br#","offset":"#)?;
        let offset = c.json_uint()?;
        c.expect(br#","data":"#)?;
        let stamp = json_stamp(&mut c).or_else(|| {
            // Not our layout: maybe another publisher's data, maybe other key order.
            let data = frame.get(c.pos..frame.len().checked_sub(1)?)?;
            serde_json::from_slice::<Stamp>(data).ok()
        });
        return Some(Scanned::Message {
            offset: Some(offset),
            stamp,
        });
    }
    if c.expect(JSON_REPLY).is_some() {
        return Some(Scanned::Reply { id: c.json_uint()? });
    }
    (frame == JSON_PING).then_some(Scanned::Ping)
}

fn json_stamp(c: &mut Cursor) -> Option<Stamp> {
    const KEY: &[u8; 6] = br#"{"s":""#;
    // The key, the digits and the closing quote with what follows it, checked at once.
    let b = c.take(KEY.len() + STAMP_HEX + 2)?;
    if b[..KEY.len()] != KEY[..] || b[KEY.len() + STAMP_HEX] != b'"' {
        return None;
    }
    let stamp = Stamp::unpack(&b[KEY.len()..KEY.len() + STAMP_HEX])?;
    matches!(b[KEY.len() + STAMP_HEX + 1], b',' | b'}').then_some(stamp)
}

fn scan_msgpack(frame: &[u8]) -> Option<Scanned> {
    let mut c = Cursor::new(frame);
    let fields = c.mp_map_len()?;
    if c.mp_str()? != b"type" {
        return None;
    }
    match c.mp_str()? {
        b"message" if fields == 4 => {
            (c.mp_str()? == b"channel").then_some(())?;
            c.mp_str()?;
            (c.mp_str()? == b"offset").then_some(())?;
            let offset = c.mp_uint()?;
            (c.mp_str()? == b"data").then_some(())?;
            let data = c.pos;
            let stamp = mp_stamp(&mut c)
                .or_else(|| rmp_serde::from_slice::<Stamp>(frame.get(data..)?).ok());
            Some(Scanned::Message {
                offset: Some(offset),
                stamp,
            })
        }
        b"reply" => {
            (c.mp_str()? == b"id").then_some(())?;
            Some(Scanned::Reply { id: c.mp_uint()? })
        }
        b"ping" if fields == 1 => Some(Scanned::Ping),
        _ => None,
    }
}

fn mp_stamp(c: &mut Cursor) -> Option<Stamp> {
    if c.mp_map_len()? == 0 || c.mp_str()? != b"s" {
        return None;
    }
    Stamp::unpack(c.mp_str()?)
}

/// Append the `data` of a bench message: the stamp, padded with `x` so that `data` is exactly
/// `size` bytes in `encoding` (or as small as it gets, when `size` is smaller than the stamp).
pub fn write_stamp(out: &mut Vec<u8>, encoding: Encoding, stamp: Stamp, size: usize) {
    let start = out.len();
    match encoding {
        Encoding::Json => {
            out.extend_from_slice(br#"{"s":""#);
            out.extend_from_slice(&stamp.pack());
            out.extend_from_slice(br#"","x":""#);
            let pad = size.saturating_sub(out.len() - start + 2);
            out.resize(out.len() + pad, b'x');
            out.extend_from_slice(b"\"}");
        }
        Encoding::Msgpack => {
            out.push(0x82);
            mp_write_str(out, b"s");
            mp_write_str(out, &stamp.pack());
            mp_write_str(out, b"x");
            // The pad string's header grows with it: 1 byte up to 31, 2 up to 255, 3 up to
            // 65,535, else 5.
            let rest = size.saturating_sub(out.len() - start);
            let (header, pad) = match rest {
                0..=32 => (1, rest.saturating_sub(1)),
                33..=257 => (2, rest - 2),
                258..=65_538 => (3, rest - 3),
                _ => (5, rest - 5),
            };
            match header {
                1 => out.push(0xa0 | pad as u8),
                2 => out.extend_from_slice(&[0xd9, pad as u8]),
                3 => {
                    out.push(0xda);
                    out.extend_from_slice(&(pad as u16).to_be_bytes());
                }
                _ => {
                    out.push(0xdb);
                    out.extend_from_slice(&(pad as u32).to_be_bytes());
                }
            }
            out.resize(out.len() + pad, b'x');
        }
    }
}

/// A MessagePack string (fixstr or str8/16/32).
pub fn mp_write_str(out: &mut Vec<u8>, s: &[u8]) {
    match s.len() {
        n @ 0..=31 => out.push(0xa0 | n as u8),
        n @ 32..=255 => out.extend_from_slice(&[0xd9, n as u8]),
        n @ 256..=65535 => {
            out.push(0xda);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0xdb);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(s);
}

/// A MessagePack unsigned integer in its smallest form.
pub fn mp_write_uint(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=0x7f => out.push(v as u8),
        0x80..=0xff => out.extend_from_slice(&[0xcc, v as u8]),
        0x100..=0xffff => {
            out.push(0xcd);
            out.extend_from_slice(&(v as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xce);
            out.extend_from_slice(&(v as u32).to_be_bytes());
        }
        _ => {
            out.push(0xcf);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ErrorCode, encode_message, encode_server};
    use serde_json::{Value, json};

    fn stamp() -> Stamp {
        Stamp {
            phase: 3,
            publisher: 7,
            seq: 123_456,
            t_ns: 9_876_543_210_123,
        }
    }

    /// `data` as the server holds it: parsed from the publisher's bytes into a `Value`.
    fn data(encoding: Encoding, size: usize) -> (Value, usize) {
        let mut out = Vec::new();
        write_stamp(&mut out, encoding, stamp(), size);
        let value = match encoding {
            Encoding::Json => serde_json::from_slice(&out).unwrap(),
            Encoding::Msgpack => rmp_serde::from_slice(&out).unwrap(),
        };
        (value, out.len())
    }

    #[test]
    fn reads_stamps_from_server_message_frames() {
        for encoding in Encoding::ALL {
            for size in [
                0, 10, 60, 61, 70, 100, 101, 102, 200, 300, 1000, 65_600, 70_000,
            ] {
                let (value, len) = data(encoding, size);
                if size >= 70 {
                    assert_eq!(len, size, "{encoding:?} {size}");
                }
                for channel in ["topic:bench-1/fanout", r#"topic:a/"offset":1\"#] {
                    let frame = encode_message(channel, 42, &value, encoding);
                    assert_eq!(
                        scan(&frame),
                        Scanned::Message {
                            offset: Some(42),
                            stamp: Some(stamp())
                        },
                        "{encoding:?} {size} {channel}"
                    );
                }
            }
        }
    }

    #[test]
    fn fast_paths_take_server_layout() {
        // The layout the hand-written paths expect is the one the server writes: the stamp is
        // read without the serde fallback.
        let (value, _) = data(Encoding::Json, 100);
        let frame = encode_message("topic:s/t", 9, &value, Encoding::Json);
        let at = frame.windows(7).position(|w| w == b"\"data\":").unwrap() + 7;
        let mut c = Cursor { b: &frame, pos: at };
        assert_eq!(json_stamp(&mut c), Some(stamp()));
        let (value, _) = data(Encoding::Msgpack, 100);
        let frame = encode_message("topic:s/t", 9, &value, Encoding::Msgpack);
        let at = frame.windows(5).position(|w| w == b"\xa4data").unwrap() + 5;
        let mut c = Cursor { b: &frame, pos: at };
        assert_eq!(mp_stamp(&mut c), Some(stamp()));
    }

    #[test]
    fn channel_scanner_agrees_with_scan() {
        let channel = "topic:bench-1/fan\"out";
        let scanner = ChannelScanner::new(channel);
        for encoding in Encoding::ALL {
            let (value, _) = data(encoding, 100);
            for (name, data) in [
                (channel, &value),
                ("topic:other/x", &value),
                (channel, &json!(1)),
            ] {
                let frame = encode_message(name, 18_446_744_073_709_551_615, data, encoding);
                assert_eq!(scanner.scan(&frame), scan(&frame), "{encoding:?} {name}");
                assert!(matches!(scanner.scan(&frame), Scanned::Message { .. }));
            }
            let ping = encode_server(&ServerFrame::Ping, encoding);
            assert_eq!(scanner.scan(&ping), Scanned::Ping);
        }
        // Numbers too long for a u64 are not read as one.
        let mut c = Cursor::new(b"123456789012345678901,");
        assert_eq!(c.json_uint(), None);
        let mut c = Cursor::new(b"18446744073709551615}");
        assert_eq!(c.json_uint(), Some(u64::MAX));
    }

    #[test]
    fn other_data_and_other_orders_still_parse() {
        for encoding in Encoding::ALL {
            let frame = encode_message("topic:s/t", 5, &json!({"hello": [1, 2]}), encoding);
            assert_eq!(
                scan(&frame),
                Scanned::Message {
                    offset: Some(5),
                    stamp: None
                }
            );
        }
        // Same fields, another order and spacing: the slow path reads it.
        let hex = String::from_utf8(stamp().pack().to_vec()).unwrap();
        let frame = format!(
            r#"{{ "data": {{"x": "", "s": "{hex}"}}, "offset": 8, "type": "message", "channel": "topic:s/t"}}"#
        );
        assert_eq!(
            scan(frame.as_bytes()),
            Scanned::Message {
                offset: Some(8),
                stamp: Some(stamp())
            }
        );
        // A stamp that is not 32 lowercase hex digits is no stamp.
        for bad in [
            hex.to_uppercase(),
            hex[1..].to_string(),
            hex.replace('3', "g"),
        ] {
            let data = json!({"s": bad, "x": ""});
            let frame = encode_message("topic:s/t", 8, &data, Encoding::Json);
            assert_eq!(
                scan(&frame),
                Scanned::Message {
                    offset: Some(8),
                    stamp: None
                },
                "{bad}"
            );
        }
    }

    #[test]
    fn packed_stamps_round_trip_and_only_lowercase_hex_reads() {
        let extremes = Stamp {
            phase: 0xffff,
            publisher: 0,
            seq: LOW48,
            t_ns: 1,
        };
        for s in [stamp(), extremes] {
            assert_eq!(Stamp::unpack(&s.pack()), Some(s));
        }
        // Every byte value at every place of eight digits, against the standard parser.
        let digits = *b"0f9a3c7e";
        for at in 0..8 {
            for byte in 0..=255u8 {
                let mut d = digits;
                d[at] = byte;
                let want = std::str::from_utf8(&d)
                    .ok()
                    .filter(|t| t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
                    .map(|t| u32::from_str_radix(t, 16).unwrap());
                let (value, invalid) = hex8(d);
                assert_eq!((invalid == 0).then_some(value), want, "{d:?}");
            }
        }
    }

    #[test]
    fn replies_pings_and_the_rest() {
        for encoding in Encoding::ALL {
            let reply = ServerFrame::reply(77, json!({"offset": 1, "delivered": 20}));
            assert_eq!(
                scan(&encode_server(&reply, encoding)),
                Scanned::Reply { id: 77 }
            );
            assert_eq!(
                scan(&encode_server(&ServerFrame::Ping, encoding)),
                Scanned::Ping
            );
            let error = ServerFrame::error(Some(3), ErrorCode::RateLimited, "slow down");
            let bytes = encode_server(&error, encoding);
            assert_eq!(scan(&bytes), Scanned::Other);
            assert_eq!(decode(&bytes), Some(error));
        }
        assert_eq!(scan(b""), Scanned::Other);
        assert_eq!(
            scan(b"{\"type\":\"message\",\"channel\":\"x"),
            Scanned::Other
        );
        assert_eq!(scan(&[0x84, 0xa4]), Scanned::Other);
    }
}
