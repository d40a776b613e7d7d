//! A process-wide memo of signed objects already checked, off unless turned on.
//!
//! The simulator runs thousands of engines in one process, and each of them checks
//! the very same signed manifest and rule sets on its own: the same ed25519
//! verification, and the same parse of a manifest of thousands of chunks, a hundred
//! thousand times over. With the memo on, a signature checked once (or made here) is
//! known good by its exact bytes (signer, signature and signed bytes, hashed), and a
//! manifest or rule set opened once is shared by every engine that opens the very
//! same bytes (one copy in memory, not one per engine). Every other check
//! (tag, signer, expiry, canonical encoding of the envelope) still runs on every open,
//! so the memo changes the cost of verification, never its verdict. A daemon runs one
//! engine and leaves it off.

use super::PublicKey;
use crate::content::Hash;
use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Past this many remembered signatures the memo starts over, so that unique objects
/// (reports) cannot grow it without bound.
const MAX_SIGNATURES: usize = 1 << 20;
/// Past this many opened objects (manifests and rule sets) the memo starts over. A
/// fleet has a few manifests and a few rule sets per issuer.
const MAX_OPENED: usize = 1 << 16;

static ENABLED: AtomicBool = AtomicBool::new(false);

#[derive(Default)]
struct Memo {
    signatures: Mutex<HashSet<[u8; 32]>>,
    /// Objects opened from bytes (by blake3 of the bytes), of whatever type.
    opened: Mutex<HashMap<Hash, Arc<dyn Any + Send + Sync>>>,
}

fn memo() -> &'static Memo {
    static MEMO: OnceLock<Memo> = OnceLock::new();
    MEMO.get_or_init(Memo::default)
}

/// Turns the memo on for the rest of the process.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The memo key of one signature over one message by one signer.
pub(super) fn signature_key(signer: &PublicKey, sig: &[u8; 64], signed: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&signer.0);
    h.update(sig);
    h.update(signed);
    *h.finalize().as_bytes()
}

pub(super) fn signature_known(key: &[u8; 32]) -> bool {
    memo().signatures.lock().is_ok_and(|set| set.contains(key))
}

pub(super) fn remember_signature(key: [u8; 32]) {
    if let Ok(mut set) = memo().signatures.lock() {
        if set.len() >= MAX_SIGNATURES {
            set.clear();
        }
        set.insert(key);
    }
}

/// The object of type `T` opened earlier from the bytes with blake3 `id`, if any.
pub(crate) fn opened<T: Any + Send + Sync>(id: &Hash) -> Option<Arc<T>> {
    let map = memo().opened.lock().ok()?;
    map.get(id)?.clone().downcast::<T>().ok()
}

/// Remembers `object`, opened from the bytes with blake3 `id`, for the next opener.
pub(crate) fn remember_opened<T: Any + Send + Sync>(id: Hash, object: Arc<T>) {
    if let Ok(mut map) = memo().opened.lock() {
        if map.len() >= MAX_OPENED {
            map.clear();
        }
        map.insert(id, object);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Envelope, SecretKey, SignedManifest, TAG_MANIFEST, TrustError};
    use super::*;
    use crate::content::manifest::tests::two_files;
    use crate::wire;

    #[test]
    fn the_memo_shares_work_and_never_changes_a_verdict() {
        enable();
        let root = SecretKey::from_seed([31; 32]);
        let signed = SignedManifest::sign(&root, 1, two_files()).expect("valid");
        let first = SignedManifest::open_shared(&signed.bytes, &root.public(), 0).expect("opens");
        let second = SignedManifest::open_shared(&signed.bytes, &root.public(), 0).expect("opens");
        assert!(Arc::ptr_eq(&first, &second), "opened once, shared");
        // Known bytes against another root key are still refused.
        let other = SecretKey::from_seed([32; 32]).public();
        assert!(matches!(
            SignedManifest::open_shared(&signed.bytes, &other, 0),
            Err(TrustError::UnknownSigner { .. })
        ));
        // A signature made (so remembered) and then altered still fails.
        let mut env = Envelope::sign(
            &root,
            TAG_MANIFEST,
            2,
            Some(100),
            wire::encode(&two_files()),
        );
        assert_eq!(env.verify(TAG_MANIFEST, &root.public(), 99), Ok(()));
        // The expiry is checked on every verify, remembered or not.
        assert!(matches!(
            env.verify(
                TAG_MANIFEST,
                &root.public(),
                100 + crate::trust::CLOCK_TOLERANCE
            ),
            Err(TrustError::Expired { .. })
        ));
        env.sig[0] ^= 1;
        assert_eq!(
            env.verify(TAG_MANIFEST, &root.public(), 0),
            Err(TrustError::BadSignature)
        );
        let bytes = wire::encode(&env);
        assert!(SignedManifest::open_shared(&bytes, &root.public(), 0).is_err());
        // An expired manifest opened before is refused once its time has come.
        let env = Envelope::sign(
            &root,
            TAG_MANIFEST,
            3,
            Some(100),
            wire::encode(&two_files()),
        );
        let bytes = wire::encode(&env);
        assert!(SignedManifest::open_shared(&bytes, &root.public(), 50).is_ok());
        assert!(matches!(
            SignedManifest::open_shared(
                &bytes,
                &root.public(),
                100 + crate::trust::CLOCK_TOLERANCE
            ),
            Err(TrustError::Expired { .. })
        ));
    }
}
