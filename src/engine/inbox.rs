//! The inbox: every control message from a peer with a session, checked against what the
//! sender's role may send (PROTOCOL.md §12) and handed to its handler. A message the role
//! may not send is an offence ([`super::Offence::WrongRole`]).

use super::*;

impl Engine {
    /// A control message from a connected peer.
    pub fn handle_message(&mut self, peer: PeerId, msg: Control, now: Millis) {
        self.heard(peer, now);
        if let Control::Ping { time } = msg {
            if self.is_parent(&peer) {
                self.set_parent_clock(time, now);
            }
            return;
        }
        if let Control::Report { report } = msg {
            if self.is_connected_child(&peer) {
                self.handle_report(peer, report, now);
            } else {
                self.handle_offence(
                    peer,
                    Offence::WrongRole,
                    "a report from a peer that is not a connected child",
                    now,
                );
            }
            return;
        }
        if let Some(slot) = self.sibling_slot(&peer)
            && self.is_connected_sibling(&peer)
        {
            match msg {
                Control::Have { update, ranges } => {
                    self.handle_sibling_have(slot, update, ranges, now)
                }
                _ => self.handle_offence(
                    peer,
                    Offence::WrongRole,
                    "a sibling sent something other than a Have",
                    now,
                ),
            }
            return;
        }
        if !self.is_parent(&peer) {
            self.handle_offence(
                peer,
                Offence::WrongRole,
                "a control message only a parent sends, from a peer that is not this node's parent",
                now,
            );
            return;
        }
        match msg {
            Control::Offer { manifest } => self.handle_offer(peer, manifest, now),
            Control::Rules { sets } => self.handle_rules(peer, &sets, now),
            Control::Report { .. } | Control::Ping { .. } => {}
            Control::Siblings { peers } => self.handle_siblings(peers, now),
            Control::Have { update, ranges } => {
                let Some(u) = self.updates.get_mut(&update) else {
                    self.handle_offence(
                        peer,
                        Offence::BadFrame,
                        "announced chunks of an update it never offered",
                        now,
                    );
                    return;
                };
                for (start, end) in ranges {
                    for i in start..end.min(u.parent_has.len()) {
                        u.parent_has.set(i);
                        u.parent_renewed.set(i);
                    }
                }
                self.schedule(now);
            }
        }
    }
}
