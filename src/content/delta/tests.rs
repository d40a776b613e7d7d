use super::*;
use crate::content::chunker::manifest_in_memory;
use crate::content::chunker::tests::pseudo_random;
use proptest::prelude::*;

/// Deterministic pseudo-random bytes, so the figures below do not move.
pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
    pseudo_random(len, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The delta of `new` against `bases`, as a sender makes it.
fn delta_of(new: &[u8], bases: &[(u32, Vec<u8>)]) -> Option<Vec<u8>> {
    let outlines: Vec<Outline> = bases.iter().map(|(_, d)| Outline::of(d)).collect();
    let refs: Vec<Reference<'_>> = bases
        .iter()
        .zip(&outlines)
        .map(|((index, data), outline)| Reference {
            index: *index,
            data,
            outline,
        })
        .collect();
    encode(new, &refs)
}

/// Encodes `new` against `bases`, checks the delta is under `most` bytes and rebuilds
/// `new` exactly.
fn assert_round_trip(new: &[u8], bases: &[(u32, Vec<u8>)], most: usize) {
    let delta = delta_of(new, bases).expect("a delta");
    assert!(delta.len() < most, "the delta has {} bytes", delta.len());
    assert_eq!(
        rebuild(&delta, new.len() as u32, bases).expect("applies"),
        new
    );
}

fn rebuild(delta: &[u8], target_len: u32, bases: &[(u32, Vec<u8>)]) -> Result<Vec<u8>, DeltaError> {
    let lens: HashMap<u32, u32> = bases.iter().map(|(i, d)| (*i, d.len() as u32)).collect();
    let parsed = Delta::parse(delta, target_len, |i| lens.get(&i).copied())?;
    let supplied: HashMap<u32, Vec<u8>> = parsed
        .bases()
        .iter()
        .filter_map(|i| bases.iter().find(|(j, _)| *j == *i).cloned())
        .collect();
    parsed.apply(&supplied)
}

#[test]
fn an_in_place_edit_costs_about_its_own_size() {
    let old = noise(1, 64 * 1024);
    let mut new = old.clone();
    new[30_000..30_800].copy_from_slice(&noise(2, 800));
    assert_round_trip(&new, &[(7, old)], 800 + 64);
}

#[test]
fn an_insertion_and_a_shift_are_copied_around() {
    let old = noise(3, 100_000);
    let mut new = old[..40_000].to_vec();
    new.extend_from_slice(&noise(4, 3_000));
    new.extend_from_slice(&old[40_000..]);
    let bases = [(0, old[..50_000].to_vec()), (1, old[50_000..].to_vec())];
    assert_round_trip(&new, &bases, 3_000 + 64);
}

#[test]
fn unrelated_content_is_sent_whole() {
    let bases = [(0, noise(5, 64 * 1024))];
    assert_eq!(delta_of(&noise(6, 64 * 1024), &bases), None);
    assert_eq!(delta_of(&noise(6, 10), &[]), None);
}

#[test]
fn malformed_deltas_are_refused_with_the_reason() {
    let base = |i: u32| (i < 2).then_some(100u32);
    let lit = |data: &[u8]| write(&[Op::Literal(data)]);
    let copy = |base, offset, len| write(&[Op::Copy { base, offset, len }]);
    let cases: Vec<(Vec<u8>, u32, DeltaError)> = vec![
        (vec![0, 0, 0], 3, DeltaError::Truncated(0)),
        (vec![0, 0, 0, 0, 9, 1], 9, DeltaError::Truncated(0)),
        (vec![1, 0, 0, 0, 0, 0], 1, DeltaError::Truncated(0)),
        (vec![7], 1, DeltaError::UnknownOp { tag: 7, at: 0 }),
        (lit(b""), 0, DeltaError::Empty(0)),
        (copy(0, 0, 0), 0, DeltaError::Empty(0)),
        (copy(2, 0, 1), 1, DeltaError::NoSuchBase { index: 2 }),
        (
            copy(1, 90, 11),
            11,
            DeltaError::OutOfBase {
                index: 1,
                offset: 90,
                len: 11,
                chunk_len: 100,
            },
        ),
        (
            copy(1, u32::MAX, 2),
            2,
            DeltaError::OutOfBase {
                index: 1,
                offset: u32::MAX,
                len: 2,
                chunk_len: 100,
            },
        ),
        (
            lit(b"abc"),
            4,
            DeltaError::WrongLength {
                built: 3,
                expected: 4,
            },
        ),
        (
            lit(b"abcde"),
            4,
            DeltaError::WrongLength {
                built: 5,
                expected: 4,
            },
        ),
        (
            vec![],
            4,
            DeltaError::WrongLength {
                built: 0,
                expected: 4,
            },
        ),
    ];
    for (bytes, len, want) in cases {
        let got = Delta::parse(&bytes, len, base).expect_err("refused");
        assert_eq!(got, want, "for {bytes:?}");
    }
    // Copies from more base chunks than a sender ever draws from.
    let many: Vec<Op<'_>> = (0..=MAX_REFERENCES as u32)
        .map(|base| Op::Copy {
            base,
            offset: 0,
            len: 1,
        })
        .collect();
    let lens = |_| Some(100u32);
    let bytes = write(&many);
    assert_eq!(
        Delta::parse(&bytes, many.len() as u32, lens).expect_err("refused"),
        DeltaError::TooManyBases
    );
    assert!(Delta::parse(&write(&many[1..]), MAX_REFERENCES as u32, lens).is_ok());
    // A base chunk the caller could not supply.
    let bytes = copy(1, 0, 5);
    let parsed = Delta::parse(&bytes, 5, base).expect("well formed");
    assert_eq!(parsed.apply(&HashMap::new()), Err(DeltaError::Missing(1)));
}

proptest! {
    #[test]
    fn garbage_never_panics_and_what_parses_builds_its_length(bytes in proptest::collection::vec(any::<u8>(), 0..200), len in 0u32..300) {
        let lens = |i: u32| (i < 3).then_some(64u32);
        if let Ok(delta) = Delta::parse(&bytes, len, lens) {
            let bases: HashMap<u32, Vec<u8>> = (0..3).map(|i| (i, vec![i as u8; 64])).collect();
            prop_assert_eq!(delta.apply(&bases).expect("applies").len(), len as usize);
        }
    }

    #[test]
    fn any_edit_round_trips(seed in any::<u64>(), at in 0usize..60_000, edit in 1usize..5_000) {
        let old = noise(seed, 64 * 1024);
        let mut new = old.clone();
        let end = (at + edit).min(new.len());
        new[at..end].copy_from_slice(&noise(seed ^ 1, end - at));
        let bases = vec![(0u32, old)];
        if let Some(delta) = delta_of(&new, &bases) {
            prop_assert!(delta.len() < new.len());
            prop_assert_eq!(rebuild(&delta, new.len() as u32, &bases).expect("applies"), new);
        }
    }
}

/// One file, chunked as `arbor publish` does, as a manifest, and its chunks by hash.
pub(crate) fn manifest_of(data: &[u8]) -> (Manifest, HashMap<Hash, Vec<u8>>) {
    let (manifest, cut) = manifest_in_memory(data);
    let bytes = cut.into_iter().map(|(h, c)| (h, c.to_vec())).collect();
    (manifest, bytes)
}

/// What a v2 with 5% of its bytes rewritten in `runs` evenly spread runs moves, as a
/// share of its size: new chunks as deltas where a delta is smaller. Every delta is
/// applied and checked against its chunk's hash.
fn share_moved(size: usize, runs: usize) -> f64 {
    let v1 = noise(10, size);
    let mut v2 = v1.clone();
    let run = size / 20 / runs;
    for i in 0..runs {
        let at = i * size / runs + size / (2 * runs);
        v2[at..at + run].copy_from_slice(&noise(11 + i as u64, run));
    }
    let (m1, bytes1) = manifest_of(&v1);
    let (m2, bytes2) = manifest_of(&v2);
    let plan = Plan::new(&m2, &m1);
    let base_list = m1.distinct_chunk_list();
    let have: std::collections::HashSet<Hash> = base_list.iter().map(|c| c.hash()).collect();
    let mut moved = 0usize;
    for (index, c) in m2.distinct_chunk_list().iter().enumerate() {
        if have.contains(&c.hash()) {
            continue;
        }
        let target = &bytes2[&c.hash()];
        let bases: Vec<(u32, Vec<u8>)> = plan
            .references(index as u32)
            .iter()
            .map(|&b| (b, bytes1[&base_list[b as usize].hash()].clone()))
            .collect();
        match delta_of(target, &bases) {
            Some(delta) => {
                let built = rebuild(&delta, c.size(), &bases).expect("applies");
                assert_eq!(Hash::of(&built), c.hash());
                moved += delta.len();
            }
            None => moved += target.len(),
        }
    }
    moved as f64 / size as f64
}

#[test]
fn five_percent_changed_anywhere_moves_under_ten_percent() {
    // 8 MiB keeps the test quick; the runs are as many per MiB as 64 MiB with
    // 16 to 8,192 runs. benches/delta.sh measures the same through real nodes.
    for runs in [2, 16, 128, 512, 1024] {
        let share = share_moved(8 << 20, runs);
        assert!(share <= 0.10, "{runs} runs: {:.1}% moved", share * 100.0);
    }
}

#[test]
fn the_plan_draws_each_new_chunk_from_its_own_region_of_the_old_file() {
    let v1 = noise(20, 4 << 20);
    let mut v2 = v1.clone();
    v2[3_000_000..3_000_100].copy_from_slice(&noise(21, 100));
    let (m1, _) = manifest_of(&v1);
    let (m2, _) = manifest_of(&v2);
    let plan = Plan::new(&m2, &m1);
    let base_list = m1.distinct_chunk_list();
    let have: std::collections::HashSet<Hash> = base_list.iter().map(|c| c.hash()).collect();
    let new: Vec<u32> = m2
        .distinct_chunk_list()
        .iter()
        .enumerate()
        .filter(|(_, c)| !have.contains(&c.hash()))
        .map(|(i, _)| i as u32)
        .collect();
    assert!(
        !new.is_empty() && new.len() <= 3,
        "{} new chunks",
        new.len()
    );
    // The old chunks between the same unchanged neighbours hold offset 3,000,000.
    let starts = starts(&base_list);
    for i in new {
        let refs = plan.references(i);
        assert!(!refs.is_empty() && refs.len() <= MAX_REFERENCES);
        assert!(refs.iter().any(|&r| {
            let r = r as usize;
            starts[r] <= 3_000_000 && 3_000_000 < starts[r] + u64::from(base_list[r].size())
        }));
    }
}
