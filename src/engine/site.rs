//! Sites: the children of one parent that share a site label (an office behind one
//! WAN uplink) fetch each chunk across that uplink once and take the rest from each
//! other (PROTOCOL.md §13.1).
//!
//! Two halves, both in the engine so that the simulator runs them too:
//! - the **parent** knows each child's site. When a child asks for a chunk that a
//!   connected child of the same site was already sent, it answers "elsewhere: that
//!   sibling" instead of the bytes, and it tells each child of a site who its connected
//!   siblings are ([`Control::Siblings`]);
//! - the **child** connects to its siblings (the driver checks their certificates),
//!   tells them which chunks it holds, fetches from them what they announced, and asks
//!   its parent only for what no sibling has or gets. A sibling that sends bad bytes
//!   is struck, and after [`MAX_STRIKES`] banned; a sibling that is gone or fails to
//!   serve what it announced is passed over, and the chunk is asked of the parent
//!   "directly" (no redirect), so that a failed sibling costs bytes, never liveness.
//!
//! Per-update state is a few bitmaps and a byte per chunk, allocated only on nodes that
//! have siblings.

use super::bitmap::Bitmap;
use super::{Control, Engine, Event, FetchId, Millis, Output, PeerId};
use crate::content::Hash;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Bad chunks a sibling may send before it is banned for the rest of the run.
pub const MAX_STRIKES: u8 = 3;
/// Most siblings one node keeps: a site larger than this wants a branch node.
pub const MAX_SIBLINGS: usize = 255;

/// How a node answers a request for one chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Served {
    /// Send these bytes: the chunk's hash and length.
    Data { hash: Hash, len: u32 },
    /// Not held here (yet).
    Missing,
    /// A sibling of the requester at its site was sent it: fetch it there.
    Elsewhere { holder: PeerId },
}

/// A child's view of one update's chunks at its site.
pub(super) struct SiteChunks {
    /// The parent said a sibling has or is getting these: not asked of the parent.
    elsewhere: Bitmap,
    /// Asked of the parent with no redirect: their sibling failed or is unreachable.
    direct: Bitmap,
    /// Their source sibling announced it holds them.
    sib_has: Bitmap,
    /// The sibling to ask for each chunk: its slot + 1, or 0 for none.
    source: Vec<u8>,
    /// If nothing of the update arrived by then while chunks wait on siblings, they
    /// are asked of the parent directly: a sibling that never delivers stalls nothing.
    stall_at: Option<Millis>,
}

impl SiteChunks {
    fn new(n: u32) -> SiteChunks {
        SiteChunks {
            elsewhere: Bitmap::new(n),
            direct: Bitmap::new(n),
            sib_has: Bitmap::new(n),
            source: vec![0; n as usize],
            stall_at: None,
        }
    }

