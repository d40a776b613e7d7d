//! The tree protocol on the wire: protocol ids, message types, framing and limits.
//!
//! Three libp2p stream protocols (specified in protocol/PROTOCOL.md §10–§13):
//! - [`JOIN`]: a new node redeems a join token for its certificate chain;
//! - [`CONTROL`]: one long-lived stream per parent/child connection: the child proves
//!   its membership, then the parent offers manifests and announces held chunks;
//! - [`CHUNKS`]: persistent request streams: a request names a span of chunks of an
//!   update, the answer streams their bytes. The receiver checks each chunk's length
//!   before reading it and its hash after;
//! - [`SIBLINGS`]: one stream between two children of one parent at one site: each
//!   proves its membership, then both announce the chunks they hold.
//!
//! Every frame is a big-endian u32 length and a canonical CBOR message. Lengths are
//! checked against the limit of the message kind before anything is allocated.

use crate::content::Hash;
use crate::content::manifest::{MAX_CHUNK_LEN, MAX_MANIFEST_BYTES};
use crate::report::MAX_REPORT_ENVELOPE_BYTES;
use crate::trust::member::MAX_CHAIN_BYTES;
use crate::trust::{Envelope, PublicKey};
use crate::wire::{self, WireError, fixed};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub const JOIN: StreamProtocol = StreamProtocol::new("/arbor/join/1");
pub const CONTROL: StreamProtocol = StreamProtocol::new("/arbor/control/1");
pub const CHUNKS: StreamProtocol = StreamProtocol::new("/arbor/chunks/1");
pub const SIBLINGS: StreamProtocol = StreamProtocol::new("/arbor/siblings/1");

/// Largest join request: a 32-byte secret in a one-key map.
pub const MAX_JOIN_REQUEST_FRAME: usize = 128;
/// Largest join reply, and sibling welcome: a root key or reason and a certificate
/// chain.
pub const MAX_JOIN_FRAME: usize = MAX_CHAIN_BYTES + 64 * 1024;
/// Largest hello: a certificate chain, the addresses and the site.
pub const MAX_HELLO_FRAME: usize = MAX_CHAIN_BYTES + MAX_ADDRS * (MAX_ADDR_LEN + 8) + 1024;
/// Largest control frame from a parent: an offer carries a whole signed manifest.
pub const MAX_CONTROL_FRAME: usize = MAX_MANIFEST_BYTES + 128 * 1024;
/// Largest control frame from a child: its signed report.
pub const MAX_FROM_CHILD_FRAME: usize = MAX_REPORT_ENVELOPE_BYTES + 1024;
/// Largest control frame from a sibling: a `Have` of [`MAX_RANGES`] ranges.
pub const MAX_FROM_SIBLING_FRAME: usize = MAX_RANGES * 12 + 1024;
/// Largest chunk request frame.
pub const MAX_REQUEST_FRAME: usize = 256;
/// Frame bytes read before the buffer grows to the length announced: a buffer grows
/// with the bytes that arrive, never ahead of them.
const READ_STEP: usize = 64 * 1024;
/// Most chunks one request may ask for.
pub const MAX_SPAN: u32 = 64;
/// Most ranges one `Have` may carry.
pub const MAX_RANGES: usize = 1 << 16;
/// Most addresses a node gives for itself, and bytes in one.
pub const MAX_ADDRS: usize = 8;
pub const MAX_ADDR_LEN: usize = 256;

/// A joining node's request. Fields in canonical key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    #[serde(with = "fixed")]
    pub secret: [u8; 32],
}

/// The parent's answer to a [`JoinRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinReply {
    /// The root key, the new member's certificate chain, and the parent's clock (Unix
    /// ms), so that a joining node whose clock is off is told so.
    Accepted {
        root: PublicKey,
        time: u64,
        chain: Vec<Envelope>,
    },
    Refused {
        reason: String,
    },
}

