//! Fuzz target: the join stream (PROTOCOL.md §11): the parent reads a `JoinRequest`,
//! the joining node a `JoinReply`, both with `net::proto::read_frame` under
//! `MAX_JOIN_FRAME`; an accepted reply's root key is compared with the token's
//! fingerprint and its chain verified, as `arbor init --join` does. The same bytes are
//! read from both sides. Every frame read must write back to its bytes.
#![no_main]

use arbor::net::proto::{JoinReply, JoinRequest, MAX_JOIN_FRAME};
use arbor::trust::member::{JoinToken, root_fingerprint, verify_chain};
use arbor_fuzz::{NOW, read_frames, root, show_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for request in read_frames::<JoinRequest>(data, MAX_JOIN_FRAME, "join request") {
        let _ = JoinToken::secret_hash(&request.secret);
    }
    let pinned = root_fingerprint(&root().public());
    for reply in read_frames::<JoinReply>(data, MAX_JOIN_FRAME, "join reply") {
        match reply {
            JoinReply::Accepted { root, chain, .. } => {
                show_key(&root);
                if root_fingerprint(&root) == pinned
                    && let Ok(members) = verify_chain(&chain, &root, NOW)
                {
                    assert_eq!(members.len(), chain.len());
                }
            }
            JoinReply::Refused { reason } => {
                let _ = arbor::report::sanitize_reason(&reason);
            }
        }
    }
});
