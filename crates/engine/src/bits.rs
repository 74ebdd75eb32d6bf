//! A bitmap of block indices: what one peer holds of one file.
//!
//! Peers' holdings are fragmented (rarest-first from random points leaves thousands of runs),
//! and a download keeps one per peer and replaces it at every report. As runs they cost
//! `16 B` per run and a merge of every run per report; as bits they cost one bit per block and
//! one pass over the words.

use std::ops::Range;

use do_content::RangeSet;

/// A set of block indices, one bit each, with its size kept beside the words.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub(crate) struct BlockBits {
    words: Vec<u64>,
    count: u64,
}

impl BlockBits {
    /// The blocks of `set`.
    pub(crate) fn from_set(set: &RangeSet) -> Self {
        let mut bits = Self::default();
        if let Some(last) = set.runs().next_back() {
            bits.words = vec![0; last.end.div_ceil(64) as usize];
        }
        for run in set.runs() {
            bits.fill(run);
        }
        bits.count = set.count();
        bits
    }

    fn fill(&mut self, run: Range<u64>) {
        let (mut b, end) = (run.start, run.end);
        while b < end {
            let (w, bit) = ((b / 64) as usize, b % 64);
            let n = (64 - bit).min(end - b);
            let mask = if n == 64 {
                !0
            } else {
                ((1u64 << n) - 1) << bit
            };
            self.words[w] |= mask;
            b += n;
        }
    }

    /// Number of blocks in the set.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// Calls `f` with each block in exactly one of `self` and `new`, and whether it is in
    /// `new` (gained) or not (lost).
    pub(crate) fn changes_to(&self, new: &Self, mut f: impl FnMut(u64, bool)) {
        let words = self.words.len().max(new.words.len());
        for w in 0..words {
            let (a, b) = (word(&self.words, w), word(&new.words, w));
            let mut x = a ^ b;
            while x != 0 {
                let bit = u64::from(x.trailing_zeros());
                f(w as u64 * 64 + bit, b >> bit & 1 == 1);
                x &= x - 1;
            }
        }
    }

    /// Every block in the set, in increasing order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut x = word;
            std::iter::from_fn(move || {
                (x != 0).then(|| {
                    let bit = u64::from(x.trailing_zeros());
                    x &= x - 1;
                    w as u64 * 64 + bit
                })
            })
        })
    }

    /// Appends to `out` the runs of the set inside `[start, end)`, in order.
    pub(crate) fn runs_within(&self, start: u64, end: u64, out: &mut Vec<Range<u64>>) {
        let end = end.min(self.words.len() as u64 * 64);
        let mut b = start;
        while b < end {
            let Some(first) = self.next(b, end, false) else {
                return;
            };
            let last = self.next(first, end, true).unwrap_or(end);
            out.push(first..last);
            b = last;
        }
    }

    /// The first block at or after `from` and before `end` that is in the set (or, with
    /// `absent`, that is not).
    fn next(&self, from: u64, end: u64, absent: bool) -> Option<u64> {
        let mut w = (from / 64) as usize;
        let mut mask = !0u64 << (from % 64);
        while (w as u64) * 64 < end {
            let x = if absent {
                !self.words[w]
            } else {
                self.words[w]
            } & mask;
            if x != 0 {
                let at = w as u64 * 64 + u64::from(x.trailing_zeros());
                return (at < end).then_some(at);
            }
            w += 1;
            mask = !0;
        }
        None
    }
}

fn word(words: &[u64], w: usize) -> u64 {
    words.get(w).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn set(runs: &[(u64, u64)]) -> RangeSet {
        runs.iter().map(|&(s, l)| s..s + l).collect()
    }

    proptest! {
        #[test]
        fn bits_hold_what_the_set_holds(
            a in proptest::collection::vec((0u64..400, 0u64..90), 0..20),
            b in proptest::collection::vec((0u64..400, 0u64..90), 0..20),
            s in 0u64..500, l in 0u64..300,
        ) {
            let (old, new) = (set(&a), set(&b));
            let (x, y) = (BlockBits::from_set(&old), BlockBits::from_set(&new));
            prop_assert_eq!(x.count(), old.count());
            prop_assert_eq!(x.iter().collect::<Vec<_>>(), old.iter().collect::<Vec<_>>());
            let (mut gained, mut lost) = (Vec::new(), Vec::new());
            x.changes_to(&y, |block, up| if up { gained.push(block) } else { lost.push(block) });
            prop_assert_eq!(gained, new.difference(&old).iter().collect::<Vec<_>>());
            prop_assert_eq!(lost, old.difference(&new).iter().collect::<Vec<_>>());
            let mut runs = Vec::new();
            x.runs_within(s, s + l, &mut runs);
            prop_assert_eq!(runs, old.clipped(s, s + l).runs().collect::<Vec<_>>());
        }
    }
}
