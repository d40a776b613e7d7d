//! Chunk deltas: a new chunk written as copies out of chunks the receiver already holds
//! (of an earlier version, the *base*) plus the bytes that are new (PROTOCOL.md §13.2).
//!
//! Content-defined chunking keeps the chunks an edit does not touch, but every chunk an
//! edit touches is new as a whole: 5% of a file rewritten in a thousand small runs
//! touches nearly every 64 KiB chunk. A delta moves only the changed bytes of such a
//! chunk.
//!
//! - [`Plan`] picks, for each chunk of an update that its base lacks, a few base chunks
//!   to draw from: those of the same file between the same unchanged neighbours, near
//!   the same relative position. It reads only the two manifests.
//! - [`encode`] (the sender) cuts the references and the new chunk into small
//!   content-defined blocks, finds the new chunk's blocks among the references' (bytes
//!   compared, so a hash collision cannot mislead it), stretches every match byte by
//!   byte both ways, and writes copies for the matches and literals for the rest. An
//!   in-place edit then costs about its own size.
//! - [`Delta::parse`] (the receiver) checks a delta against the lengths it knows before
//!   it reads anything, and [`Delta::apply`] rebuilds the chunk from base chunks out of
//!   its own store. The result is verified against the manifest's hash like any chunk,
//!   so a wrong delta costs a refetch, never a bad chunk.
//!
//! Nothing here touches the store or the network.

use super::Hash;
use super::manifest::{ChunkRef, Manifest};
use fastcdc::v2020::{Normalization, cut, select_masks};
use std::collections::HashMap;

/// Op tag: literal bytes follow (u32 length, then the bytes).
pub const OP_LITERAL: u8 = 0;
/// Op tag: copy from a base chunk (u32 base chunk index, u32 offset, u32 length).
pub const OP_COPY: u8 = 1;
const COPY_LEN: usize = 13;
const LITERAL_HEADER: usize = 5;

/// Block sizes for matching: small enough that an edit spoils little, large enough
/// that a block seldom recurs by chance.
const BLOCK_MIN: usize = 256;
const BLOCK_AVG: usize = 1024;
const BLOCK_MAX: usize = 4096;
/// A copy shorter than this costs more than the bytes it saves.
const MIN_COPY: usize = 32;

/// How many base chunks a new chunk may draw from, and their total size at most.
pub const MAX_REFERENCES: usize = 8;
pub const MAX_REFERENCE_BYTES: usize = 2 * 1024 * 1024;

/// Why a delta cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeltaError {
    #[error("the delta ends inside an op at byte {0}")]
    Truncated(usize),
    #[error("unknown delta op {tag} at byte {at}")]
    UnknownOp { tag: u8, at: usize },
    #[error("an empty delta op at byte {0}")]
    Empty(usize),
    #[error("a copy from base chunk {index}, which the base does not have")]
    NoSuchBase { index: u32 },
    #[error("a copy of {len} bytes at {offset} from base chunk {index} of {chunk_len} bytes")]
    OutOfBase {
        index: u32,
        offset: u32,
        len: u32,
        chunk_len: u32,
    },
    #[error("the delta builds {built} bytes; the chunk has {expected}")]
    WrongLength { built: u64, expected: u32 },
    #[error("base chunk {0} was not supplied")]
    Missing(u32),
    #[error("the delta copies from more than {MAX_REFERENCES} base chunks")]
    TooManyBases,
}

/// One step of a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    Literal(&'a [u8]),
    Copy { base: u32, offset: u32, len: u32 },
}

/// A parsed, checked delta, borrowing its literals from the received bytes.
#[derive(Debug)]
pub struct Delta<'a> {
    ops: Vec<Op<'a>>,
    bases: Vec<u32>,
    len: u32,
}

