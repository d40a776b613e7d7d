//! Fetching: which chunks to ask of whom and when, the verdicts on what came back, and
//! the deadlines of requests in flight.

use super::*;

impl Engine {
    /// The verdict on one chunk of fetch `id`.
    pub fn handle_chunk(&mut self, id: FetchId, index: u32, verdict: ChunkVerdict, now: Millis) {
        self.handle_chunks(id, [(index, verdict)], now);
    }

    /// The verdicts on chunks of fetch `id`, in the order they came: the same as
    /// [`Engine::handle_chunk`] for each, for a driver that judged several at once.
    pub fn handle_chunks(
        &mut self,
        id: FetchId,
        verdicts: impl IntoIterator<Item = (u32, ChunkVerdict)>,
        now: Millis,
    ) {
        let Some(f) = self.fetches.get(&id) else {
            return;
        };
        let (from, update, span) = (f.from, f.update, f.first..f.first + f.count);
        let sibling = self.sibling_slot(&from).filter(|_| !self.is_parent(&from));
        let Some(u) = self.updates.get_mut(&update) else {
            return;
        };
        // The first chunk makes it downloading; the last, downloaded.
        let mut started = false;
        let mut stored = false;
        // New chunks and their bytes, and the bad chunks, dealt with after the loop.
        let (mut chunks, mut bytes) = (0u64, 0u64);
        let mut bad = Vec::new();
        let mut missing = Vec::new();
        let mut answered = 0;
        for (index, verdict) in verdicts {
            if !span.contains(&index) {
                continue;
            }
            match verdict {
                ChunkVerdict::Stored { wire } => {
                    u.busy.clear(index);
                    started |= !stored && u.have.count() == 0;
                    stored = true;
                    answered += 1;
                    if u.have.set(index) {
                        u.unannounced.set(index);
                        chunks += 1;
                        bytes += u64::from(wire);
                    }
                }
                ChunkVerdict::Bad => {
                    // Keep it busy for a while, longer with each bad copy of it, so
                    // that a bad source is not hammered.
                    let copies = u.bad_copies.entry(index).or_insert(0);
                    let wait = self.config.bad_chunk_delay << (*copies).min(6);
                    *copies = copies.saturating_add(1);
                    u.resting.push((index, now + wait));
                    bad.push(index);
                }
                ChunkVerdict::Missing => missing.push(index),
            }
        }

        if let Some(f) = self.fetches.get_mut(&id) {
            f.answered += answered;
        }
        if stored {
            self.source_delivered(from, bytes, now);
        }
        self.source_lacks(from, &update, &missing);
        let Some(u) = self.updates.get_mut(&update) else {
            return;
        };
        if let Some(slot) = sibling {
            u.from_siblings += bytes;
            self.count_from_sibling(slot, chunks, bytes);
        } else {
            u.from_parent += bytes;
            self.stats.chunks_from_parent += chunks;
            self.stats.bytes_from_parent += bytes;
        }
        for index in bad {
            self.stats.bad_chunks += 1;
            self.out.push_back(Output::Event(Event::BadChunk {
                peer: from,
                update,
                index,
            }));
            if let Some(slot) = sibling {
                // Asked of the parent next, not of a sibling that sends bad bytes.
                self.sibling_fetch_failed(&update, std::iter::once(index));
                self.strike_sibling(slot, now);
            }
        }
        if stored {
            self.progressed(&update, now);
            let done = self.check_complete(update);
            if done {
                self.installer_wake(now);
            }
            self.stored_new(done, now);
            self.changed(now, started || done);
        }
    }

    /// Fetch `id` ended (completely or not); unanswered chunks are asked again.
    pub fn handle_fetch_end(&mut self, id: FetchId, now: Millis) {
        self.end_fetch(id, Some(now));
        self.schedule(now);
    }

