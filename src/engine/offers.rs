//! Offers and announcements: updates this node takes up and offers its children, and the
//! chunks it tells them it holds.

use super::*;

impl Engine {
    /// Adds an update the store already holds, at start-up or after a publish: `have`
    /// marks which of its distinct chunks (`Manifest::distinct_chunk_list` order) are
    /// stored.
    pub fn add_local_update(&mut self, manifest: Arc<SignedManifest>, have: &[bool], now: Millis) {
        let id = manifest.id;
        if !self.updates.contains_key(&id) {
            self.order.push(id);
            self.updates.insert(id, Update::new(manifest, false));
            self.offer_to_children(id);
        }
        self.handle_local_have(id, have, now);
    }

    /// Offers a taken-up update to every connected child it is available to.
    pub(super) fn offer_to_children(&mut self, id: Hash) {
        for child in self.connected_children_with(&id) {
            self.offer(child, id);
        }
    }

    /// Sends `child` the offer of `id` and the chunks held of it.
    pub(super) fn offer(&mut self, child: PeerId, id: Hash) {
        let Some(u) = self.updates.get(&id) else {
            return;
        };
        self.out.push_back(Output::Send {
            to: child,
            msg: Control::Offer {
                manifest: u.manifest.bytes.clone(),
            },
        });
        let ranges = u.have.ranges();
        if !ranges.is_empty() {
            self.out.push_back(Output::Send {
                to: child,
                msg: Control::Have { update: id, ranges },
            });
        }
    }

    /// The driver reports which chunks of `update` its store holds (after
    /// [`Output::StoreManifest`], or after finding chunks shared with other updates).
    pub fn handle_local_have(&mut self, update: Hash, have: &[bool], now: Millis) {
        let Some(u) = self.updates.get_mut(&update) else {
            return;
        };
        let taken_up = std::mem::take(&mut u.awaiting_local);
        let mut stored = false;
        for (i, _) in have.iter().enumerate().filter(|(_, h)| **h) {
            if u.have.set(i as u32) {
                u.unannounced.set(i as u32);
                stored = true;
            }
        }
        if taken_up {
            self.tell_siblings(update);
        }
        let done = self.check_complete(update);
        if stored {
            self.stored_new(done, now);
        }
        self.installer_wake(now);
        self.changed(now, true);
        self.schedule(now);
    }

    pub(super) fn handle_offer(&mut self, peer: PeerId, bytes: Arc<[u8]>, now: Millis) {
        let signed = match SignedManifest::open_shared(&bytes, &self.root_key, now / 1000) {
            Ok(m) => m,
            Err(e) => {
                let why = match (&e, self.clock_note()) {
                    (crate::trust::TrustError::Expired { .. }, Some(note)) => {
                        format!("offered a manifest that is refused: {e} ({note})")
                    }
                    _ => format!("offered a manifest that is refused: {e}"),
                };
                self.handle_offence(peer, Offence::BadData, &why, now);
                return;
            }
        };
        let id = signed.id;
        if self.updates.contains_key(&id) {
            return;
        }
        let available = self.avail.is_available(&id);
        if !available {
            let withheld = self.updates.values().filter(|u| !u.stored).count();
            if withheld >= MAX_WITHHELD {
                self.handle_offence(
                    peer,
                    Offence::Flood,
                    "offered too many updates not available to this node",
                    now,
                );
                return;
            }
            self.out
                .push_back(Output::Event(Event::OfferWithheld { peer, update: id }));
        }
        self.order.push(id);
        let mut update = Update::new(signed.clone(), true);
        update.stored = available;
        self.updates.insert(id, update);
        if available {
            self.out
                .push_back(Output::StoreManifest { manifest: signed });
            self.offer_to_children(id);
        }
    }

    /// Chunks were stored: they are announced now if the last announcement is old
    /// enough or an update is `complete`, else when it is.
    pub(super) fn stored_new(&mut self, complete: bool, now: Millis) {
        // A node nobody listens to (a client without siblings) has nothing to send: a
        // child or sibling that connects later is told all it holds then.
        let listened_to =
            self.children.values().any(|up| *up) || self.connected_siblings().next().is_some();
        if !listened_to {
            return;
        }
        let interval = self.config.announce_interval;
        let due = *self.announce_due.get_or_insert_with(|| {
            self.last_announce
                .map_or(now, |last| (last + interval).max(now))
        });
        if complete || due <= now {
            self.announce(now);
        }
    }

    /// Tells connected children (and siblings) about chunks stored since they were
    /// last told.
    pub(super) fn announce(&mut self, now: Millis) {
        self.announce_due = None;
        self.last_announce = Some(now);
        for i in 0..self.order.len() {
            let id = self.order[i];
            if self
                .updates
                .get(&id)
                .is_none_or(|u| u.unannounced.count() == 0)
            {
                continue;
            }
            // Only children it is available to: the others were never offered it, and
            // one that gains it later is offered it with every range held then.
            let to = self.connected_children_with(&id);
            let Some(u) = self.updates.get_mut(&id) else {
                continue;
            };
            let ranges = u.unannounced.ranges();
            u.unannounced.clear_all();
            let siblings: Vec<PeerId> = self.connected_siblings().collect();
            for child in to.iter().chain(&siblings) {
                self.out.push_back(Output::Send {
                    to: *child,
                    msg: Control::Have {
                        update: id,
                        ranges: ranges.clone(),
                    },
                });
            }
        }
    }
}
