//! Fuzz target: signed manifests (PROTOCOL.md §5), through `SignedManifest::open`, the
//! one way a receiver accepts an offered manifest. Each input is tried twice: as the
//! envelope bytes of an offer, and as a manifest body the root signed (so that the
//! body's decoding and `Manifest::validate` are reached past the signature). What opens
//! must re-encode to its bytes, and the root must be able to sign it again to the very
//! same bytes (signing checks what opening checks). Delta planning, which reads two
//! opened manifests, runs on it too.
#![no_main]

use arbor::content::Hash;
use arbor::content::delta::{MAX_REFERENCE_BYTES, MAX_REFERENCES, Plan};
use arbor::trust::{Envelope, SignedManifest, TAG_MANIFEST};
use arbor::wire;
use arbor_fuzz::{NOW, assert_canonical, root, vector_manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let root = root();
    if let Ok(m) = SignedManifest::open(data, &root.public(), NOW) {
        assert_eq!(&*m.bytes, data);
        assert_eq!(m.id, Hash::of(data));
        check(&m);
    }
    let envelope = Envelope::sign(&root, TAG_MANIFEST, 1, None, data.to_vec());
    let bytes = wire::encode(&envelope);
    let Ok(m) = SignedManifest::open(&bytes, &root.public(), NOW) else {
        return;
    };
    assert_canonical(&m.manifest, data);
    let again = match SignedManifest::sign(&root, 1, m.manifest.clone()) {
        Ok(again) => again,
        Err(e) => panic!("an opened manifest cannot be signed again: {e}"),
    };
    assert_eq!(again, m, "signing an opened manifest gives other bytes");
    check(&m);
});

/// What holds of every opened manifest.
fn check(m: &SignedManifest) {
    let distinct = m.manifest.distinct_chunk_list();
    assert_eq!(m.chunks.len(), distinct.len());
    let (count, bytes) = m.manifest.distinct_chunks();
    assert_eq!(count, distinct.len());
    assert!(bytes <= m.manifest.total_size);
    let plan = Plan::new(&m.manifest, &m.manifest);
    assert_eq!(
        plan.planned(),
        0,
        "an update has no chunks its own base lacks"
    );
    // Against the vector's manifest, which has files of the same paths, both ways.
    let vector = vector_manifest();
    for (update, base) in [(&m.manifest, vector), (vector, &m.manifest)] {
        let plan = Plan::new(update, base);
        let base_chunks = base.distinct_chunk_list();
        for i in 0..update.distinct_chunk_list().len() as u32 {
            let refs = plan.references(i);
            assert!(refs.len() <= MAX_REFERENCES);
            assert!(refs.iter().all(|&r| (r as usize) < base_chunks.len()));
            let bytes: u64 = refs
                .iter()
                .map(|&r| u64::from(base_chunks[r as usize].size()))
                .sum();
            assert!(bytes <= MAX_REFERENCE_BYTES as u64);
            if let Some(file) = plan.file_of(i) {
                assert!((file as usize) < update.files.len());
            }
        }
    }
}
