//! The media side of a meeting peer without sockets: what it counts about each remote track
//! (packets, bytes, loss from RTP sequence numbers, duplicates, time to the first packet, VP8
//! keyframes) and the synthetic payloads it sends.
//!
//! The payloads are not encoded media: a VP8 packet is a valid payload descriptor and frame
//! header (so a receiver can tell keyframes) followed by filler, an Opus packet is one
//! silence frame. Peers count them; a browser counts them in `getStats()` too but cannot show
//! a picture.

use bytes::{BufMut, Bytes, BytesMut};
use std::time::{Duration, Instant};

/// How many of the latest sequence numbers `Sequence` remembers to tell duplicates.
const WINDOW: u64 = 1024;

/// Loss accounting from the RTP sequence numbers of one stream, in the manner of RTCP receiver
/// reports: sequence numbers are extended past their 16-bit wrap; the packets expected are
/// those from the lowest to the highest number seen; lost = expected − received (late packets
/// fill their gap; duplicates within the last `WINDOW` numbers are counted apart).
#[derive(Debug, Clone, Default)]
pub struct Sequence {
    /// Lowest and highest extended sequence numbers seen.
    range: Option<(u64, u64)>,
    received: u64,
    duplicates: u64,
    /// Bit `n % WINDOW` is set when extended number `n` (within the window) was seen.
    seen: Box<[u64]>,
}

impl Sequence {
    /// Record one packet's sequence number. Returns false for a duplicate.
    pub fn record(&mut self, seq: u16) -> bool {
        if self.seen.is_empty() {
            self.seen = vec![0; (WINDOW / 64) as usize].into_boxed_slice();
        }
        let ext = match self.range {
            // Start one cycle up, so a packet from before the first one still has a number.
            None => (1 << 16) + u64::from(seq),
            Some((_, highest)) => {
                let delta = i64::from(seq.wrapping_sub(highest as u16) as i16);
                highest.saturating_add_signed(delta)
            }
        };
        let (low, high) = self.range.unwrap_or((ext, ext));
        if ext + WINDOW <= high {
            // Too old to tell whether it came before; counted, never as a duplicate.
            self.received += 1;
            self.range = Some((low.min(ext), high));
            return true;
        }
        if ext > high {
            // Forget the numbers that leave the window.
            for n in (high + 1).max(ext.saturating_sub(WINDOW - 1))..=ext {
                self.seen[((n % WINDOW) / 64) as usize] &= !(1 << (n % 64));
            }
        }
        let (word, bit) = (((ext % WINDOW) / 64) as usize, 1u64 << (ext % 64));
        if self.range.is_some() && self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return false;
        }
        self.seen[word] |= bit;
        self.received += 1;
        self.range = Some((low.min(ext), high.max(ext)));
        true
    }

    /// Packets from the lowest to the highest sequence number seen.
    pub fn expected(&self) -> u64 {
        self.range.map_or(0, |(low, high)| high - low + 1)
    }

    /// Distinct packets received.
    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

/// Whether a VP8 RTP payload (RFC 7741) starts a keyframe: `Some(true)` for the first packet of
/// a keyframe, `Some(false)` for the first packet of another frame, `None` for a packet that
/// continues a frame or is too short to tell.
pub fn vp8_keyframe(payload: &[u8]) -> Option<bool> {
    let first = *payload.first()?;
    let extended = first & 0x80 != 0;
    let start = first & 0x10 != 0;
    let partition = first & 0x0f;
    if !start || partition != 0 {
        return None;
    }
    let mut at = 1;
    if extended {
        let flags = *payload.get(at)?;
        at += 1;
        if flags & 0x80 != 0 {
            // PictureID: 7 or 15 bits, the first byte's top bit telling which.
            at += if *payload.get(at)? & 0x80 != 0 { 2 } else { 1 };
        }
        if flags & 0x40 != 0 {
            at += 1; // TL0PICIDX
        }
        if flags & 0x30 != 0 {
            at += 1; // TID / KEYIDX
        }
    }
    // The VP8 frame tag: bit 0 is the inverse keyframe flag.
    Some(*payload.get(at)? & 0x01 == 0)
}

