//! Rules, as the engine applies them: this node's own rule set, its path's rule sets
//! from the parent, what they make available here and to each child, and sending them on
//! (PROTOCOL.md §14).

use super::*;

impl Engine {
    /// Reloads a rule set the driver stored earlier (an ancestor's or this node's own),
    /// at start-up ([`Engine::resume`]). An expired one still holds its issuer's version.
    pub(super) fn restore_rules(&mut self, bytes: &[u8], now: Millis) -> Result<(), RulesError> {
        self.book.restore(bytes, &self.path, now / 1000)?;
        self.refresh(now);
        self.check_halts(now);
        Ok(())
    }

    /// Sends every connected child the live rule sets of this node's path.
    pub(super) fn send_rules_to_children(&mut self, now: Millis) {
        for child in self.connected_children() {
            self.send_rules(child, now);
        }
    }

    pub(super) fn send_rules(&mut self, child: PeerId, now: Millis) {
        let sets: Vec<Arc<[u8]>> = self
            .book
            .forward(&self.path, now / 1000)
            .into_iter()
            .map(|r| Arc::from(r.bytes.as_slice()))
            .collect();
        if !sets.is_empty() {
            self.out.push_back(Output::Send {
                to: child,
                msg: Control::Rules { sets },
            });
        }
    }

    /// Re-evaluates what is available to this node and its children at `now`, and acts
    /// on what changed: takes up offers that became available, offers children what
    /// became available to them, and fetches accordingly.
    pub(super) fn refresh(&mut self, now: Millis) {
        self.note_own_expiry();
        self.installer_wake(now);
        let secs = now / 1000;
        self.now_secs = secs;
        self.avail = self.book.availability(&self.path, secs);
        let ready: Vec<Hash> = self
            .order
            .iter()
            .filter(|id| {
                self.updates.get(*id).is_some_and(|u| !u.stored) && self.avail.is_available(id)
            })
            .copied()
            .collect();
        for id in &ready {
            if let Some(u) = self.updates.get_mut(id) {
                u.stored = true;
                self.out.push_back(Output::StoreManifest {
                    manifest: u.manifest.clone(),
                });
            }
        }
        let children: Vec<PeerId> = self.children.keys().copied().collect();
        for child in children {
            let new = self.book.child_availability(&self.path, &child, secs);
            let old = self.child_avail.insert(child, new);
            if self.children.get(&child) != Some(&true) {
                continue;
            }
            let gained: Vec<Hash> = self
                .order
                .iter()
                .filter(|id| {
                    self.is_available_to(&child, id)
                        && !old.as_ref().is_some_and(|o| o.is_available(id))
                })
                .copied()
                .collect();
            for id in gained {
                self.offer(child, id);
            }
        }
        self.unite_children_avail();
        self.next_change = self
            .book
            .next_change(&self.path, secs)
            .map(|s| s.saturating_mul(1000));
        self.out.push_back(Output::Event(Event::RulesApplied));
        self.changed(now, true);
        self.schedule(now);
    }

    /// Rule sets from the parent: each checked on its own (PROTOCOL.md §14.3); a refused
    /// one is reported and the others still applied.
    pub(super) fn handle_rules(&mut self, peer: PeerId, sets: &[Arc<[u8]>], now: Millis) {
        if sets.len() > MAX_RULE_SETS {
            self.handle_offence(
                peer,
                Offence::BadFrame,
                "sent more rule sets than any path has nodes",
                now,
            );
            return;
        }
        let mut changed = false;
        for bytes in sets {
            let applied = SignedRules::open_shared(bytes, &self.path, now / 1000).and_then(|r| {
                let issuer = r.issuer();
                self.book.apply_shared(r).map(|new| new.then_some(issuer))
            });
            match applied {
                Ok(Some(issuer)) => {
                    changed = true;
                    self.rules_heard = true;
                    self.out.push_back(Output::StoreRules {
                        issuer,
                        rules: bytes.clone(),
                    });
                }
                Ok(None) => self.rules_heard = true,
                Err(error) => {
                    let issuer = match &error {
                        RulesError::WrongSigner { signer } => Some(*signer),
                        _ => None,
                    };
                    // A time check that fails on a node whose clock is off says so.
                    let timely = matches!(
                        error,
                        RulesError::Expired { .. } | RulesError::IssuedAhead { .. }
                    );
                    let reason = match self.clock_note().filter(|_| timely) {
                        Some(note) => format!("{error} ({note})"),
                        None => error.to_string(),
                    };
                    let refusal = RuleRefusal::new(self.me(), issuer, &reason, now / 1000);
                    self.refusals.insert(0, refusal);
                    self.refusals.truncate(report::MAX_REFUSALS);
                    self.changed(now, true);
                    self.out
                        .push_back(Output::Event(Event::RulesRefused { peer, reason }));
                }
            }
        }
        if changed {
            self.send_rules_to_children(now);
            self.refresh(now);
        }
        // The tree's word of now may have arrived ([`Engine::rules_current`]).
        self.installer_wake(now);
    }
}