/// Messages on the control stream. Variant fields are in canonical key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlFrame {
    /// First frame from the child: its certificate chain, and on the control stream
    /// its site (absent when none) and the addresses where it listens (absent when
    /// none), which the parent passes on to its siblings.
    Hello {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        site: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        addrs: Vec<String>,
        chain: Vec<Envelope>,
    },
    /// The answer to a good `Hello`: on the control stream the child's renewed chain;
    /// on a sibling stream the answering sibling's own chain. `time` is the sender's
    /// clock (Unix ms), so that the other side knows how far its own is off.
    Welcome { time: u64, chain: Vec<Envelope> },
    /// The connection is refused, and why; `time` is the sender's clock (Unix ms), so
    /// that a node refused for an expired certificate learns whether its clock is to
    /// blame. The sender closes the stream.
    Refused { time: u64, reason: String },
    /// A signed manifest the parent makes available (canonical envelope bytes).
    Offer {
        #[serde(with = "serde_bytes")]
        manifest: Vec<u8>,
    },
    /// The parent holds these chunks of an update: ranges `[start, end)` of its
    /// distinct-chunk list.
    Have {
        ranges: Vec<(u32, u32)>,
        update: Hash,
    },
    /// The live rule sets of the parent's path, root node's first, the parent's own
    /// last (PROTOCOL.md §14.6): canonical envelope bytes, at most one per issuer.
    Rules { sets: Vec<serde_bytes::ByteBuf> },
    /// From the child: its newest signed report (PROTOCOL.md §15), canonical envelope
    /// bytes.
    Report { report: serde_bytes::ByteBuf },
    /// From the parent: the receiver's connected siblings at its site, and where they
    /// listen (PROTOCOL.md §13.1).
    Siblings { peers: Vec<SiblingAddr> },
    /// Either way, every few seconds: the sender is alive, and its clock (Unix ms)
    /// says `time` (PROTOCOL.md §12.1).
    Ping { time: u64 },
}

impl ControlFrame {
    /// The frame that carries the engine's `msg`; `addrs` gives a sibling's addresses.
    pub fn of(msg: crate::engine::Control, addrs: impl Fn(&PublicKey) -> Vec<String>) -> Self {
        use crate::engine::Control;
        use serde_bytes::ByteBuf;
        match msg {
            Control::Offer { manifest } => ControlFrame::Offer {
                manifest: manifest.to_vec(),
            },
            Control::Have { update, ranges } => ControlFrame::Have { update, ranges },
            Control::Ping { time } => ControlFrame::Ping { time },
            Control::Rules { sets } => ControlFrame::Rules {
                sets: sets.iter().map(|b| ByteBuf::from(b.to_vec())).collect(),
            },
            Control::Report { report } => ControlFrame::Report {
                report: ByteBuf::from(report.to_vec()),
            },
            Control::Siblings { peers } => ControlFrame::Siblings {
                peers: peers
                    .into_iter()
                    .map(|node| SiblingAddr {
                        addrs: addrs(&node),
                        node,
                    })
                    .collect(),
            },
        }
    }
}

/// A sibling and its addresses. Fields in canonical key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiblingAddr {
    pub node: PublicKey,
    pub addrs: Vec<String>,
}

/// A request on a chunk stream. Fields in canonical key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRequest {
    /// An update the requester holds whole: chunks may come as deltas against it
    /// (PROTOCOL.md §13.2). Absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Hash>,
    pub count: u32,
    pub first: u32,
    /// Send the chunks even if a sibling of the requester has them (absent when false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub direct: bool,
    pub update: Hash,
}

/// How each chunk of a span is answered: this byte, a u32 length, then the bytes.
pub const CHUNK_DATA: u8 = 0;
/// The server does not hold this chunk (length 0 follows).
pub const CHUNK_MISSING: u8 = 1;
/// The peer may not fetch from this node; the server closes the stream after it
/// (length and a UTF-8 reason follow).
pub const CHUNK_REFUSED: u8 = 2;
/// A sibling of the requester at its site was sent this chunk: ask it there (the
/// sibling's 32-byte node key follows).
pub const CHUNK_ELSEWHERE: u8 = 3;
/// The chunk as a delta against the request's base (`content::delta`): fewer bytes
/// than the chunk follow.
pub const CHUNK_DELTA: u8 = 4;

/// Why a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer sent a frame of {len} bytes, over the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("the peer sent a bad message: {0}")]
    Wire(#[from] WireError),
    #[error("the peer broke the protocol: {0}")]
    Violation(String),
}

/// Writes one frame.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), ProtoError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let bytes = wire::encode(msg);
    let len = u32::try_from(bytes.len()).map_err(|_| ProtoError::TooLarge {
        len: bytes.len(),
        limit: u32::MAX as usize,
    })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame of at most `limit` bytes. `Ok(None)` on a clean end of stream.
pub async fn read_frame<R, T>(
    r: &mut R,
    limit: usize,
    what: &'static str,
) -> Result<Option<T>, ProtoError>
where
    R: AsyncRead + Unpin,
    T: Serialize + DeserializeOwned,
{
    Ok(read_frame_sized(r, limit, what).await?.map(|(msg, _)| msg))
}