/// A synthetic VP8 payload of `size` bytes (at least 11): a payload descriptor starting a
/// frame, a frame tag (keyframe or not) and, for a keyframe, its start code and a 320×240
/// size; then filler.
pub fn vp8_payload(keyframe: bool, size: usize) -> Bytes {
    let mut out = BytesMut::with_capacity(size.max(11));
    out.put_u8(0x10); // S: start of a partition, partition 0
    // Frame tag: keyframe flag (inverted), version 0, shown, first partition size 0.
    out.put_u8(if keyframe { 0x10 } else { 0x11 });
    out.put_u16(0);
    if keyframe {
        out.put_slice(&[0x9d, 0x01, 0x2a]);
        out.put_u16_le(320);
        out.put_u16_le(240);
    }
    out.resize(size.max(11), 0);
    out.freeze()
}

/// One Opus frame of silence (20 ms, CELT, fullband).
pub const OPUS_SILENCE: &[u8] = &[0xf8, 0xff, 0xfe];

/// How long a receiver waits for a keyframe after asking before it asks again: a sender may
/// drop a request that comes right after a keyframe of its own.
pub const KEYFRAME_RETRY: Duration = Duration::from_secs(1);

/// What a receiver of a remote track should do after a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Ask the sender for a keyframe (PLI): on the first video packet, then every
    /// `KEYFRAME_RETRY` until one comes.
    pub request_keyframe: bool,
}

/// Counters of one remote track.
#[derive(Debug, Clone, Default)]
pub struct TrackCounter {
    pub video: bool,
    pub bytes: u64,
    pub sequence: Sequence,
    /// From joining the meeting to the first packet.
    pub first_packet: Option<Duration>,
    /// VP8 keyframes begun after the first packet, that is after asking for one (video only).
    pub keyframes: u64,
    /// Keyframe requests (PLIs) made.
    pub keyframe_requests: u64,
    last_request: Option<Instant>,
}

impl TrackCounter {
    pub fn new(video: bool) -> TrackCounter {
        TrackCounter {
            video,
            ..TrackCounter::default()
        }
    }

    /// Count a packet that arrived at `now`; `joined` is when the peer joined the meeting.
    pub fn packet(&mut self, seq: u16, payload: &[u8], now: Instant, joined: Instant) -> Received {
        let first = self.first_packet.is_none();
        if first {
            self.first_packet = Some(now.saturating_duration_since(joined));
        }
        if self.sequence.record(seq) {
            self.bytes += payload.len() as u64;
            if !first && self.video && vp8_keyframe(payload) == Some(true) {
                self.keyframes += 1;
            }
        }
        let request_keyframe = self.video
            && self.keyframes == 0
            && self
                .last_request
                .is_none_or(|at| now.saturating_duration_since(at) >= KEYFRAME_RETRY);
        if request_keyframe {
            self.last_request = Some(now);
            self.keyframe_requests += 1;
        }
        Received { request_keyframe }
    }
}

/// How late a sender may be and still send every packet it owes: beyond, the backlog is
/// skipped rather than sent in one burst.
pub const CATCH_UP: Duration = Duration::from_millis(100);

/// What a `Pacer` says at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// Packets to send now on each stream.
    pub send: u64,
    /// Packets of each stream skipped: the sender was more than `CATCH_UP` late.
    pub skipped: u64,
}

/// Paces streams of `rate` packets per second by the time since the first tick, so a tick that
/// comes late (a busy runtime) is made up by sending what is due, up to `CATCH_UP` of it.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: f64,
    start: Option<Instant>,
    /// Packets counted as due (sent or skipped) so far.
    counted: u64,
}

impl Pacer {
    pub fn new(rate: f64) -> Pacer {
        Pacer {
            rate: rate.max(0.1),
            start: None,
            counted: 0,
        }
    }

    /// A tick at `now`: the first packet is due at the first tick, then one every `1/rate`.
    pub fn poll(&mut self, now: Instant) -> Due {
        let start = *self.start.get_or_insert(now);
        let total = (now.saturating_duration_since(start).as_secs_f64() * self.rate) as u64 + 1;
        let owed = total.saturating_sub(self.counted);
        self.counted = self.counted.max(total);
        let most = ((CATCH_UP.as_secs_f64() * self.rate) as u64).max(1);
        Due {
            send: owed.min(most),
            skipped: owed.saturating_sub(most),
        }
    }
}

/// The RTP stream one local track sends to one peer: sequence numbers and timestamps of a
/// stream of `rate` packets per second, one frame per packet.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub video: bool,
    pub seq: u16,
    pub timestamp: u32,
    /// Timestamp units per packet.
    step: u32,
    sent: u64,
    /// A video keyframe every this many packets (the first packet is one).
    keyframe_every: u64,
    video_bytes: usize,
}

