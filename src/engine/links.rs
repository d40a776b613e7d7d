//! Links: the parent link (connected, lost, dialling again with backoff) and the
//! children coming and going.

use super::*;

impl Engine {
    /// A connection to `peer` is up, after the driver checked its certificate chain.
    pub fn handle_connected(&mut self, peer: PeerId, now: Millis) {
        if let Some((parent, link)) = &mut self.parent
            && *parent == peer
        {
            *link = ParentLink::Connected;
            self.rules_heard = false;
            self.parent_silent_since = None;
            self.session_up(peer, now);
            self.out.push_back(Output::Event(Event::ParentConnected));
            self.installer_wake(now);
            // The parent may have missed anything while away: a fresh snapshot at once.
            self.last_report = None;
            self.report_due = Some(now);
            self.schedule(now);
            return;
        }
        match self.children.get_mut(&peer) {
            Some(connected) => {
                *connected = true;
                self.session_up(peer, now);
                self.child_up(&peer);
                self.greet_child(peer, now);
                self.child_moved(&peer);
            }
            None => {
                self.out.push_back(Output::Event(Event::Refused { peer }));
                self.out.push_back(Output::Disconnect {
                    peer,
                    reason: "not a member of this node's part of the tree".into(),
                });
            }
        }
    }

    /// Tells a newly connected child the rules of this node's path, then everything
    /// available to it.
    pub(super) fn greet_child(&mut self, child: PeerId, now: Millis) {
        self.send_rules(child, now);
        let available: Vec<Hash> = self
            .order
            .iter()
            .filter(|id| self.is_available_to(&child, id))
            .copied()
            .collect();
        for id in available {
            self.offer(child, id);
        }
    }

    /// The connection to `peer` is gone (closed, failed, or a dial failed).
    pub fn handle_disconnected(&mut self, peer: PeerId, now: Millis) {
        self.session_down(&peer);
        if let Some(connected) = self.children.get_mut(&peer)
            && std::mem::take(connected)
        {
            self.child_moved(&peer);
            self.child_down(peer, now);
        }
        if let Some(slot) = self.sibling_slot(&peer) {
            self.sibling_lost(slot, now);
        }
        // Whatever was asked of that peer is asked again later.
        let lost: Vec<FetchId> = self
            .fetches
            .iter()
            .filter(|(_, f)| f.from == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.end_fetch(id, None);
        }
        if let Some((parent, link)) = &mut self.parent
            && *parent == peer
        {
            self.report_due = None;
            let attempts = match link {
                ParentLink::Connected => {
                    self.out.push_back(Output::Event(Event::ParentLost));
                    0
                }
                ParentLink::Dialing { attempts } | ParentLink::Down { attempts, .. } => *attempts,
            };
            let backoff = backoff(&self.config, attempts, &mut self.rng);
            *link = ParentLink::Down {
                retry_at: now + backoff,
                attempts: attempts + 1,
            };
            for u in self.updates.values_mut() {
                // The parent tells again what it has when it is back.
                u.parent_has = Bitmap::new(u.parent_has.len());
                u.parent_renewed = Bitmap::new(u.parent_has.len());
            }
        }
    }
}
