//! Fuzz target: the stream between two siblings at one site (PROTOCOL.md §13.1): the
//! same frames as the control stream, read with `net::proto::read_frame` under the
//! smaller `MAX_JOIN_FRAME` (a sibling's `Hello` and `Welcome`, then its `Have`s), each
//! handed to what its receiver checks. Every frame read must write back to its bytes.
#![no_main]

use arbor::net::proto::{ControlFrame, MAX_JOIN_FRAME};
use arbor_fuzz::{read_frames, receive_control};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for frame in read_frames::<ControlFrame>(data, MAX_JOIN_FRAME, "sibling frame") {
        receive_control(&frame);
    }
});