/// The header fields and payload of the next packet of an `Outgoing` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextPacket {
    pub seq: u16,
    pub timestamp: u32,
    /// Set on every packet: each is a whole video frame, or an audio frame.
    pub marker: bool,
    pub payload: Bytes,
}

impl Outgoing {
    /// A stream starting at `seq` and `timestamp` (random, as RTP wants), `rate` packets per
    /// second, video payloads of `video_bytes`.
    pub fn new(video: bool, seq: u16, timestamp: u32, rate: f64, video_bytes: usize) -> Outgoing {
        let clock = if video { 90_000.0 } else { 48_000.0 };
        let rate = rate.max(0.1);
        Outgoing {
            video,
            seq,
            timestamp,
            step: (clock / rate).round().max(1.0) as u32,
            sent: 0,
            keyframe_every: rate.ceil().max(1.0) as u64,
            video_bytes,
        }
    }

    /// The next packet; the stream moves on only with `advance`, once it is sent.
    pub fn packet(&self) -> NextPacket {
        let payload = if self.video {
            vp8_payload(
                self.sent.is_multiple_of(self.keyframe_every),
                self.video_bytes,
            )
        } else {
            Bytes::from_static(OPUS_SILENCE)
        };
        NextPacket {
            seq: self.seq,
            timestamp: self.timestamp,
            marker: true,
            payload,
        }
    }

    /// The packet of `packet` was sent.
    pub fn advance(&mut self) {
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(self.step);
        self.sent += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: impl IntoIterator<Item = u16>) -> Sequence {
        let mut s = Sequence::default();
        for seq in seqs {
            s.record(seq);
        }
        s
    }

    #[test]
    fn counts_gaps_as_loss() {
        let s = run([10, 11, 12, 15, 16]);
        assert_eq!((s.expected(), s.received(), s.lost()), (7, 5, 2));
        assert_eq!(run(0..100).lost(), 0);
    }

    #[test]
    fn wraps_around() {
        let s = run([65534, 65535, 0, 1, 3]);
        assert_eq!((s.expected(), s.received(), s.lost()), (6, 5, 1));
        // Several full cycles without loss.
        let s = run((0..200_000u32).map(|n| (n + 60_000) as u16));
        assert_eq!((s.expected(), s.lost()), (200_000, 0));
    }

    #[test]
    fn late_packets_fill_their_gap() {
        let s = run([1, 2, 4, 5, 3]);
        assert_eq!((s.expected(), s.lost(), s.duplicates()), (5, 0, 0));
        // A packet from before the first one widens the range.
        let s = run([5, 6, 4]);
        assert_eq!((s.expected(), s.lost()), (3, 0));
        let s = run([5, 6, 3]);
        assert_eq!((s.expected(), s.lost()), (4, 1));
    }

    #[test]
    fn duplicates_are_not_received_twice() {
        let mut s = Sequence::default();
        assert!(s.record(7));
        assert!(s.record(8));
        assert!(!s.record(7));
        assert!(!s.record(8));
        assert_eq!((s.received(), s.duplicates(), s.lost()), (2, 2, 0));
        // A number that left the window and comes back a cycle later is new, not a duplicate.
        let mut s = Sequence::default();
        for n in 0..70_000u32 {
            assert!(s.record(n as u16), "{n}");
        }
        assert_eq!((s.received(), s.duplicates(), s.lost()), (70_000, 0, 0));
    }

    #[test]
    fn vp8_keyframe_bit() {
        assert_eq!(vp8_keyframe(&vp8_payload(true, 100)), Some(true));
        assert_eq!(vp8_keyframe(&vp8_payload(false, 100)), Some(false));
        // As Chromium sends them: X with a 15-bit PictureID, TL0PICIDX and TID.
        assert_eq!(
            vp8_keyframe(&[0x90, 0xe0, 0x80, 0x01, 0x05, 0x20, 0x50, 0x2a]),
            Some(true)
        );
        assert_eq!(vp8_keyframe(&[0x90, 0x80, 0x12, 0x31, 0x00]), Some(false));
        // Continuation packets and truncated payloads tell nothing.
        assert_eq!(vp8_keyframe(&[0x00, 0x10]), None);
        assert_eq!(vp8_keyframe(&[0x11, 0x10]), None);
        assert_eq!(vp8_keyframe(&[0x90, 0x80]), None);
        assert_eq!(vp8_keyframe(&[]), None);
    }

