//! What this node's own store says after the fact: chunks it lost, and a fault that
//! keeps it from writing.
//!
//! - A chunk is lost when the driver quarantines it (its stored bytes were found
//!   damaged when read) or when a write failure took it before it was committed. It is
//!   cleared in every update that uses it, so that the node serves it no more, fetches
//!   it again (from its parent or a sibling, like any chunk it lacks) and announces it
//!   once stored again.
//! - While the store has a fault (a full disk, say) the node fetches nothing new, and
//!   its report shows every update it has not completed as failed, with the fault's
//!   reason. It goes on serving what it holds. When the driver clears the fault,
//!   fetching resumes.

use super::*;
use std::collections::HashSet;

impl Engine {
    /// The store no longer holds these chunks: each is cleared in every update that
    /// uses it and fetched again.
    pub fn handle_local_lost(&mut self, chunks: &[Hash], now: Millis) {
        let lost: HashSet<&Hash> = chunks.iter().collect();
        let mut cleared = false;
        for u in self.updates.values_mut() {
            for (i, (hash, _)) in u.chunks.iter().enumerate() {
                let i = i as u32;
                if lost.contains(hash) && u.have.clear(i) {
                    // Never announced now: children are told once it is stored again.
                    u.unannounced.clear(i);
                    u.completed = false;
                    cleared = true;
                }
            }
        }
        if cleared {
            self.installer_wake(now);
            self.changed(now, true);
            self.schedule(now);
        }
    }

    /// Sets or clears the store's fault: while set, nothing new is fetched and the
    /// updates not held whole are reported failed with `fault` as the reason.
    pub fn set_store_fault(&mut self, fault: Option<String>, now: Millis) {
        let fault = fault.map(|f| report::sanitize_reason(&f));
        if self.store_fault == fault {
            return;
        }
        self.store_fault = fault;
        self.changed(now, true);
        self.schedule(now);
    }