impl<'a> Delta<'a> {
    /// Parses `bytes` as a delta for a chunk of `target_len` bytes. `base_len` gives
    /// the length of each base chunk by index, `None` past the end of the base. A delta
    /// may copy from at most [`MAX_REFERENCES`] distinct base chunks, so that rebuilding
    /// it reads a bounded amount.
    pub fn parse(
        bytes: &'a [u8],
        target_len: u32,
        base_len: impl Fn(u32) -> Option<u32>,
    ) -> Result<Delta<'a>, DeltaError> {
        let mut ops = Vec::new();
        let mut bases: Vec<u32> = Vec::new();
        let mut built = 0u64;
        let mut at = 0usize;
        let u32_at = |i: usize| -> Option<u32> {
            let b = bytes.get(i..i + 4)?;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        while at < bytes.len() {
            let op_at = at;
            match bytes[at] {
                OP_LITERAL => {
                    let len = u32_at(at + 1).ok_or(DeltaError::Truncated(op_at))? as usize;
                    let start = at + LITERAL_HEADER;
                    let data = start
                        .checked_add(len)
                        .and_then(|end| bytes.get(start..end))
                        .ok_or(DeltaError::Truncated(op_at))?;
                    if len == 0 {
                        return Err(DeltaError::Empty(op_at));
                    }
                    built += len as u64;
                    ops.push(Op::Literal(data));
                    at = start + len;
                }
                OP_COPY => {
                    let field =
                        |k: usize| u32_at(at + 1 + 4 * k).ok_or(DeltaError::Truncated(op_at));
                    let (base, offset, len) = (field(0)?, field(1)?, field(2)?);
                    if len == 0 {
                        return Err(DeltaError::Empty(op_at));
                    }
                    let chunk_len = base_len(base).ok_or(DeltaError::NoSuchBase { index: base })?;
                    if u64::from(offset) + u64::from(len) > u64::from(chunk_len) {
                        return Err(DeltaError::OutOfBase {
                            index: base,
                            offset,
                            len,
                            chunk_len,
                        });
                    }
                    if !bases.contains(&base) {
                        if bases.len() == MAX_REFERENCES {
                            return Err(DeltaError::TooManyBases);
                        }
                        bases.push(base);
                    }
                    built += u64::from(len);
                    ops.push(Op::Copy { base, offset, len });
                    at += COPY_LEN;
                }
                tag => return Err(DeltaError::UnknownOp { tag, at: op_at }),
            }
            if built > u64::from(target_len) {
                break;
            }
        }
        if built != u64::from(target_len) {
            return Err(DeltaError::WrongLength {
                built,
                expected: target_len,
            });
        }
        Ok(Delta {
            ops,
            bases,
            len: target_len,
        })
    }

    /// The base chunks this delta copies from (at most [`MAX_REFERENCES`]), each once,
    /// in order of first use.
    pub fn bases(&self) -> &[u32] {
        &self.bases
    }

    /// Rebuilds the chunk from the base chunks named by [`Delta::bases`].
    pub fn apply(&self, bases: &HashMap<u32, Vec<u8>>) -> Result<Vec<u8>, DeltaError> {
        let mut out = Vec::with_capacity(self.len as usize);
        for op in &self.ops {
            match *op {
                Op::Literal(data) => out.extend_from_slice(data),
                Op::Copy { base, offset, len } => {
                    let chunk = bases.get(&base).ok_or(DeltaError::Missing(base))?;
                    let (start, end) = (offset as usize, offset as usize + len as usize);
                    let part = chunk.get(start..end).ok_or(DeltaError::OutOfBase {
                        index: base,
                        offset,
                        len,
                        chunk_len: chunk.len() as u32,
                    })?;
                    out.extend_from_slice(part);
                }
            }
        }
        Ok(out)
    }
}