    #[test]
    fn counter_asks_for_a_keyframe_until_one_comes() {
        let joined = Instant::now();
        let at = |ms| joined + Duration::from_millis(ms);
        let mut video = TrackCounter::new(true);
        // The first packet asks for a keyframe; a keyframe it begins does not answer that.
        assert!(
            video
                .packet(1, &vp8_payload(true, 50), at(250), joined)
                .request_keyframe
        );
        assert_eq!(video.keyframes, 0);
        assert!(
            !video
                .packet(2, &vp8_payload(false, 50), at(900), joined)
                .request_keyframe
        );
        // No keyframe for a while: ask again, once.
        assert!(
            video
                .packet(3, &vp8_payload(false, 50), at(1250), joined)
                .request_keyframe
        );
        assert!(
            !video
                .packet(4, &vp8_payload(false, 50), at(1300), joined)
                .request_keyframe
        );
        assert!(
            !video
                .packet(5, &vp8_payload(true, 50), at(1400), joined)
                .request_keyframe
        );
        assert!(
            !video
                .packet(5, &vp8_payload(true, 50), at(1500), joined)
                .request_keyframe
        );
        // A keyframe came: no more asking.
        assert!(
            !video
                .packet(6, &vp8_payload(false, 50), at(9000), joined)
                .request_keyframe
        );
        assert_eq!(video.first_packet, Some(Duration::from_millis(250)));
        assert_eq!((video.keyframes, video.keyframe_requests), (1, 2));
        assert_eq!((video.bytes, video.sequence.duplicates()), (300, 1));
        let mut audio = TrackCounter::new(false);
        assert!(
            !audio
                .packet(1, OPUS_SILENCE, at(0), joined)
                .request_keyframe
        );
        assert_eq!(audio.keyframe_requests, 0);
    }

    #[test]
    fn the_pacer_makes_up_late_ticks_within_the_catch_up() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut p = Pacer::new(100.0);
        let due = |send, skipped| Due { send, skipped };
        assert_eq!(p.poll(start), due(1, 0));
        // Ticks on time: one each.
        assert_eq!(p.poll(at(10)), due(1, 0));
        assert_eq!(p.poll(at(20)), due(1, 0));
        // Early or repeated ticks owe nothing.
        assert_eq!(p.poll(at(25)), due(0, 0));
        // 50 ms late: the five packets it owes go now.
        assert_eq!(p.poll(at(70)), due(5, 0));
        // A stall of a second: 100 ms of it is made up, the rest skipped.
        assert_eq!(p.poll(at(1070)), due(10, 90));
        assert_eq!(p.poll(at(1080)), due(1, 0));
        // Over a run, sent + skipped is the nominal count (ticks every 7 ms to 1001 ms).
        let mut p = Pacer::new(50.0);
        let total: u64 = (0..=1001)
            .step_by(7)
            .map(|ms| p.poll(at(ms)))
            .map(|d| d.send + d.skipped)
            .sum();
        assert_eq!(total, 51);
    }

    fn send(stream: &mut Outgoing) -> NextPacket {
        let packet = stream.packet();
        stream.advance();
        packet
    }

    #[test]
    fn outgoing_streams_number_their_packets() {
        let mut video = Outgoing::new(true, 65535, u32::MAX - 1000, 30.0, 200);
        let first = send(&mut video);
        assert_eq!((first.seq, first.payload.len()), (65535, 200));
        assert_eq!(vp8_keyframe(&first.payload), Some(true));
        let second = send(&mut video);
        assert_eq!(
            (second.seq, second.timestamp),
            (0, (u32::MAX - 1000).wrapping_add(3000))
        );
        assert_eq!(vp8_keyframe(&second.payload), Some(false));
        // One keyframe a second.
        let keyframes = (2..60)
            .map(|_| send(&mut video))
            .filter(|p| vp8_keyframe(&p.payload) == Some(true))
            .count();
        assert_eq!(keyframes, 1);
        let mut audio = Outgoing::new(false, 0, 0, 50.0, 200);
        // A packet not sent is offered again.
        assert_eq!(audio.packet(), audio.packet());
        assert_eq!(send(&mut audio).payload, OPUS_SILENCE);
        assert_eq!(send(&mut audio).timestamp, 960);
    }
}