    /// Why the store cannot be written, while it cannot.
    pub fn store_fault(&self) -> Option<&str> {
        self.store_fault.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::manifest::{ChunkRef, FileEntry, Manifest};
    use crate::rules::{ALL, Approval, FULL_WAVE, Rules, SignedRules};

    fn secret(i: u8) -> SecretKey {
        SecretKey::from_seed([i; 32])
    }

    /// An update of `n` distinct chunks of 1 KiB, chunks 0 and 2 also used by `other`.
    fn update(root: &SecretKey, n: u32, seq: u64) -> Arc<SignedManifest> {
        let chunks: Vec<ChunkRef> = (0..n)
            .map(|i| {
                let shared = i == 0 || i == 2;
                ChunkRef(
                    Hash::of(
                        &[u32::from(!shared) * (seq as u32), i]
                            .map(u32::to_le_bytes)
                            .concat(),
                    ),
                    1024,
                )
            })
            .collect();
        let size = u64::from(n) * 1024;
        let m = Manifest {
            id: "m".into(),
            files: vec![FileEntry {
                mode: 0o644,
                path: "f".into(),
                size,
                chunks,
            }],
            tenant: "t".into(),
            created: 1_767_225_600,
            version: seq.to_string(),
            category: "c".into(),
            total_size: size,
            description: None,
            post_install: None,
        };
        Arc::new(SignedManifest::sign(root, seq, m).expect("sign"))
    }

    /// A member under a root that approved `updates` for everyone; it holds every
    /// chunk of them and is connected to its parent and one child. Returns it drained.
    fn member_holding(updates: &[Arc<SignedManifest>]) -> (Engine, PeerId, PeerId) {
        let (root, me, child) = (secret(1), secret(2), secret(3).public());
        let mut rules = Rules::new(root.public(), 0);
        for u in updates {
            rules
                .approve(
                    u.id,
                    ALL,
                    Approval {
                        subtree: true,
                        ..Approval::wave(FULL_WAVE)
                    },
                )
                .expect("approve");
        }
        let signed = SignedRules::sign(&root, 1, 4_000_000_000, rules).expect("sign");
        let mut e = Engine::new(
            Role::Member {
                parent: root.public(),
            },
            root.public(),
            me.clone(),
            vec![root.public(), me.public()],
            Config::default(),
            1,
        );
        e.add_child(child, false, 0);
        e.handle_connected(root.public(), 0);
        e.handle_connected(child, 0);
        e.handle_message(
            root.public(),
            Control::Rules {
                sets: vec![signed.bytes.clone().into()],
            },
            0,
        );
        for u in updates {
            e.handle_message(
                root.public(),
                Control::Offer {
                    manifest: u.bytes.clone(),
                },
                0,
            );
            e.handle_message(
                root.public(),
                Control::Have {
                    update: u.id,
                    ranges: vec![(0, u.chunks.len() as u32)],
                },
                0,
            );
            e.handle_local_have(u.id, &vec![true; u.chunks.len()], 0);
        }
        while e.poll_output().is_some() {}
        (e, root.public(), child)
    }

    fn outputs(e: &mut Engine) -> Vec<Output> {
        std::iter::from_fn(|| e.poll_output()).collect()
    }

    fn fetches(out: &[Output]) -> Vec<(Hash, u32, u32)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Fetch {
                    update,
                    first,
                    count,
                    ..
                } => Some((*update, *first, *count)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_lost_chunk_is_cleared_everywhere_fetched_again_and_announced_once_stored() {
        let root = secret(1);
        let (a, b) = (update(&root, 4, 1), update(&root, 4, 2));
        let (mut e, _, child) = member_holding(&[a.clone(), b.clone()]);
        assert!(e.is_complete(&a.id) && e.is_complete(&b.id));
        let lost = a.chunks[2].0;
        e.handle_local_lost(&[lost], 10);
        assert!(!e.is_complete(&a.id) && !e.is_complete(&b.id));
        // Not served any more.
        let served = e.serve(&child, &a.id, 2..3, true);
        assert_eq!(served, vec![Served::Missing]);
        // Fetched again: chunk 2 of both updates (the same chunk, used by both).
        let out = outputs(&mut e);
        let mut asked = fetches(&out);
        asked.sort();
        let mut want = vec![(a.id, 2, 1), (b.id, 2, 1)];
        want.sort();
        assert_eq!(asked, want);
        // Stored again: complete, and announced to the child.
        let Some(Output::Fetch { id, .. }) = out
            .iter()
            .find(|o| matches!(o, Output::Fetch { update, .. } if *update == a.id))
        else {
            panic!("no fetch of {}", a.id);
        };
        e.handle_chunk(*id, 2, ChunkVerdict::Stored { wire: 1024 }, 20);
        assert!(e.is_complete(&a.id));
        let told = outputs(&mut e).into_iter().any(|o| {
            matches!(o, Output::Send { to, msg: Control::Have { update, ranges } }
                if to == child && update == a.id && ranges == vec![(2, 3)])
        });
        assert!(told, "the child was not told of the chunk stored again");
        // A chunk no update uses changes nothing.
        e.handle_local_lost(&[Hash::of(b"unused")], 30);
        assert!(fetches(&outputs(&mut e)).is_empty());
    }

    #[test]
    fn a_store_fault_stops_fetching_and_reports_the_incomplete_updates_failed() {
        let root = secret(1);
        let (a, b) = (update(&root, 4, 1), update(&root, 4, 2));
        let (mut e, _, _) = member_holding(&[a.clone(), b.clone()]);
        let why = "cannot write packs/00000000.pack: No space left on device (os error 28)";
        e.set_store_fault(Some(why.into()), 10);
        assert_eq!(e.store_fault(), Some(why));
        e.handle_local_lost(&[b.chunks[1].0], 11);
        assert!(
            fetches(&outputs(&mut e)).is_empty(),
            "fetched while faulted"
        );
        let states = e.own_states();
        let state_of = |id: &Hash| {
            states
                .iter()
                .find(|s| s.update == *id)
                .map(|s| (s.state, s.reason.clone()))
        };
        assert_eq!(state_of(&a.id), Some((State::Downloaded, None)));
        assert_eq!(
            state_of(&b.id),
            Some((State::Failed, Some(why.to_string())))
        );
        e.set_store_fault(None, 20);
        assert_eq!(fetches(&outputs(&mut e)), vec![(b.id, 1, 1)]);
        assert_eq!(
            e.own_states()
                .iter()
                .find(|s| s.update == b.id)
                .map(|s| s.state),
            Some(State::Downloading)
        );
    }
}