/// Writes ops in the wire encoding.
pub fn write(ops: &[Op<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        match *op {
            Op::Literal(data) => {
                out.push(OP_LITERAL);
                out.extend_from_slice(&(data.len() as u32).to_be_bytes());
                out.extend_from_slice(data);
            }
            Op::Copy { base, offset, len } => {
                out.push(OP_COPY);
                for v in [base, offset, len] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
    }
    out
}

/// A reference chunk cut into matching blocks: (block hash, offset, length).
#[derive(Debug, Default)]
pub struct Outline {
    blocks: Vec<(u64, u32, u32)>,
}

impl Outline {
    /// Bytes of memory it takes, about.
    pub fn footprint(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<(u64, u32, u32)>()
    }

    pub fn of(data: &[u8]) -> Outline {
        Outline {
            blocks: blocks(data)
                .map(|(at, len)| (block_hash(&data[at..at + len]), at as u32, len as u32))
                .collect(),
        }
    }
}

/// A base chunk a sender draws from: its index in the base's distinct-chunk list, its
/// bytes and their outline.
pub struct Reference<'a> {
    pub index: u32,
    pub data: &'a [u8],
    pub outline: &'a Outline,
}

/// Encodes `target` against `refs`; `None` when the delta would not be smaller than
/// the chunk itself (then the chunk is sent as it is).
pub fn encode(target: &[u8], refs: &[Reference<'_>]) -> Option<Vec<u8>> {
    let mut index: HashMap<u64, (usize, u32, u32)> = HashMap::new();
    for (r, reference) in refs.iter().enumerate() {
        for &(hash, at, len) in &reference.outline.blocks {
            index.entry(hash).or_insert((r, at, len));
        }
    }
    if index.is_empty() {
        return None;
    }
    let mut ops = Vec::new();
    // Everything before `done` is covered by ops already.
    let mut done = 0usize;
    for (at, len) in blocks(target) {
        if at < done {
            continue;
        }
        let block = &target[at..at + len];
        let Some(&(r, ref_at, ref_len)) = index.get(&block_hash(block)) else {
            continue;
        };
        let data = refs[r].data;
        let (ref_at, ref_len) = (ref_at as usize, ref_len as usize);
        if data[ref_at..ref_at + ref_len] != *block {
            continue;
        }
        // Stretch the match back to `done` and forward to the end of either chunk.
        let mut back = 0;
        while at - back > done && ref_at > back && target[at - back - 1] == data[ref_at - back - 1]
        {
            back += 1;
        }
        let mut ahead = len;
        while at + ahead < target.len()
            && ref_at + ahead < data.len()
            && target[at + ahead] == data[ref_at + ahead]
        {
            ahead += 1;
        }
        if back + ahead < MIN_COPY {
            continue;
        }
        let start = at - back;
        if start > done {
            ops.push(Op::Literal(&target[done..start]));
        }
        ops.push(Op::Copy {
            base: refs[r].index,
            offset: (ref_at - back) as u32,
            len: (back + ahead) as u32,
        });
        done = at + ahead;
    }
    if ops.is_empty() {
        return None;
    }
    if done < target.len() {
        ops.push(Op::Literal(&target[done..]));
    }
    let size: usize = ops
        .iter()
        .map(|op| match op {
            Op::Literal(d) => LITERAL_HEADER + d.len(),
            Op::Copy { .. } => COPY_LEN,
        })
        .sum();
    (size < target.len()).then(|| write(&ops))
}

/// The matching blocks of `data`, as (offset, length).
fn blocks(data: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let (mask_s, mask_l) = select_masks(BLOCK_AVG, Normalization::Level1);
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= data.len() {
            return None;
        }
        let rest = &data[at..];
        let (_, len) = cut(
            rest,
            BLOCK_MIN,
            BLOCK_AVG,
            BLOCK_MAX,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
        );
        let len = len.clamp(1, rest.len());
        let block = (at, len);
        at += len;
        Some(block)
    })
}

fn block_hash(block: &[u8]) -> u64 {
    let h = blake3::hash(block);
    let b = h.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// For each distinct chunk of an update that its base lacks, the base chunks a sender
/// draws its delta from (indexes into the base's distinct-chunk list).
///
/// A file's new chunks lie in runs between chunks it shares with the same path in the
/// base; each run replaced the base chunks between the same two shared chunks (or the
/// file's start or end). A new chunk draws from the base chunks of that gap around the
/// same relative byte position: at most [`MAX_REFERENCES`] of them and
/// [`MAX_REFERENCE_BYTES`] in all.
#[derive(Debug, Default)]
pub struct Plan {
    /// Per chunk: the file it is drawn for (its index in the update's files), and the
    /// base chunks.
    references: HashMap<u32, (u32, Vec<u32>)>,
}

impl Plan {
    pub fn new(update: &Manifest, base: &Manifest) -> Plan {
        let base_list = base.distinct_chunk_list();
        let base_index: HashMap<Hash, u32> = base_list
            .iter()
            .enumerate()
            .map(|(i, c)| (c.hash(), i as u32))
            .collect();
        let update_index: HashMap<Hash, u32> = update
            .distinct_chunk_list()
            .iter()
            .enumerate()
            .map(|(i, c)| (c.hash(), i as u32))
            .collect();
        let base_files: HashMap<&str, &[ChunkRef]> = base
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.chunks.as_slice()))
            .collect();
        let mut references = HashMap::new();
        for (number, file) in update.files.iter().enumerate() {
            let Some(old) = base_files.get(file.path.as_str()) else {
                continue;
            };
            let mut refs = HashMap::new();
            plan_file(&file.chunks, old, &base_index, &update_index, &mut refs);
            for (index, r) in refs {
                references.entry(index).or_insert((number as u32, r));
            }
        }
        Plan { references }
    }

    /// The base chunks to draw chunk `index` of the update from; empty when none.
    pub fn references(&self, index: u32) -> &[u32] {
        self.references
            .get(&index)
            .map_or(&[], |(_, r)| r.as_slice())
    }

    /// How many chunks it plans for: a measure of its size.
    pub fn planned(&self) -> usize {
        self.references.len()
    }

    /// The file (its index in the update's files) chunk `index` is drawn for.
    pub fn file_of(&self, index: u32) -> Option<u32> {
        self.references.get(&index).map(|(file, _)| *file)
    }
}

