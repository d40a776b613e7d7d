//! A fixed-size bitmap: the per-update chunk state of a node ("have", "requested").
//!
//! One bit per chunk keeps per-node state small enough for the simulator to hold
//! 100,000 engines: a 1 GiB update of ~16,000 chunks costs 2 KiB per bitmap.

/// A set of chunk indexes `0..len`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
    len: u32,
    ones: u32,
}

impl Bitmap {
    pub fn new(len: u32) -> Bitmap {
        Bitmap {
            words: vec![0; (len as usize).div_ceil(64)],
            len,
            ones: 0,
        }
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many indexes are set.
    pub fn count(&self) -> u32 {
        self.ones
    }

    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Sets `i`; returns whether it was newly set. Out-of-range indexes are ignored.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.words[(i / 64) as usize] |= 1 << (i % 64);
        self.ones += 1;
        true
    }

    /// Clears `i`; returns whether it was set.
    pub fn clear(&mut self, i: u32) -> bool {
        if !self.get(i) {
            return false;
        }
        self.words[(i / 64) as usize] &= !(1 << (i % 64));
        self.ones -= 1;
        true
    }

    /// The first index at or after `from` that is set here and in none of `exclude`.
    pub fn first_set_not_in(&self, from: u32, exclude: &[&Bitmap]) -> Option<u32> {
        let mut w = (from / 64) as usize;
        let mut mask = u64::MAX << (from % 64);
        while w < self.words.len() {
            let mut bits = self.words[w] & mask;
            for other in exclude {
                bits &= !other.words.get(w).copied().unwrap_or(0);
            }
            if bits != 0 {
                let i = w as u32 * 64 + bits.trailing_zeros();
                return (i < self.len).then_some(i);
            }
            w += 1;
            mask = u64::MAX;
        }
        None
    }

    /// Clears every index.
    pub fn clear_all(&mut self) {
        self.words.fill(0);
        self.ones = 0;
    }

    /// The first index at or after `from` whose bit is `value`, or `len` if none.
    /// Bits past `len` are always clear, so a search for a clear bit stops at `len`.
    fn next(&self, from: u32, value: bool) -> u32 {
        let mut w = (from / 64) as usize;
        let mut mask = u64::MAX << (from % 64);
        while w < self.words.len() {
            let word = if value { self.words[w] } else { !self.words[w] };
            let bits = word & mask;
            if bits != 0 {
                return (w as u32 * 64 + bits.trailing_zeros()).min(self.len);
            }
            w += 1;
            mask = u64::MAX;
        }
        self.len
    }

    /// The set indexes as inclusive-exclusive ranges `[start, end)`, in order.
    /// Scans a word at a time: a 1 GiB update's bitmap is 256 words.
    pub fn ranges(&self) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        let mut start = self.next(0, true);
        while start < self.len {
            let end = self.next(start, false);
            out.push((start, end));
            start = self.next(end, true);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_count() {
        let mut b = Bitmap::new(130);
        assert!(b.set(0) && b.set(64) && b.set(129));
        assert!(!b.set(64), "set twice");
        assert!(!b.set(130), "out of range");
        assert_eq!(b.count(), 3);
        assert!(b.clear(64) && !b.clear(64));
        assert_eq!(b.ranges(), vec![(0, 1), (129, 130)]);
    }

    #[test]
    fn ranges_match_a_bit_by_bit_scan() {
        for len in [0u32, 1, 63, 64, 65, 128, 200] {
            for seed in 0u64..50 {
                let mut b = Bitmap::new(len);
                let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                for i in 0..len {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Long runs as well as single bits.
                    if (x >> (seed % 4)) & 3 != 0 {
                        b.set(i);
                    }
                }
                let mut want = Vec::new();
                let mut i = 0;
                while i < len {
                    if b.get(i) {
                        let s = i;
                        while i < len && b.get(i) {
                            i += 1;
                        }
                        want.push((s, i));
                    } else {
                        i += 1;
                    }
                }
                assert_eq!(b.ranges(), want, "len {len} seed {seed}");
            }
        }
        let mut full = Bitmap::new(128);
        (0..128).for_each(|i| {
            full.set(i);
        });
        assert_eq!(full.ranges(), vec![(0, 128)]);
        full.clear_all();
        assert_eq!((full.count(), full.ranges()), (0, vec![]));
    }

    #[test]
    fn first_set_not_in_skips_excluded() {
        let mut have = Bitmap::new(200);
        let mut busy = Bitmap::new(200);
        for i in 10..150 {
            have.set(i);
        }
        for i in 10..100 {
            busy.set(i);
        }
        assert_eq!(have.first_set_not_in(0, &[&busy]), Some(100));
        assert_eq!(have.first_set_not_in(120, &[]), Some(120));
        assert_eq!(have.first_set_not_in(150, &[]), None);
        let full = {
            let mut f = Bitmap::new(200);
            (0..200).for_each(|i| {
                f.set(i);
            });
            f
        };
        assert_eq!(have.first_set_not_in(0, &[&full]), None);
    }
}
