//! Fuzz target: chunk streams (PROTOCOL.md §13), from both ends. The server reads
//! `ChunkRequest` frames with `net::proto::read_frame` under `MAX_REQUEST_FRAME` and
//! checks each with `ChunkRequest::check`; the requester reads the answers to a request
//! for four chunks with `net::proto::read_chunk_header` and the payload each header
//! announces, as the fetch loop does: a whole chunk checked against its hash, a delta
//! rebuilt against its base, a missing chunk, a sibling to ask instead, a refusal. The
//! same bytes are read from both ends. Every request read must write back to its bytes.
#![no_main]

use arbor::content::Hash;
use arbor::net::proto::{
    self, CHUNK_DATA, CHUNK_DELTA, CHUNK_ELSEWHERE, CHUNK_MISSING, ChunkRequest, MAX_REQUEST_FRAME,
    MAX_SPAN,
};
use arbor::trust::PublicKey;
use arbor_fuzz::{expected_chunks, read_frames, rebuild, show_key};
use futures::AsyncReadExt;
use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for request in read_frames::<ChunkRequest>(data, MAX_REQUEST_FRAME, "chunk request") {
        if request.check().is_ok() {
            assert!(request.count >= 1 && request.count <= MAX_SPAN);
            assert!(request.first.checked_add(request.count).is_some());
        }
    }
    let _ = block_on(answers(data));
});

/// The requester's side: one answer per expected chunk, until one breaks the protocol.
async fn answers(data: &[u8]) -> Result<(), proto::ProtoError> {
    let mut s = futures::io::Cursor::new(data);
    for (hash, chunk) in expected_chunks() {
        let len = chunk.len() as u32;
        let (kind, n) = proto::read_chunk_header(&mut s).await?;
        match kind {
            CHUNK_DATA => {
                if n != len {
                    return Ok(());
                }
                let mut bytes = vec![0u8; n as usize];
                s.read_exact(&mut bytes).await?;
                let _ = Hash::of(&bytes) == *hash;
            }
            CHUNK_DELTA => {
                if n >= len {
                    return Ok(());
                }
                let mut bytes = vec![0u8; n as usize];
                s.read_exact(&mut bytes).await?;
                if let Some(built) = rebuild(&bytes, len) {
                    let _ = Hash::of(&built) == *hash;
                }
            }
            CHUNK_MISSING => {}
            CHUNK_ELSEWHERE => {
                let mut key = [0u8; 32];
                s.read_exact(&mut key).await?;
                show_key(&PublicKey(key));
            }
            _ => {
                let mut reason = vec![0u8; n as usize];
                s.read_exact(&mut reason).await?;
                let _ = String::from_utf8_lossy(&reason);
                return Ok(());
            }
        }
    }
    Ok(())
}
