//! Content-defined chunking (FastCDC 2020) over streams, with bounded memory.
//!
//! [`Segmenter`] reads a stream into large buffers and cuts each buffer into chunks with
//! `fastcdc::v2020::cut`. It hands out [`Segment`]s: a buffer plus the lengths of the
//! whole chunks in it, so a consumer can hash and store chunks straight out of the
//! buffer (no per-chunk allocation) and the cutting can run on another thread than the
//! hashing. [`Segment::hash_all`] lets whichever thread has time do the hashing. The cut points are exactly those of FastCDC run over the whole stream at
//! once; a test checks that. The parameters are part of the protocol
//! (`protocol/PROTOCOL.md`, "Chunking").

use super::Hash;
use super::manifest::{ChunkRef, FileEntry, Manifest};
use fastcdc::v2020::{Normalization, cut, select_masks};
use std::io::{self, Read};

/// FastCDC parameters. The defaults are those of casync (16/64/256 KiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkParams {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
}

impl Default for ChunkParams {
    fn default() -> ChunkParams {
        ChunkParams {
            min: 16 * 1024,
            avg: 64 * 1024,
            max: 256 * 1024,
        }
    }
}

/// Size of the buffers a [`Segmenter`] fills: many chunks per read and per hand-off.
pub const SEGMENT_BYTES: usize = 4 * 1024 * 1024;

/// A buffer of whole chunks, in stream order.
#[derive(Debug, Default)]
pub struct Segment {
    /// The buffer; only the first `len` bytes belong to this segment.
    buf: Vec<u8>,
    len: usize,
    /// Length of each chunk, in order; they add up to `len`.
    pub lens: Vec<u32>,
    /// The blake3 hash of each chunk, once [`Segment::hash_all`] has run.
    hashes: Vec<Hash>,
}

impl Segment {
    /// The segment's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Iterates over the chunks of this segment.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        let mut at = 0usize;
        self.lens.iter().map(move |&len| {
            let chunk = &self.buf[at..at + len as usize];
            at += len as usize;
            chunk
        })
    }

    /// Hashes every chunk, unless that was done already (by whichever thread had time).
    pub fn hash_all(&mut self) {
        if self.hashes.len() != self.lens.len() {
            let hashes = self.chunks().map(Hash::of).collect();
            self.hashes = hashes;
        }
    }

    /// The chunks with their hashes; call [`Segment::hash_all`] first.
    pub fn hashed_chunks(&self) -> impl Iterator<Item = (Hash, &[u8])> {
        self.hashes.iter().copied().zip(self.chunks())
    }
}

/// A manifest of one file, `payload`, holding `data` (held whole in memory), cut as
/// `arbor publish` cuts a file, with each chunk's hash and bytes in order. Every such
/// manifest is a version of the same module. For tools and tests that work in memory;
/// publishing streams with a [`Segmenter`].
pub fn manifest_in_memory(data: &[u8]) -> (Manifest, Vec<(Hash, &[u8])>) {
    let mut segmenter = Segmenter::new(data, ChunkParams::default());
    let mut cut = Vec::new();
    let mut at = 0;
    // Reading a slice cannot fail.
    while let Ok(Some(mut segment)) = segmenter.next_segment() {
        segment.hash_all();
        for (hash, bytes) in segment.hashed_chunks() {
            cut.push((hash, &data[at..at + bytes.len()]));
            at += bytes.len();
        }
        segmenter.recycle(segment);
    }
    let manifest = Manifest {
        id: "p".into(),
        files: vec![FileEntry {
            mode: 0o644,
            path: "payload".into(),
            size: data.len() as u64,
            chunks: cut
                .iter()
                .map(|(hash, bytes)| ChunkRef(*hash, bytes.len() as u32))
                .collect(),
        }],
        tenant: "t".into(),
        created: 0,
        version: "1".into(),
        category: "c".into(),
        total_size: data.len() as u64,
        description: None,
        post_install: None,
    };
    (manifest, cut)
}

/// Cuts a stream into content-defined chunks, one [`Segment`] at a time.
pub struct Segmenter<R> {
    source: R,
    params: ChunkParams,
    masks: (u64, u64),
    /// The buffer being filled; its first `filled` bytes are read but not handed out.
    buf: Vec<u8>,
    filled: usize,
    eof: bool,
    /// Buffers returned by the consumer, reused so memory stays flat and buffers are
    /// not zeroed again.
    spare: Vec<Vec<u8>>,
}

impl<R: Read> Segmenter<R> {
    pub fn new(source: R, params: ChunkParams) -> Segmenter<R> {
        Segmenter {
            source,
            params,
            masks: select_masks(params.avg, Normalization::Level1),
            buf: Vec::new(),
            filled: 0,
            eof: false,
            spare: Vec::new(),
        }
    }

    fn capacity(&self) -> usize {
        SEGMENT_BYTES.max(2 * self.params.max)
    }

