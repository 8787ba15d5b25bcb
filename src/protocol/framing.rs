//! Length-prefixed framing for stream transports (QUIC's control stream): every frame is a 4-byte
//! big-endian unsigned payload length followed by that many payload bytes. A length of 0 is
//! invalid; a length above the receiver's limit is refused as soon as the prefix arrives, before
//! any of the payload is buffered.
//!
//! Sans-IO: the transport pushes whatever bytes it read into a `FrameDecoder` and takes complete
//! frames out. Frames are split out of the decoder's one buffer without copying.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the length prefix in front of every frame.
pub const LEN_PREFIX: usize = 4;

/// After a frame larger than this leaves the buffer empty, the decoder lets go of the buffer's
/// allocation instead of keeping it for reuse, so one large frame does not pin its size for the
/// rest of an (often idle) connection.
const RETAIN_BYTES: usize = 16 * 1024;

/// Why the byte stream cannot be split into frames. The stream is unusable afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The length prefix announces more than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The length prefix is zero.
    #[error("zero-length frame")]
    Empty,
}

/// Append one frame (prefix and payload) to `out`.
///
/// # Panics
/// If `payload` is 4 GiB or larger. Frames are never empty on the wire: an empty `payload` is a
/// caller bug (and is caught in debug builds).
pub fn encode_frame(payload: &[u8], out: &mut BytesMut) {
    debug_assert!(!payload.is_empty(), "frames are never empty");
    let len = u32::try_from(payload.len()).expect("frames are smaller than 4 GiB");
    out.reserve(LEN_PREFIX + payload.len());
    out.put_u32(len);
    out.extend_from_slice(payload);
}

/// Splits a byte stream into frame payloads.
#[derive(Debug)]
pub struct FrameDecoder {
    max_len: usize,
    buf: BytesMut,
}

impl FrameDecoder {
    /// A decoder refusing payloads longer than `max_len` bytes.
    pub fn new(max_len: usize) -> FrameDecoder {
        FrameDecoder {
            max_len,
            buf: BytesMut::new(),
        }
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Append bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The buffer, for transports that read into it directly (append only).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes buffered that are not yet part of a returned frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame's payload, `Ok(None)` until more bytes arrive. Once a length
    /// prefix has arrived, room for the whole frame is reserved, so a large frame is assembled in
    /// one allocation. Errors are sticky: the same error comes back on every later call.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FramingError> {
        let Some(prefix) = self.buf.first_chunk::<LEN_PREFIX>() else {
            return Ok(None);
        };
        // `u32` always fits `usize` on the 32- and 64-bit targets we build for.
        let len = u32::from_be_bytes(*prefix) as usize;
        if len == 0 {
            return Err(FramingError::Empty);
        }
        if len > self.max_len {
            return Err(FramingError::TooLarge {
                len,
                max: self.max_len,
            });
        }
        let needed = LEN_PREFIX + len;
        if self.buf.len() < needed {
            self.buf.reserve(needed - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(LEN_PREFIX);
        let frame = self.buf.split_to(len).freeze();
        if self.buf.is_empty() && len > RETAIN_BYTES {
            self.buf = BytesMut::new();
        }
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_all(frames: &[Vec<u8>]) -> BytesMut {
        let mut out = BytesMut::new();
        for frame in frames {
            encode_frame(frame, &mut out);
        }
        out
    }

    fn drain(decoder: &mut FrameDecoder, into: &mut Vec<Vec<u8>>) {
        while let Some(frame) = decoder.next_frame().unwrap() {
            into.push(frame.to_vec());
        }
    }

    #[test]
    fn round_trip_and_partial_input() {
        let wire = encode_all(&[b"{}".to_vec(), b"hello".to_vec()]);
        assert_eq!(&wire[..6], &[0, 0, 0, 2, b'{', b'}']);
        let mut d = FrameDecoder::new(16);
        d.push(&wire[..3]);
        assert_eq!(d.next_frame(), Ok(None));
        d.push(&wire[3..8]);
        assert_eq!(d.next_frame().unwrap().as_deref(), Some(&b"{}"[..]));
        assert_eq!(d.next_frame(), Ok(None));
        d.buffer_mut().extend_from_slice(&wire[8..]);
        assert_eq!(d.next_frame().unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!((d.next_frame(), d.buffered()), (Ok(None), 0));
    }

    #[test]
    fn zero_and_oversize_lengths_are_sticky_errors() {
        let mut d = FrameDecoder::new(16);
        d.push(&[0, 0, 0, 0, 1]);
        assert_eq!(d.next_frame(), Err(FramingError::Empty));
        assert_eq!(d.next_frame(), Err(FramingError::Empty));
        let mut d = FrameDecoder::new(16);
        d.push(&[0, 0, 0, 17]);
        assert_eq!(
            d.next_frame(),
            Err(FramingError::TooLarge { len: 17, max: 16 })
        );
        assert_eq!(
            d.next_frame(),
            Err(FramingError::TooLarge { len: 17, max: 16 })
        );
        // A frame of exactly the limit is fine.
        let mut d = FrameDecoder::new(16);
        d.push(&encode_all(&[vec![7; 16]]));
        assert_eq!(d.next_frame().unwrap().map(|f| f.len()), Some(16));
    }

    #[test]
    fn frames_share_the_buffer() {
        let wire = encode_all(&[b"ab".to_vec(), b"cd".to_vec()]);
        let mut d = FrameDecoder::new(16);
        d.push(&wire);
        let a = d.next_frame().unwrap().unwrap();
        let b = d.next_frame().unwrap().unwrap();
        // Split from one allocation, not copied: the second frame starts right after the first
        // one's payload and the second prefix.
        assert_eq!(b.as_ptr() as usize - a.as_ptr() as usize, 2 + LEN_PREFIX);
    }

    proptest! {
        #[test]
        fn any_chunking_decodes_the_same_frames(
            frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..20),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let wire = encode_all(&frames);
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            cuts.extend([0, wire.len()]);
            cuts.sort_unstable();
            let mut d = FrameDecoder::new(300);
            let mut got = Vec::new();
            for pair in cuts.windows(2) {
                d.push(&wire[pair[0]..pair[1]]);
                drain(&mut d, &mut got);
            }
            prop_assert_eq!(got, frames);
            prop_assert_eq!(d.buffered(), 0);
        }

        #[test]
        fn oversize_lengths_fail_without_allocating(len in 1025u32.., max in 1usize..1025) {
            let mut d = FrameDecoder::new(max);
            d.push(&len.to_be_bytes()[..2]);
            prop_assert_eq!(d.next_frame(), Ok(None));
            d.push(&len.to_be_bytes()[2..]);
            d.push(b"payload");
            prop_assert_eq!(d.next_frame(), Err(FramingError::TooLarge { len: len as usize, max }));
            prop_assert!(d.buffer_mut().capacity() < 64);
        }
    }
}
