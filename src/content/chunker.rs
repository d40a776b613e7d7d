//! Content-defined chunking (FastCDC 2020) over streams, with bounded memory.
//!
//! [`Segmenter`] reads a stream into large buffers and cuts each buffer into chunks with
//! `fastcdc::v2020::cut`. It hands out [`Segment`]s: a buffer plus the lengths of the
//! whole chunks in it, so a consumer can hash and store chunks straight out of the
//! buffer (no per-chunk allocation) and the cutting can run on another thread than the
//! hashing. The cut points are exactly those of FastCDC run over the whole stream at
//! once; a test checks that. The parameters are part of the protocol
//! (`protocol/PROTOCOL.md`, "Chunking").

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
    /// The bytes; `data.len()` is the sum of `lens`.
    pub data: Vec<u8>,
    /// Length of each chunk in `data`, in order.
    pub lens: Vec<u32>,
}

impl Segment {
    /// Iterates over the chunks of this segment.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        let mut at = 0usize;
        self.lens.iter().map(move |&len| {
            let chunk = &self.data[at..at + len as usize];
            at += len as usize;
            chunk
        })
    }
}

/// Cuts a stream into content-defined chunks, one [`Segment`] at a time.
pub struct Segmenter<R> {
    source: R,
    params: ChunkParams,
    masks: (u64, u64),
    /// Bytes read but not yet handed out: always a prefix of an unfinished chunk run.
    carry: Vec<u8>,
    eof: bool,
    /// Buffers returned by the consumer, reused to keep memory flat.
    spare: Vec<Vec<u8>>,
}

impl<R: Read> Segmenter<R> {
    pub fn new(source: R, params: ChunkParams) -> Segmenter<R> {
        Segmenter {
            source,
            params,
            masks: select_masks(params.avg, Normalization::Level1),
            carry: Vec::new(),
            eof: false,
            spare: Vec::new(),
        }
    }

    /// Gives a used segment's buffer back for reuse.
    pub fn recycle(&mut self, segment: Segment) {
        if self.spare.len() < 2 {
            self.spare.push(segment.data);
        }
    }

    /// Reads and cuts the next segment; `None` at the end of the stream.
    pub fn next_segment(&mut self) -> io::Result<Option<Segment>> {
        let mut buf = std::mem::take(&mut self.carry);
        let capacity = SEGMENT_BYTES.max(2 * self.params.max);
        if buf.capacity() < capacity {
            buf.reserve_exact(capacity - buf.len());
        }
        while !self.eof && buf.len() < capacity {
            let start = buf.len();
            buf.resize(capacity, 0);
            match self.source.read(&mut buf[start..]) {
                Ok(0) => {
                    buf.truncate(start);
                    self.eof = true;
                }
                Ok(n) => buf.truncate(start + n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(start),
                Err(e) => return Err(e),
            }
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let ChunkParams { min, avg, max } = self.params;
        let (mask_s, mask_l) = self.masks;
        let mut lens = Vec::with_capacity(buf.len() / min + 1);
        let mut at = 0;
        // Without end of stream, only cut where at least `max` bytes are visible: that is
        // all `cut` ever looks at, so the cut points match a whole-stream FastCDC run.
        while at < buf.len() && (self.eof || buf.len() - at >= max) {
            let (_, len) = cut(
                &buf[at..],
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
        let mut carry = self.spare.pop().unwrap_or_default();
        carry.clear();
        carry.extend_from_slice(&buf[at..]);
        buf.truncate(at);
        self.carry = carry;
        Ok(Some(Segment { data: buf, lens }))
    }
}

impl<R: Read> Iterator for Segmenter<R> {
    type Item = io::Result<Segment>;
    fn next(&mut self) -> Option<io::Result<Segment>> {
        self.next_segment().transpose()
    }
}

#[cfg(test)]
mod tests {
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

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
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
        while let Some(s) = seg.next_segment().expect("in-memory read") {
            assert_eq!(
                s.data.len(),
                s.lens.iter().map(|&l| l as usize).sum::<usize>()
            );
            lens.extend_from_slice(&s.lens);
            seg.recycle(s);
        }
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