    fn fresh_buffer(&mut self) -> Vec<u8> {
        let capacity = self.capacity();
        match self.spare.pop() {
            Some(b) if b.len() == capacity => b,
            _ => vec![0; capacity],
        }
    }

    /// Gives a used segment's buffer back for reuse.
    pub fn recycle(&mut self, segment: Segment) {
        if self.spare.len() < 2 {
            self.spare.push(segment.buf);
        }
    }

    /// Reads and cuts the next segment; `None` at the end of the stream.
    pub fn next_segment(&mut self) -> io::Result<Option<Segment>> {
        if self.buf.is_empty() {
            self.buf = self.fresh_buffer();
        }
        while !self.eof && self.filled < self.buf.len() {
            match self.source.read(&mut self.buf[self.filled..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.filled == 0 {
            return Ok(None);
        }
        let ChunkParams { min, avg, max } = self.params;
        let (mask_s, mask_l) = self.masks;
        let data = &self.buf[..self.filled];
        let mut lens = Vec::with_capacity(data.len() / min + 1);
        let mut at = 0;
        // Without end of stream, only cut where at least `max` bytes are visible: that is
        // all `cut` ever looks at, so the cut points match a whole-stream FastCDC run.
        while at < data.len() && (self.eof || data.len() - at >= max) {
            let (_, len) = cut(
                &data[at..],
                min,
                avg,
                max,
                mask_s,
                mask_l,
                mask_s << 1,
                mask_l << 1,
            );
            lens.push(len as u32);
            at += len;
        }
        let rest = self.filled - at;
        let next = if rest == 0 {
            Vec::new() // end of stream, or a cut exactly at the end: nothing to carry
        } else {
            let mut next = self.fresh_buffer();
            next[..rest].copy_from_slice(&self.buf[at..self.filled]);
            next
        };
        self.filled = rest;
        Ok(Some(Segment {
            buf: std::mem::replace(&mut self.buf, next),
            len: at,
            lens,
            hashes: Vec::new(),
        }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reader that returns at most `step` bytes per call, to exercise refills.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    pub(crate) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn lens_of(data: &[u8], step: usize, params: ChunkParams) -> Vec<u32> {
        let mut seg = Segmenter::new(Trickle { data, step }, params);
        let mut lens = Vec::new();
        let mut bytes = Vec::new();
        while let Some(s) = seg.next_segment().expect("in-memory read") {
            assert_eq!(
                s.bytes().len(),
                s.lens.iter().map(|&l| l as usize).sum::<usize>()
            );
            for chunk in s.chunks() {
                bytes.extend_from_slice(chunk);
            }
            lens.extend_from_slice(&s.lens);
            seg.recycle(s);
        }
        assert!(bytes == data, "segments do not reassemble the stream");
        lens
    }

    fn reference(data: &[u8], p: ChunkParams) -> Vec<u32> {
        fastcdc::v2020::FastCDC::new(data, p.min, p.avg, p.max)
            .map(|c| c.length as u32)
            .collect()
    }

    #[test]
    fn matches_whole_stream_fastcdc_on_large_input() {
        let data = pseudo_random(11 * 1024 * 1024 + 12345, 42);
        let p = ChunkParams::default();
        let lens = lens_of(&data, 1 << 20, p);
        assert_eq!(lens, reference(&data, p));
        assert!(lens.iter().all(|&l| l as usize <= p.max));
        let avg = data.len() / lens.len();
        assert!(
            (32 * 1024..128 * 1024).contains(&avg),
            "average chunk {avg}"
        );
    }

    #[test]
    fn empty_stream_has_no_segments() {
        assert!(lens_of(&[], 7, ChunkParams::default()).is_empty());
    }

    #[test]
    fn edit_in_the_middle_keeps_other_chunks() {
        let p = ChunkParams::default();
        let a = pseudo_random(4 << 20, 9);
        let mut b = a.clone();
        b.splice(2 << 20..2 << 20, b"inserted bytes".iter().copied());
        let hashes = |d: &[u8]| {
            let mut at = 0;
            reference(d, p)
                .into_iter()
                .map(|l| {
                    let h = blake3::hash(&d[at..at + l as usize]);
                    at += l as usize;
                    h
                })
                .collect::<std::collections::HashSet<_>>()
        };
        let (ha, hb) = (hashes(&a), hashes(&b));
        let changed = hb.difference(&ha).count();
        assert!(changed <= 2, "{changed} chunks changed for one insertion");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn same_cuts_for_any_read_pattern(len in 0usize..1_500_000, step in 1usize..300_000, seed: u64) {
            let p = ChunkParams { min: 4096, avg: 16384, max: 65536 };
            let data = pseudo_random(len, seed);
            prop_assert_eq!(lens_of(&data, step, p), reference(&data, p));
        }
    }
}
