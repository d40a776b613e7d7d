//! Waves and halting: which members of a group a partial approval reaches, and when
//! failure counts say a rollout should stop.
//!
//! Both are pure functions of their arguments. Wave membership is a deterministic
//! bucket per (update, node) (PROTOCOL.md §14.5); halting compares failure counts from
//! reports against an approval's [`Halt`] threshold. Wiring reports to halts, and
//! re-signing the rule set that records one, belong to the layers above.

use super::{FULL_WAVE, Halt};
use crate::content::Hash;
use crate::trust::PublicKey;
use std::fmt;

/// Domain-separation prefix of wave buckets.
pub const WAVE_DOMAIN: &[u8] = b"arbor/wave/v1";

/// The wave bucket of `node` for `update`: 0 to 9,999.
///
/// blake3(`arbor/wave/v1` ‖ update (32 bytes) ‖ node key (32 bytes)), its first 8 bytes
/// as a little-endian u64, modulo 10,000. Keyed by the update too, so that different
/// updates pick different early adopters.
pub fn bucket(update: &Hash, node: &PublicKey) -> u16 {
    let mut h = blake3::Hasher::new();
    h.update(WAVE_DOMAIN);
    h.update(&update.0);
    h.update(&node.0);
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    // The remainder is below 10,000, so it fits a u16.
    (u64::from_le_bytes(first) % u64::from(FULL_WAVE)) as u16
}

/// Whether `node` is in a wave of `wave` basis points (0 = nobody, 10,000 = everyone)
/// for `update`. Monotone: raising `wave` only adds nodes.
pub fn in_wave(update: &Hash, node: &PublicKey, wave: u16) -> bool {
    bucket(update, node) < wave
}

/// Parses a wave given as a percentage by people: `0` to `100`, at most two decimals,
/// an optional trailing `%` (`"5"`, `"12.5%"`, `"0.01"`). Returns basis points.
pub fn parse_wave(text: &str) -> Result<u16, BadWave> {
    let bad = || BadWave(text.chars().take(40).collect());
    let t = text.trim();
    let t = t.strip_suffix('%').unwrap_or(t);
    let (whole, frac) = match t.split_once('.') {
        Some((whole, frac)) if !frac.is_empty() => (whole, frac),
        Some(_) => return Err(bad()),
        None => (t, ""),
    };
    let digits = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || frac.len() > 2 || !(frac.is_empty() || digits(frac)) {
        return Err(bad());
    }
    let whole: u32 = whole.parse().map_err(|_| bad())?;
    let mut hundredths: u32 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    if frac.len() == 1 {
        hundredths *= 10;
    }
    let bp = whole * 100 + hundredths;
    u16::try_from(bp)
        .ok()
        .filter(|bp| *bp <= FULL_WAVE)
        .ok_or_else(bad)
}

/// A wave that is not a percentage from 0 to 100 with at most two decimals.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("wave {0:?} is not a percentage from 0 to 100 with at most two decimals")]
pub struct BadWave(pub String);

/// Outcomes reported for one update in one group, as a parent's roll-up counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Nodes that reported the update failed.
    pub failed: u64,
    /// Nodes counted for this update and group in any state (failed ones included).
    pub total: u64,
}

/// Why a rollout should stop: the threshold that was passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaltReason {
    /// At least `threshold` nodes failed.
    Failures { failed: u64, threshold: u64 },
    /// `failed` of `total` nodes failed, at least `threshold` basis points of them.
    Fraction {
        failed: u64,
        total: u64,
        threshold: u16,
    },
}

impl fmt::Display for HaltReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HaltReason::Failures { failed, threshold } => write!(
                f,
                "{failed} nodes failed, at or over the threshold of {threshold}"
            ),
            HaltReason::Fraction {
                failed,
                total,
                threshold,
            } => write!(
                f,
                "{failed} of {total} nodes failed, at or over the threshold of {}.{:02}%",
                threshold / 100,
                threshold % 100
            ),
        }
    }
}

