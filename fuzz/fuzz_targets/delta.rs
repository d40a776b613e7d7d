//! Fuzz target: chunk deltas (PROTOCOL.md §13.2). The input is a chunk length (u32,
//! big-endian, at most `MAX_CHUNK_LEN`) and a delta payload, rebuilt against a base of
//! ten chunks with `Delta::parse` and `Delta::apply` as the requester does; whatever
//! parses must apply and build exactly that length. The same payload, cut in two, also
//! goes through the sender's `delta::encode` (the second half against the first and a
//! base chunk), and any delta it writes must be smaller than its target and rebuild it
//! exactly.
#![no_main]

use arbor::content::delta::{self, Delta, Outline, Reference};
use arbor::content::manifest::MAX_CHUNK_LEN;
use arbor_fuzz::{base_chunks, rebuild};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

fuzz_target!(|data: &[u8]| {
    let Some((len, payload)) = data.split_first_chunk::<4>() else {
        return;
    };
    let len = u32::from_be_bytes(*len) % (MAX_CHUNK_LEN + 1);
    let _ = rebuild(payload, len);

    let (reference, target) = payload.split_at(payload.len() / 2);
    let base = &base_chunks()[3];
    let outlines = [Outline::of(reference), Outline::of(base)];
    let refs = [
        Reference {
            index: 0,
            data: reference,
            outline: &outlines[0],
        },
        Reference {
            index: 1,
            data: base,
            outline: &outlines[1],
        },
    ];
    let Some(encoded) = delta::encode(target, &refs) else {
        return;
    };
    assert!(
        encoded.len() < target.len(),
        "a delta is no smaller than its chunk"
    );
    let lens = |i: u32| refs.get(i as usize).map(|r| r.data.len() as u32);
    let parsed = match Delta::parse(&encoded, target.len() as u32, lens) {
        Ok(parsed) => parsed,
        Err(e) => panic!("the sender wrote a delta its receiver refuses: {e}"),
    };
    let named: HashMap<u32, Vec<u8>> = parsed
        .bases()
        .iter()
        .map(|&i| (i, refs[i as usize].data.to_vec()))
        .collect();
    assert_eq!(
        parsed.apply(&named).as_deref(),
        Ok(target),
        "a delta rebuilds other bytes than its chunk"
    );
});