    /// The chunk's source was lost: ask the parent for it directly if it was waiting.
    fn lose_source(&mut self, i: u32) {
        self.source[i as usize] = 0;
        self.sib_has.clear(i);
        if self.elsewhere.clear(i) {
            self.direct.set(i);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SiblingState {
    /// Named by the parent; the other side dials (the lower key dials the higher).
    Listed,
    Dialing,
    Connected,
    /// Disconnected or unreachable. The dialling side dials again after a backoff
    /// while the parent still lists it, and at once when the parent names it again.
    Gone,
    /// Sent bad bytes too often: never asked or served again in this run.
    Banned,
}

pub(super) struct Sibling {
    pub(super) peer: PeerId,
    pub(super) state: SiblingState,
    strikes: u8,
    /// Updates it sent a `Have` of: answered once with everything held.
    heard: HashSet<Hash>,
    pub(super) bytes_from: u64,
    /// In the parent's latest list of this node's siblings.
    listed: bool,
    /// Dials failed or connections lost since it was last connected, and when to dial
    /// it again (on the dialling side).
    attempts: u32,
    retry_at: Option<Millis>,
}

/// The parent's record of its children's sites and which child of a site was sent
/// each chunk.
#[derive(Default)]
pub(super) struct Sites {
    site_of: HashMap<PeerId, Arc<str>>,
    /// Children that ever had a site; owners name them by index + 1.
    members: Vec<PeerId>,
    owners: HashMap<(Arc<str>, Hash), Vec<u16>>,
}

/// A sibling's public state, for status displays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiblingInfo {
    pub peer: PeerId,
    pub connected: bool,
    pub banned: bool,
    pub bytes_from: u64,
}

impl Engine {
    /// The site a child declared (the driver read it from the child's hello and put it
    /// in its certificate). Children of one site are each other's siblings.
    pub fn set_child_site(&mut self, child: PeerId, site: Option<&str>) {
        let old = self.sites.site_of.get(&child).cloned();
        if old.as_deref() == site {
            return;
        }
        match site {
            Some(s) => {
                self.sites.site_of.insert(child, Arc::from(s));
                if !self.sites.members.contains(&child)
                    && self.sites.members.len() < u16::MAX as usize
                {
                    self.sites.members.push(child);
                }
            }
            None => {
                self.sites.site_of.remove(&child);
            }
        }
        if self.children.get(&child) == Some(&true) {
            for s in [old, site.map(Arc::from)].into_iter().flatten() {
                self.send_site_lists(&s);
            }
        }
    }

    /// The site of a child, if it declared one.
    pub fn child_site(&self, child: &PeerId) -> Option<&str> {
        self.sites.site_of.get(child).map(|s| &**s)
    }

    /// Tells every connected child of `site` who its connected siblings are.
    pub(super) fn send_site_lists(&mut self, site: &str) {
        let members: Vec<PeerId> = self
            .children
            .iter()
            .filter(|(c, up)| **up && self.sites.site_of.get(*c).is_some_and(|s| &**s == site))
            .map(|(c, _)| *c)
            .take(MAX_SIBLINGS + 1)
            .collect();
        for child in &members {
            let peers = members.iter().filter(|p| *p != child).copied().collect();
            self.out.push_back(Output::Send {
                to: *child,
                msg: Control::Siblings { peers },
            });
        }
    }

    /// The site lists to send after a child connected or left.
    pub(super) fn child_moved(&mut self, child: &PeerId) {
        if let Some(site) = self.sites.site_of.get(child).cloned() {
            self.send_site_lists(&site);
        }
    }

    /// The parent's list of this node's connected siblings.
    pub(super) fn handle_siblings(&mut self, peers: Vec<PeerId>, now: Millis) {
        let me = self.me();
        for s in &mut self.siblings {
            // One the parent no longer lists has left the site: not dialled again.
            s.listed = peers.contains(&s.peer);
            if !s.listed {
                s.retry_at = None;
            }
        }
        for peer in peers.into_iter().filter(|p| *p != me) {
            let Some(slot) = self.sibling_slot_or_add(peer) else {
                continue;
            };
            let s = &mut self.siblings[slot];
            s.listed = true;
            if matches!(s.state, SiblingState::Listed | SiblingState::Gone) {
                s.retry_at = None;
                // One side dials, so that two siblings make one connection.
                if me < peer {
                    s.state = SiblingState::Dialing;
                    self.out.push_back(Output::Dial { peer });
                } else {
                    s.state = SiblingState::Listed;
                }
            }
        }
        self.schedule(now);
    }

    /// A sibling connected, its certificate checked by the driver: issued by this
    /// node's parent, for this node's site. Returns false if it is banned (the driver
    /// closes the connection).
    pub fn handle_sibling_connected(&mut self, peer: PeerId, now: Millis) -> bool {
        let Some(slot) = self.sibling_slot_or_add(peer) else {
            return false;
        };
        if self.siblings[slot].state == SiblingState::Banned {
            return false;
        }
        self.session_up(peer, now);
        let s = &mut self.siblings[slot];
        s.state = SiblingState::Connected;
        s.heard.clear();
        s.attempts = 0;
        s.retry_at = None;
        // What this node holds of everything it took up; the sibling answers with its own.
        let stored: Vec<Hash> = self
            .order
            .iter()
            .filter(|id| {
                self.updates
                    .get(*id)
                    .is_some_and(|u| u.stored && !u.awaiting_local)
            })
            .copied()
            .collect();
        for id in stored {
            self.tell_sibling(peer, id);
        }
        self.schedule(now);
        true
    }

    /// The slot of sibling `peer`, added if new; none past [`MAX_SIBLINGS`].
    fn sibling_slot_or_add(&mut self, peer: PeerId) -> Option<usize> {
        if let Some(slot) = self.sibling_slot(&peer) {
            return Some(slot);
        }
        if self.siblings.len() >= MAX_SIBLINGS {
            return None;
        }
        self.siblings.push(Sibling {
            peer,
            state: SiblingState::Listed,
            strikes: 0,
            heard: HashSet::new(),
            bytes_from: 0,
            listed: false,
            attempts: 0,
            retry_at: None,
        });
        Some(self.siblings.len() - 1)
    }

    /// Sends `peer` a `Have` of everything held of `update` (possibly nothing: it asks
    /// the sibling for its own).
    fn tell_sibling(&mut self, peer: PeerId, update: Hash) {
        if let Some(u) = self.updates.get(&update) {
            self.out.push_back(Output::Send {
                to: peer,
                msg: Control::Have {
                    update,
                    ranges: u.have.ranges(),
                },
            });
        }
    }

    /// Tells every connected sibling what is held of `update`, once it is taken up.
    pub(super) fn tell_siblings(&mut self, update: Hash) {
        let peers: Vec<PeerId> = self.connected_siblings().collect();
        for peer in peers {
            self.tell_sibling(peer, update);
        }
    }

    pub(super) fn connected_siblings(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.siblings
            .iter()
            .filter(|s| s.state == SiblingState::Connected)
            .map(|s| s.peer)
    }

    pub(super) fn sibling_slot(&self, peer: &PeerId) -> Option<usize> {
        self.siblings.iter().position(|s| s.peer == *peer)
    }

    /// Whether `peer` is a sibling with a live connection.
    pub fn is_connected_sibling(&self, peer: &PeerId) -> bool {
        self.sibling_slot(peer)
            .is_some_and(|s| self.siblings[s].state == SiblingState::Connected)
    }

    /// Every sibling this node knows, for status displays.
    pub fn siblings(&self) -> Vec<SiblingInfo> {
        self.siblings
            .iter()
            .map(|s| SiblingInfo {
                peer: s.peer,
                connected: s.state == SiblingState::Connected,
                banned: s.state == SiblingState::Banned,
                bytes_from: s.bytes_from,
            })
            .collect()
    }

    /// A sibling's connection ended, or a dial to it failed: the dialling side tries
    /// again after a backoff while the parent lists it (a sibling that restarts, or
    /// whose listener was not up yet, is reached again).
    pub(super) fn sibling_lost(&mut self, slot: usize, now: Millis) {
        let me = self.me();
        let s = &mut self.siblings[slot];
        if s.state != SiblingState::Banned {
            s.state = SiblingState::Gone;
            if s.listed && me < s.peer {
                s.retry_at = Some(now + super::backoff(&self.config, s.attempts, &mut self.rng));
                s.attempts = s.attempts.saturating_add(1);
            }
        }
        let mark = slot as u8 + 1;
        for u in self.updates.values_mut() {
            if let Some(site) = u.site.as_mut() {
                for i in 0..site.source.len() {
                    if site.source[i] == mark {
                        site.lose_source(i as u32);
                    }
                }
            }
        }
    }

    /// Dials siblings whose backoff has passed.
    pub(super) fn redial_siblings(&mut self, now: Millis) {
        for s in &mut self.siblings {
            if s.state == SiblingState::Gone && s.retry_at.is_some_and(|t| t <= now) {
                s.retry_at = None;
                s.state = SiblingState::Dialing;
                self.out.push_back(Output::Dial { peer: s.peer });
            }
        }
    }

    /// When a sibling is to be dialled again next.
    pub(super) fn next_sibling_redial(&self) -> Option<Millis> {
        self.siblings.iter().filter_map(|s| s.retry_at).min()
    }

    /// A `Have` from a sibling: it holds these chunks and serves them.
    pub(super) fn handle_sibling_have(
        &mut self,
        slot: usize,
        update: Hash,
        ranges: Vec<(u32, u32)>,
        now: Millis,
    ) {
        let Some(u) = self.updates.get_mut(&update) else {
            // Not taken up here yet: this node sends its own `Have` when it is, and the
            // sibling answers with everything it holds then.
            return;
        };
        if !u.stored || u.awaiting_local {
            return;
        }
        let n = u.have.len();
        let site = u.site.get_or_insert_with(|| Box::new(SiteChunks::new(n)));
        let mark = slot as u8 + 1;
        for (start, end) in ranges {
            for i in start..end.min(n) {
                if u.have.get(i) || site.sib_has.get(i) {
                    continue;
                }
                site.source[i as usize] = mark;
                site.sib_has.set(i);
            }
        }
        if self.siblings[slot].heard.insert(update) {
            let peer = self.siblings[slot].peer;
            self.tell_sibling(peer, update);
        }
        self.schedule(now);
    }

    /// The parent answered chunk `index` of fetch `id` with "elsewhere": `holder`, a
    /// sibling at this node's site, was sent it.
    pub fn handle_elsewhere(&mut self, id: FetchId, index: u32, holder: PeerId, now: Millis) {
        let Some(f) = self.fetches.get(&id) else {
            return;
        };
        if index < f.first || index >= f.first + f.count || !self.is_parent(&f.from) {
            return;
        }
        let update = f.update;
        // A redirect is an answer: the parent is not failing.
        if let Some(f) = self.fetches.get_mut(&id) {
            f.answered += 1;
        }
        let slot = self.sibling_slot(&holder);
        let usable = slot.is_some_and(|s| {
            !matches!(
                self.siblings[s].state,
                SiblingState::Gone | SiblingState::Banned
            )
        });
        let stall = self.config.sibling_stall;
        let Some(u) = self.updates.get_mut(&update) else {
            return;
        };
        let n = u.have.len();
        let site = u.site.get_or_insert_with(|| Box::new(SiteChunks::new(n)));
        u.busy.clear(index);
        match slot {
            Some(slot) if usable && holder != self.key.public() => {
                if !site.sib_has.get(index) {
                    site.source[index as usize] = slot as u8 + 1;
                }
                site.elsewhere.set(index);
                site.stall_at.get_or_insert(now + stall);
            }
            // A sibling this node cannot reach: the parent must send it after all.
            _ => {
                site.direct.set(index);
            }
        }
    }

    /// How to answer `peer`'s request for chunks `span` of `update`: one answer per
    /// chunk, in order; `direct` asks for no redirect. The driver asks this of a
    /// request it accepted ([`Engine::may_request`]) before sending anything.
    pub fn serve(
        &mut self,
        peer: &PeerId,
        update: &Hash,
        span: std::ops::Range<u32>,
        direct: bool,
    ) -> Vec<Served> {
        /// What the requester may be sent, decided once for the request.
        enum Asker {
            /// Nothing of this update.
            Nobody,
            /// Whatever is held.
            Anyone,
            /// Whatever is held, unless a sibling at its site (named by `members`
            /// index `me`) was sent it already.
            AtSite { me: usize, site: Arc<str> },
        }
        let asker = if self.is_connected_sibling(peer) {
            if self.is_available_to_sibling(peer, update) {
                Asker::Anyone
            } else {
                Asker::Nobody
            }
        } else if self.children.get(peer) != Some(&true) || !self.is_available_to(peer, update) {
            Asker::Nobody
        } else {
            match (
                self.sites.site_of.get(peer),
                self.sites.members.iter().position(|m| m == peer),
            ) {
                (Some(site), Some(me)) => Asker::AtSite {
                    me,
                    site: site.clone(),
                },
                _ => Asker::Anyone,
            }
        };
        let Some(u) = self.updates.get(update) else {
            return vec![Served::Missing; span.len()];
        };
        let mut owners = match &asker {
            Asker::AtSite { site, .. } => Some(
                self.sites
                    .owners
                    .entry((site.clone(), *update))
                    .or_insert_with(|| vec![0; u.have.len() as usize]),
            ),
            _ => None,
        };
        let mut answers = Vec::with_capacity(span.len());
        for index in span {
            let chunk = u.chunks.get(index as usize).filter(|_| u.have.get(index));
            let Some(&(hash, len)) = chunk else {
                answers.push(Served::Missing);
                continue;
            };
            let answer = match (&asker, owners.as_deref_mut()) {
                (Asker::Nobody, _) => Served::Missing,
                (Asker::AtSite { me, site }, Some(owners)) => {
                    let owner = owners[index as usize];
                    let holder = (owner != 0 && owner as usize != me + 1)
                        .then(|| self.sites.members[owner as usize - 1]);
                    match holder {
                        Some(holder)
                            if !direct
                                && self.sites.site_of.get(&holder) == Some(site)
                                && self.children.get(&holder) == Some(&true) =>
                        {
                            self.stats.redirects += 1;
                            Served::Elsewhere { holder }
                        }
                        _ => {
                            if owner == 0 || !direct {
                                owners[index as usize] = *me as u16 + 1;
                            }
                            Served::Data { hash, len }
                        }
                    }
                }
                _ => Served::Data { hash, len },
            };
            answers.push(answer);
        }
        answers
    }

    /// Whether `peer` may send this node chunk requests at all: a connected child or a
    /// connected sibling.
    pub fn may_request(&self, peer: &PeerId) -> bool {
        self.children.get(peer) == Some(&true) || self.is_connected_sibling(peer)
    }

    /// Whether a sibling may have `update`: by the parent's rules for it, which this
    /// node holds as part of its own path (a sibling is a child of the same parent).
    fn is_available_to_sibling(&self, sibling: &PeerId, update: &Hash) -> bool {
        let parent_path = &self.path[..self.path.len().saturating_sub(1)];
        self.updates.get(update).is_some_and(|u| u.stored)
            && self
                .book
                .child_availability(parent_path, sibling, self.now_secs)
                .is_available(update)
    }

    /// A bad chunk from a sibling: struck, and banned after [`MAX_STRIKES`].
    pub(super) fn strike_sibling(&mut self, slot: usize, now: Millis) {
        let s = &mut self.siblings[slot];
        s.strikes = s.strikes.saturating_add(1);
        if s.strikes >= MAX_STRIKES && s.state != SiblingState::Banned {
            s.state = SiblingState::Banned;
            let peer = s.peer;
            self.stats.siblings_banned += 1;
            self.out.push_back(Output::Event(Event::Misbehaved {
                peer,
                offence: super::Offence::BadData,
                reason: format!("sent {MAX_STRIKES} bad chunks: banned as a sibling"),
            }));
            self.out.push_back(Output::Disconnect {
                peer,
                reason: "a sibling that sends bad chunks".into(),
            });
            self.sibling_lost(slot, now);
        }
    }

    /// Chunks a sibling fetch did not deliver: asked of the parent directly.
    pub(super) fn sibling_fetch_failed(
        &mut self,
        update: &Hash,
        chunks: impl Iterator<Item = u32>,
    ) {
        if let Some(u) = self.updates.get_mut(update)
            && let Some(site) = u.site.as_mut()
        {
            for i in chunks {
                if !u.have.get(i) {
                    site.source[i as usize] = 0;
                    site.sib_has.clear(i);
                    site.elsewhere.clear(i);
                    site.direct.set(i);
                }
            }
        }
    }

    /// Asks connected siblings for the chunks they announced, up to the window each.
    pub(super) fn schedule_siblings(&mut self, now: Millis) {
        if !self
            .siblings
            .iter()
            .any(|s| s.state == SiblingState::Connected)
        {
            return;
        }
        let mut in_flight = vec![0usize; self.siblings.len()];
        // A sibling whose fetches keep failing backs off (`engine::sources`).
        let allowed: Vec<usize> = self
            .siblings
            .iter()
            .map(|s| self.source_allowance(&s.peer, now))
            .collect();
        for f in self.fetches.values() {
            if let Some(s) = self.sibling_slot(&f.from) {
                in_flight[s] += 1;
            }
        }
        let wanted = self.wanted();
        // Spans to ask for, started once the update's bitmaps are no longer borrowed.
        let mut pending = Vec::new();
        for id in wanted {
            let Some(u) = self.updates.get_mut(&id) else {
                continue;
            };
            if u.awaiting_local || !u.stored || u.have.is_full() {
                continue;
            }
            let Some(site) = u.site.as_ref() else {
                continue;
            };
            let mut from = 0;
            while let Some(first) = site.sib_has.first_set_not_in(from, &[&u.have, &u.busy]) {
                let mark = site.source[first as usize];
                from = first + 1;
                let Some(slot) = (mark as usize).checked_sub(1) else {
                    continue;
                };
                if self.siblings[slot].state != SiblingState::Connected
                    || in_flight[slot] >= allowed[slot]
                {
                    continue;
                }
                let mut count = 1;
                while count < self.config.span {
                    let i = first + count;
                    if i >= u.have.len()
                        || !site.sib_has.get(i)
                        || site.source[i as usize] != mark
                        || u.have.get(i)
                        || u.busy.get(i)
                    {
                        break;
                    }
                    count += 1;
                }
                for i in first..first + count {
                    u.busy.set(i);
                }
                from = first + count;
                in_flight[slot] += 1;
                let peer = self.siblings[slot].peer;
                pending.push((peer, id, first, count));
            }
        }
        for (peer, id, first, count) in pending {
            self.start_fetch(peer, id, (first, count), false, now);
        }
    }

    /// Where this node starts looking for chunks to ask its parent for: spread over
    /// the update by its rank among its siblings, so that siblings mostly ask for
    /// different chunks and few requests come back redirected.
    pub(super) fn parent_search_start(&self, chunks: u32) -> u32 {
        let me = self.me();
        let listed = self
            .siblings
            .iter()
            .filter(|s| s.state != SiblingState::Banned)
            .count();
        if listed == 0 {
            return 0;
        }
        let rank = self.siblings.iter().filter(|s| s.peer < me).count();
        (u64::from(chunks) * rank as u64 / (listed as u64 + 1)) as u32
    }

    /// Chunks waiting on siblings for too long with no progress are asked of the
    /// parent directly.
    pub(super) fn check_stalls(&mut self, now: Millis) {
        for u in self.updates.values_mut() {
            if let Some(site) = u.site.as_mut()
                && site.stall_at.is_some_and(|t| t <= now)
            {
                site.stall_at = None;
                for i in 0..u.have.len() {
                    if site.elsewhere.clear(i) && !u.have.get(i) {
                        site.direct.set(i);
                    }
                }
            }
        }
    }

    /// The earliest stall check due.
    pub(super) fn next_stall(&self) -> Option<Millis> {
        self.updates
            .values()
            .filter_map(|u| u.site.as_ref().and_then(|s| s.stall_at))
            .min()
    }

    /// A chunk arrived: chunks waiting on siblings are not stalled.
    pub(super) fn progressed(&mut self, update: &Hash, now: Millis) {
        let stall = self.config.sibling_stall;
        if let Some(u) = self.updates.get_mut(update)
            && let Some(site) = u.site.as_mut()
            && site.stall_at.is_some()
        {
            site.stall_at = (site.elsewhere.count() > 0).then_some(now + stall);
        }
    }

    /// Chunks to skip when asking the parent, and those to ask for with no redirect.
    pub(super) fn site_bitmaps(&self, update: &Hash) -> Option<(&Bitmap, &Bitmap)> {
        self.updates
            .get(update)
            .and_then(|u| u.site.as_ref())
            .map(|s| (&s.elsewhere, &s.direct))
    }

    /// A sibling's fetch delivered `chunks` new chunks of `bytes` in all.
    pub(super) fn count_from_sibling(&mut self, slot: usize, chunks: u64, bytes: u64) {
        self.siblings[slot].bytes_from += bytes;
        self.stats.chunks_from_siblings += chunks;
        self.stats.bytes_from_siblings += bytes;
    }

    /// Forgets a child's claim on chunks (it was revoked).
    pub(super) fn forget_site_member(&mut self, child: &PeerId) {
        self.sites.site_of.remove(child);
    }
}