/// Whether `outcomes` pass `halt`'s threshold: the count is checked first, then the
/// fraction (failed / total, with total taken as at least `failed`). `None`: carry on.
pub fn should_halt(halt: &Halt, outcomes: Outcomes) -> Option<HaltReason> {
    let failed = outcomes.failed;
    if let Some(threshold) = halt.failures
        && failed >= threshold
    {
        return Some(HaltReason::Failures { failed, threshold });
    }
    let total = outcomes.total.max(failed);
    if let Some(threshold) = halt.fraction
        && failed > 0
        && u128::from(failed) * u128::from(FULL_WAVE) >= u128::from(threshold) * u128::from(total)
    {
        return Some(HaltReason::Fraction {
            failed,
            total,
            threshold,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    #[test]
    fn wave_membership_is_deterministic_and_keyed_by_update() {
        let (u1, u2) = (Hash::of(b"u1"), Hash::of(b"u2"));
        assert_eq!(bucket(&u1, &key(1)), bucket(&u1, &key(1)));
        // Different updates pick different early adopters.
        let picks = |u: &Hash| (0..=255u8).filter(|n| in_wave(u, &key(*n), 2000)).count();
        let same = (0..=255u8)
            .filter(|n| in_wave(&u1, &key(*n), 2000) == in_wave(&u2, &key(*n), 2000))
            .count();
        assert!(picks(&u1) > 20 && picks(&u2) > 20);
        assert!(same < 256, "two updates chose exactly the same wave");
        assert!(!in_wave(&u1, &key(1), 0), "wave 0 holds nobody");
        assert!(in_wave(&u1, &key(1), FULL_WAVE), "wave 100% holds everyone");
    }

    #[test]
    fn wave_bucket_vector() {
        // Pinned: a change here is a wire change (PROTOCOL.md §14.5, rules-v1.json).
        let h = blake3::hash(&[WAVE_DOMAIN, &[0u8; 32][..], &[1u8; 32][..]].concat());
        let mut first = [0u8; 8];
        first.copy_from_slice(&h.as_bytes()[..8]);
        let want = (u64::from_le_bytes(first) % 10_000) as u16;
        assert_eq!(bucket(&Hash([0; 32]), &key(1)), want);
    }

    #[test]
    fn waves_parse_from_percentages() {
        assert_eq!(parse_wave("0"), Ok(0));
        assert_eq!(parse_wave("5"), Ok(500));
        assert_eq!(parse_wave("12.5%"), Ok(1250));
        assert_eq!(parse_wave("0.01"), Ok(1));
        assert_eq!(parse_wave("100"), Ok(10_000));
        assert_eq!(parse_wave(" 100.00 "), Ok(10_000));
        for bad in [
            "", "%", "100.01", "101", "-1", "1.234", "1.", ".5", "abc", "1e2", "0x10", "5%%",
        ] {
            assert!(parse_wave(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn halting_by_count_and_by_fraction() {
        let count = Halt {
            failures: Some(3),
            fraction: None,
        };
        assert_eq!(
            should_halt(
                &count,
                Outcomes {
                    failed: 2,
                    total: 9
                }
            ),
            None
        );
        assert_eq!(
            should_halt(
                &count,
                Outcomes {
                    failed: 3,
                    total: 9
                }
            ),
            Some(HaltReason::Failures {
                failed: 3,
                threshold: 3
            })
        );
        let fraction = Halt {
            failures: None,
            fraction: Some(1000), // 10%
        };
        let at = |failed, total| should_halt(&fraction, Outcomes { failed, total });
        assert_eq!(at(0, 0), None);
        assert_eq!(at(0, 100), None);
        assert_eq!(at(9, 100), None);
        assert_eq!(
            at(10, 100),
            Some(HaltReason::Fraction {
                failed: 10,
                total: 100,
                threshold: 1000
            })
        );
        // Inconsistent input (more failures than nodes) counts the failures as the total.
        assert!(at(5, 0).is_some());
        assert_eq!(
            at(u64::MAX, u64::MAX).map(|r| r.to_string()),
            Some(format!(
                "{0} of {0} nodes failed, at or over the threshold of 10.00%",
                u64::MAX
            ))
        );
        let both = Halt {
            failures: Some(50),
            fraction: Some(500),
        };
        assert!(matches!(
            should_halt(
                &both,
                Outcomes {
                    failed: 50,
                    total: 10_000
                }
            ),
            Some(HaltReason::Failures { .. })
        ));
        assert!(matches!(
            should_halt(
                &both,
                Outcomes {
                    failed: 5,
                    total: 100
                }
            ),
            Some(HaltReason::Fraction { .. })
        ));
    }

    proptest! {
        #[test]
        fn raising_a_wave_only_adds_members(
            update in any::<[u8; 32]>(),
            node in any::<[u8; 32]>(),
            a in 0u16..=FULL_WAVE,
            b in 0u16..=FULL_WAVE,
        ) {
            let (lo, hi) = (a.min(b), a.max(b));
            let (u, n) = (Hash(update), PublicKey(node));
            prop_assert!(bucket(&u, &n) < FULL_WAVE);
            if in_wave(&u, &n, lo) {
                prop_assert!(in_wave(&u, &n, hi));
            }
        }

        #[test]
        fn parse_wave_never_panics(s in "\\PC{0,12}") {
            if let Ok(bp) = parse_wave(&s) {
                prop_assert!(bp <= FULL_WAVE);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn a_wave_holds_about_its_fraction_of_10000_random_nodes(
            update in any::<[u8; 32]>(),
            seed in any::<u64>(),
            wave in 0u16..=FULL_WAVE,
        ) {
            let u = Hash(update);
            let members = (0..10_000u64)
                .filter(|i| {
                    let id = blake3::hash(&[seed.to_le_bytes(), i.to_le_bytes()].concat());
                    in_wave(&u, &PublicKey(*id.as_bytes()), wave)
                })
                .count() as i64;
            // 10,000 nodes: the expected count is the wave in basis points; the binomial
            // standard deviation is at most 50, and 5 of them is 250.
            prop_assert!((members - i64::from(wave)).abs() <= 250, "wave {wave}: {members} members");
        }
    }
}