fn plan_file(
    new: &[ChunkRef],
    old: &[ChunkRef],
    base_index: &HashMap<Hash, u32>,
    update_index: &HashMap<Hash, u32>,
    references: &mut HashMap<u32, Vec<u32>>,
) {
    // Where each chunk of either file starts, and where a shared chunk sits in the old.
    let (old_at, new_at) = (starts(old), starts(new));
    let mut old_pos: HashMap<Hash, usize> = HashMap::new();
    for (i, c) in old.iter().enumerate() {
        old_pos.entry(c.hash()).or_insert(i);
    }

    let mut i = 0;
    while i < new.len() {
        if old_pos.contains_key(&new[i].hash()) {
            i += 1;
            continue;
        }
        // A run of new chunks [i, j), between shared neighbours.
        let mut j = i;
        while j < new.len() && !old_pos.contains_key(&new[j].hash()) {
            j += 1;
        }
        let lo = if i == 0 {
            0
        } else {
            old_pos[&new[i - 1].hash()] + 1
        };
        let hi = if j == new.len() {
            old.len()
        } else {
            old_pos[&new[j].hash()]
        };
        // Neighbours out of order: the run is drawn from the whole old file.
        let (lo, hi) = if lo < hi { (lo, hi) } else { (0, old.len()) };
        if lo >= hi {
            i = j;
            continue;
        }
        let (new_span, old_span) = (new_at[j] - new_at[i], old_at[hi] - old_at[lo]);
        for k in i..j {
            let Some(&index) = update_index.get(&new[k].hash()) else {
                continue;
            };
            if base_index.contains_key(&new[k].hash()) || references.contains_key(&index) {
                continue;
            }
            // The old byte position at the same share of the gap, and its chunk.
            let into = u128::from(new_at[k] - new_at[i]) * u128::from(old_span)
                / u128::from(new_span.max(1));
            let target = old_at[lo] + into as u64;
            let centre = old_at[lo..hi]
                .partition_point(|&a| a <= target)
                .saturating_sub(1)
                + lo;
            let mut picked: Vec<usize> = vec![centre];
            let mut bytes = old[centre].size() as usize;
            let (mut left, mut right) = (centre, centre + 1);
            // Grow around the centre, one chunk each side in turn.
            while picked.len() < MAX_REFERENCES && (left > lo || right < hi) {
                let mut grew = false;
                for take_right in [true, false] {
                    let next = if take_right {
                        (right < hi).then_some(right)
                    } else {
                        (left > lo).then(|| left - 1)
                    };
                    let Some(n) = next else { continue };
                    let size = old[n].size() as usize;
                    if picked.len() == MAX_REFERENCES || bytes + size > MAX_REFERENCE_BYTES {
                        continue;
                    }
                    bytes += size;
                    picked.push(n);
                    grew = true;
                    if take_right {
                        right += 1;
                    } else {
                        left -= 1;
                    }
                }
                if !grew {
                    break;
                }
            }
            picked.sort_unstable();
            let refs: Vec<u32> = picked
                .iter()
                .filter_map(|&p| base_index.get(&old[p].hash()).copied())
                .fold(Vec::new(), |mut v, r| {
                    if !v.contains(&r) {
                        v.push(r);
                    }
                    v
                });
            references.insert(index, refs);
        }
        i = j;
    }
}

/// The offset where each chunk starts, then the total length.
fn starts(chunks: &[ChunkRef]) -> Vec<u64> {
    let mut at = 0u64;
    let mut starts: Vec<u64> = chunks
        .iter()
        .map(|c| {
            let start = at;
            at += u64::from(c.size());
            start
        })
        .collect();
    starts.push(at);
    starts
}

#[cfg(test)]
pub(crate) mod tests;