    /// Forgets fetch `id`; its unanswered chunks may be asked again. `judged` is the
    /// time when the fetch ended on its own or was given up: one that delivered nothing
    /// counts against its source then (`engine::sources`). A fetch cut short by a lost
    /// connection is not judged.
    pub(super) fn end_fetch(&mut self, id: FetchId, judged: Option<Millis>) {
        let Some(f) = self.fetches.remove(&id) else {
            return;
        };
        if let Some(now) = judged
            && f.answered == 0
        {
            self.source_failed(f.from, now);
        }
        if let Some(u) = self.updates.get_mut(&f.update) {
            let resting: Vec<u32> = u.resting.iter().map(|(i, _)| *i).collect();
            for i in f.first..f.first + f.count {
                if !u.have.get(i) && !resting.contains(&i) {
                    u.busy.clear(i);
                }
            }
        }
        if !self.is_parent(&f.from) && self.sibling_slot(&f.from).is_some() {
            // A sibling that announced chunks and did not deliver them is not waited on.
            self.sibling_fetch_failed(&f.update, f.first..f.first + f.count);
        }
    }

    /// Asks siblings for what they announced, then the parent for missing chunks it
    /// holds that no sibling has or gets, each up to the window.
    pub(super) fn schedule(&mut self, now: Millis) {
        self.schedule_siblings(now);
        let Some((parent, ParentLink::Connected)) = self.parent.clone() else {
            return;
        };
        if self.parent_paused {
            return;
        }
        let mut in_flight = self.fetches.values().filter(|f| f.from == parent).count();
        let allowance = self.source_allowance(&parent, now);
        let wanted = self.wanted();
        'outer: while in_flight < allowance {
            for id in &wanted {
                let Some((first, count, direct)) = self.next_parent_span(id) else {
                    continue;
                };
                let Some(u) = self.updates.get_mut(id) else {
                    continue;
                };
                for i in first..first + count {
                    u.busy.set(i);
                }
                self.start_fetch(parent, *id, (first, count), direct, now);
                in_flight += 1;
                continue 'outer;
            }
            break;
        }
    }

    /// Asks `from` for chunks `span.0 .. span.0 + span.1` of `update` (marked busy by
    /// the caller), with a deadline.
    pub(super) fn start_fetch(
        &mut self,
        from: PeerId,
        update: Hash,
        (first, count): (u32, u32),
        direct: bool,
        now: Millis,
    ) {
        let id = self.next_fetch;
        self.next_fetch += 1;
        let deadline = now + self.config.fetch_timeout;
        let bytes = self.updates.get(&update).map_or(0, |u| {
            u.chunks[first as usize..(first + count) as usize]
                .iter()
                .map(|c| u64::from(c.1))
                .sum()
        });
        self.source_asked(from, now);
        if self.is_parent(&from)
            && let Some(u) = self.updates.get_mut(&update)
        {
            for i in first..first + count {
                u.parent_renewed.clear(i);
            }
        }
        self.fetches.insert(
            id,
            Fetch {
                from,
                update,
                first,
                count,
                deadline,
                bytes,
                answered: 0,
            },
        );
        self.out.push_back(Output::Fetch {
            id,
            from,
            update,
            first,
            count,
            direct,
        });
    }

    /// The next span of `update` to ask the parent for: chunks it holds that are not
    /// held, asked for, or waited on from a sibling, all asked with or all without
    /// `direct`.
    pub(super) fn next_parent_span(&self, id: &Hash) -> Option<(u32, u32, bool)> {
        let u = self.updates.get(id)?;
        if u.awaiting_local || !u.stored || u.have.is_full() {
            return None;
        }
        let none = Bitmap::new(0);
        let (elsewhere, direct) = self.site_bitmaps(id).unwrap_or((&none, &none));
        let skip = [&u.have, &u.busy, elsewhere];
        let start = self.parent_search_start(u.have.len());
        let first = u
            .parent_has
            .first_set_not_in(start, &skip)
            .or_else(|| u.parent_has.first_set_not_in(0, &skip))?;
        let is_direct = direct.get(first);
        let mut count = 1;
        while count < self.config.span {
            let i = first + count;
            if i >= u.have.len()
                || !u.parent_has.get(i)
                || skip.iter().any(|b| b.get(i))
                || direct.get(i) != is_direct
            {
                break;
            }
            count += 1;
        }
        Some((first, count, is_direct))
    }
}