/// [`read_frame`], also returning the frame's length in bytes.
pub async fn read_frame_sized<R, T>(
    r: &mut R,
    limit: usize,
    what: &'static str,
) -> Result<Option<(T, usize)>, ProtoError>
where
    R: AsyncRead + Unpin,
    T: Serialize + DeserializeOwned,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(ProtoError::TooLarge { len, limit });
    }
    // Read in steps, so that a peer that announces a large frame and sends little
    // makes this node hold only what it sent.
    let mut buf = Vec::with_capacity(len.min(READ_STEP));
    while buf.len() < len {
        let step = (len - buf.len()).min(READ_STEP);
        let got = (&mut *r).take(step as u64).read_to_end(&mut buf).await?;
        if got < step {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
    Ok(Some((wire::decode_canonical(&buf, limit, what)?, len)))
}

/// Bytes in the header of one chunk answer.
pub const CHUNK_HEADER_LEN: usize = 5;

/// The header of one chunk answer.
pub fn chunk_header(kind: u8, len: u32) -> [u8; CHUNK_HEADER_LEN] {
    let mut h = [0u8; CHUNK_HEADER_LEN];
    h[0] = kind;
    h[1..].copy_from_slice(&len.to_be_bytes());
    h
}

/// Writes the header of one chunk answer.
pub async fn write_chunk_header<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    len: u32,
) -> Result<(), ProtoError> {
    w.write_all(&chunk_header(kind, len)).await?;
    Ok(())
}

/// Reads the header of one chunk answer, checking the kind and the length bound.
pub async fn read_chunk_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<(u8, u32), ProtoError> {
    let mut h = [0u8; CHUNK_HEADER_LEN];
    r.read_exact(&mut h).await?;
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    match h[0] {
        CHUNK_DATA if len <= MAX_CHUNK_LEN => Ok((CHUNK_DATA, len)),
        CHUNK_MISSING if len == 0 => Ok((CHUNK_MISSING, 0)),
        CHUNK_REFUSED if len <= 1024 => Ok((CHUNK_REFUSED, len)),
        CHUNK_ELSEWHERE if len == 32 => Ok((CHUNK_ELSEWHERE, len)),
        CHUNK_DELTA if len < MAX_CHUNK_LEN => Ok((CHUNK_DELTA, len)),
        kind => Err(ProtoError::Violation(format!(
            "chunk answer of kind {kind} with length {len}"
        ))),
    }
}

impl ChunkRequest {
    /// Checks the request's own bounds (not whether the chunks exist).
    pub fn check(&self) -> Result<(), ProtoError> {
        if self.count == 0 || self.count > MAX_SPAN || self.first.checked_add(self.count).is_none()
        {
            return Err(ProtoError::Violation(format!(
                "a request for {} chunks from {}",
                self.count, self.first
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use proptest::prelude::*;

    #[test]
    fn frames_round_trip() {
        let msg = ControlFrame::Have {
            update: Hash::of(b"u"),
            ranges: vec![(0, 3), (7, 9)],
        };
        let mut buf = Vec::new();
        block_on(write_frame(&mut buf, &msg)).expect("write");
        let mut r = futures::io::Cursor::new(buf);
        let back: Option<ControlFrame> =
            block_on(read_frame(&mut r, MAX_CONTROL_FRAME, "control frame")).expect("read");
        assert_eq!(back, Some(msg));
        let end: Option<ControlFrame> =
            block_on(read_frame(&mut r, MAX_CONTROL_FRAME, "control frame")).expect("eof");
        assert_eq!(end, None);
    }

    #[test]
    fn oversized_frames_are_refused_before_reading() {
        let mut r = futures::io::Cursor::new(vec![0xff, 0xff, 0xff, 0xff]);
        let err = block_on(read_frame::<_, ChunkRequest>(
            &mut r,
            MAX_REQUEST_FRAME,
            "request",
        ))
        .unwrap_err();
        assert!(matches!(err, ProtoError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn bad_chunk_headers_and_requests_are_refused() {
        let mut big = vec![CHUNK_DATA];
        big.extend_from_slice(&(MAX_CHUNK_LEN + 1).to_be_bytes());
        assert!(block_on(read_chunk_header(&mut futures::io::Cursor::new(big))).is_err());
        assert!(
            block_on(read_chunk_header(&mut futures::io::Cursor::new(vec![
                9, 0, 0, 0, 0
            ])))
            .is_err()
        );
        let req = |first, count| ChunkRequest {
            base: None,
            count,
            first,
            direct: false,
            update: Hash::of(b""),
        };
        assert!(req(0, 0).check().is_err());
        assert!(req(0, MAX_SPAN + 1).check().is_err());
        assert!(req(u32::MAX, 2).check().is_err());
        assert!(req(5, MAX_SPAN).check().is_ok());
    }

    proptest! {
        #[test]
        fn garbage_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut r = futures::io::Cursor::new(bytes.clone());
            let _ = block_on(read_frame::<_, ControlFrame>(&mut r, MAX_CONTROL_FRAME, "control frame"));
            let mut r = futures::io::Cursor::new(bytes.clone());
            let _ = block_on(read_frame::<_, JoinReply>(&mut r, MAX_JOIN_FRAME, "join reply"));
            let mut r = futures::io::Cursor::new(bytes);
            let _ = block_on(read_frame::<_, ChunkRequest>(&mut r, MAX_REQUEST_FRAME, "chunk request"));
        }
    }
}
