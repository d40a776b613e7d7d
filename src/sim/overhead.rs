//! Wire overhead: what a message of the protocol costs on a link, beyond its own bytes.
//!
//! Owns the one model of the framing between arbor's bytes and the wire, so that a
//! link's nominal rate (40 Mbit/s) is what it is on a wire, and a chunk of N bytes
//! costs N plus its framing. Layer by layer, from arbor's bytes outwards:
//!
//! - arbor: a chunk's answer is a 5-byte header (kind, u32 length) and its bytes
//!   ([`crate::net::proto::CHUNK_HEADER_LEN`]); a control message is a 4-byte length
//!   and its canonical CBOR (PROTOCOL.md §10);
//! - yamux: a 12-byte header per data frame, and a stream's writes are cut into frames
//!   of at most 16 KiB (yamux's default split, which arbor keeps);
//! - noise: each message is a 2-byte length, at most 64,511 bytes of plaintext, and the
//!   16-byte authentication tag (libp2p-noise's limit);
//! - TCP/IP: 66 bytes per segment of at most 1,448 bytes: a 14-byte Ethernet header, a
//!   20-byte IPv4 header and a 32-byte TCP header (20 and the 12 of the timestamp
//!   option), in a 1,500-byte MTU. That is a frame as a Linux shaper (`tc`) counts it;
//!   the preamble, checksum and gap a physical Ethernet adds (24 bytes more per frame,
//!   1.6%) are left out, as are the ACKs and window updates going the other way.
//!
//! A 64 KiB chunk costs 68,673 bytes (4.8% more), a 1 MiB chunk 1,097,517 (4.7%); a
//! small control message, sent at once (TCP_NODELAY), one segment of its own: 100 bytes
//! of framing.

use crate::net::proto::CHUNK_HEADER_LEN;

/// yamux: header bytes per frame, and most bytes of a stream in one frame.
const YAMUX_HEADER: u64 = 12;
const YAMUX_FRAME: u64 = 16 * 1024;
/// noise: length prefix and tag per message, and most plaintext bytes in one.
const NOISE_FRAMING: u64 = 2 + 16;
const NOISE_MESSAGE: u64 = 65_535 - 1_024;
/// TCP/IP over Ethernet: header bytes per segment, and most payload bytes in one.
const SEGMENT_HEADERS: u64 = 14 + 20 + 32;
const MSS: u64 = 1_448;
/// arbor's length prefix on a control frame.
const FRAME_LENGTH: u64 = 4;

/// Bytes on the wire for `bytes` of one arbor message written to a stream at once.
fn framed(bytes: u64) -> u64 {
    let yamux = bytes + YAMUX_HEADER * bytes.div_ceil(YAMUX_FRAME).max(1);
    let noise = yamux + NOISE_FRAMING * yamux.div_ceil(NOISE_MESSAGE);
    noise + SEGMENT_HEADERS * noise.div_ceil(MSS)
}

/// Bytes on the wire for a chunk of `len` bytes.
pub fn chunk(len: u32) -> u64 {
    framed(u64::from(len) + CHUNK_HEADER_LEN as u64)
}

/// Bytes on the wire for a control message whose CBOR is `len` bytes.
pub fn control(len: usize) -> u64 {
    framed(len as u64 + FRAME_LENGTH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_costs_its_bytes_and_every_layers_framing() {
        // 65,541 arbor bytes; 5 yamux frames (60); 2 noise messages (36); 65,637 bytes
        // in 46 segments (3,036).
        assert_eq!(chunk(64 * 1024), 65_536 + 5 + 60 + 36 + 3_036);
        assert_eq!(chunk(1 << 20), 1_097_517);
        // About what a shaper counts for bulk TCP: 1,514 bytes per 1,448.
        let ratio = chunk(1 << 20) as f64 / f64::from(1u32 << 20);
        assert!((1.04..1.05).contains(&ratio), "{ratio}");
    }

    #[test]
    fn a_small_message_pays_a_whole_segment() {
        assert_eq!(control(20), 20 + 4 + 12 + 18 + 66);
        assert_eq!(control(0), 100);
    }
}
