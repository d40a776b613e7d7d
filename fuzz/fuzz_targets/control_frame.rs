//! Fuzz target: the control stream between a parent and a child (PROTOCOL.md §12), read
//! frame by frame with `net::proto::read_frame` under `MAX_CONTROL_FRAME`, each frame
//! handed to what its receiver checks (chains, offered manifests, rule sets, reports,
//! sibling addresses). Every frame read must write back to the bytes it came from.
#![no_main]

use arbor::net::proto::{ControlFrame, MAX_CONTROL_FRAME};
use arbor_fuzz::{read_frames, receive_control};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for frame in read_frames::<ControlFrame>(data, MAX_CONTROL_FRAME, "control frame") {
        receive_control(&frame);
    }
});
