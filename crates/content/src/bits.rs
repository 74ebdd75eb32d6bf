//! A bitmap of block indices: what one peer holds of one file, say.
//!
//! Peers' holdings are fragmented (rarest-first from random points leaves thousands of runs),
//! and a download keeps one per peer and replaces it at every report. As runs they cost
//! `16 B` per run and a merge of every run per report; as bits they cost one bit per block and
//! one pass over the words.

use std::ops::Range;

use crate::RangeSet;

/// A set of block indices, one bit each, with its size kept beside the words.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct BlockBits {
    words: Vec<u64>,
    count: u64,
}

impl BlockBits {
    /// The blocks of `set`.
    pub fn from_set(set: &RangeSet) -> Self {
        let mut words = vec![0; set.runs().next_back().map_or(0, |r| r.end.div_ceil(64)) as usize];
        // Runs are disjoint: the words are their masks together, counted once at the end.
        for run in set.runs() {
            for (w, mask) in masks(run) {
                words[w] |= mask;
            }
        }
        let count = words.iter().map(|w| u64::from(w.count_ones())).sum();
        Self { words, count }
    }

    /// Adds the blocks of `set`.
    pub fn add(&mut self, set: &RangeSet) {
        if let Some(last) = set.runs().next_back() {
            self.grow(last.end);
        }
        for run in set.runs() {
            self.fill(run);
        }
    }

    /// Adds the blocks of `set`, calling `f` with each one that was not in the set before.
    pub fn add_new(&mut self, set: &RangeSet, mut f: impl FnMut(u64)) {
        if let Some(last) = set.runs().next_back() {
            self.grow(last.end);
        }
        for run in set.runs() {
            for (w, mask) in masks(run) {
                let mut new = mask & !self.words[w];
                self.count += u64::from(new.count_ones());
                self.words[w] |= mask;
                while new != 0 {
                    f(w as u64 * 64 + u64::from(new.trailing_zeros()));
                    new &= new - 1;
                }
            }
        }
    }

    /// Adds the blocks of `run`.
    pub fn insert(&mut self, run: Range<u64>) {
        self.grow(run.end);
        self.fill(run);
    }

    /// Makes room for blocks below `end`.
    fn grow(&mut self, end: u64) {
        let words = end.div_ceil(64) as usize;
        if self.words.len() < words {
            self.words.resize(words, 0);
        }
    }

    /// Sets the blocks of `run` (room made).
    fn fill(&mut self, run: Range<u64>) {
        for (w, mask) in masks(run) {
            self.count += u64::from((mask & !self.words[w]).count_ones());
            self.words[w] |= mask;
        }
    }

    /// Adds the blocks of `other` (one pass over its words).
    pub fn union_with(&mut self, other: &Self) {
        if self.words.len() < other.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (a, &b) in self.words.iter_mut().zip(&other.words) {
            self.count += u64::from((b & !*a).count_ones());
            *a |= b;
        }
    }

    /// Removes the blocks of `other` (one pass over the words both have).
    pub fn subtract(&mut self, other: &Self) {
        for (a, &b) in self.words.iter_mut().zip(&other.words) {
            self.count -= u64::from((*a & b).count_ones());
            *a &= !b;
        }
    }

    /// Keeps only the blocks `other` holds too.
    pub fn intersect_with(&mut self, other: &Self) {
        self.count = 0;
        for (w, a) in self.words.iter_mut().enumerate() {
            *a &= other.words.get(w).copied().unwrap_or(0);
            self.count += u64::from(a.count_ones());
        }
    }

    /// Removes `run` from the set (a word at a time).
    pub fn clear(&mut self, run: Range<u64>) {
        for (w, mask) in masks(run) {
            let Some(word) = self.words.get_mut(w) else {
                break;
            };
            self.count -= u64::from((*word & mask).count_ones());
            *word &= !mask;
        }
    }

    /// `block` is in the set.
    pub fn contains(&self, block: u64) -> bool {
        word(&self.words, (block / 64) as usize) >> (block % 64) & 1 == 1
    }

    /// Every block of `run` is in the set.
    pub fn contains_run(&self, run: Range<u64>) -> bool {
        run.into_iter()
            .all(|b| word(&self.words, (b / 64) as usize) >> (b % 64) & 1 == 1)
    }

    /// Some block is in both sets.
    pub fn meets(&self, other: &Self) -> bool {
        self.words.iter().zip(&other.words).any(|(a, b)| a & b != 0)
    }

    /// The words of the blocks in both sets.
    pub fn and(&self, other: &Self) -> Vec<u64> {
        self.words
            .iter()
            .zip(&other.words)
            .map(|(a, b)| a & b)
            .collect()
    }

    /// True when the set holds no block.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Number of blocks in the set.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Calls `f` with each block in exactly one of `self` and `new`, and whether it is in
    /// `new` (gained) or not (lost).
    pub fn changes_to(&self, new: &Self, mut f: impl FnMut(u64, bool)) {
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

    /// The set as runs: the edges of the runs (where a bit differs from the one below it)
    /// taken word by word, two per run.
    pub fn to_set(&self) -> RangeSet {
        let mut runs = Vec::new();
        self.runs_within(0, self.words.len() as u64 * 64, &mut runs);
        RangeSet::from_sorted(runs)
    }

    /// The part of the set inside `set`, as runs (costs the words `set` covers, not the
    /// whole set).
    pub fn to_set_within(&self, set: &RangeSet) -> RangeSet {
        let mut runs = Vec::new();
        for run in set.runs() {
            self.runs_within(run.start, run.end, &mut runs);
        }
        RangeSet::from_sorted(runs)
    }

    /// Appends the runs of the set inside `[start, end)`, clipped to it.
    fn runs_within(&self, start: u64, end: u64, out: &mut Vec<(u64, u64)>) {
        let end = end.min(self.words.len() as u64 * 64);
        if start >= end {
            return;
        }
        let (first, last) = ((start / 64) as usize, ((end - 1) / 64) as usize);
        let (mut open, mut carry) = (None, 0u64);
        for w in first..=last {
            let mut word = self.words[w];
            if w == first {
                word &= !0 << (start % 64);
            }
            if w == last && !end.is_multiple_of(64) {
                word &= (1 << (end % 64)) - 1;
            }
            let mut edges = word ^ (word << 1 | carry);
            carry = word >> 63;
            while edges != 0 {
                let b = w as u64 * 64 + u64::from(edges.trailing_zeros());
                edges &= edges - 1;
                match open.take() {
                    None => open = Some(b),
                    Some(s) => out.push((s, b)),
                }
            }
        }
        if let Some(s) = open {
            out.push((s, end));
        }
    }

    /// Every block in the set, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
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
}

/// The words `run` touches, each with the mask of its blocks there.
fn masks(run: Range<u64>) -> impl Iterator<Item = (usize, u64)> {
    let (mut b, end) = (run.start, run.end);
    std::iter::from_fn(move || {
        (b < end).then(|| {
            let (w, bit) = ((b / 64) as usize, b % 64);
            let n = (64 - bit).min(end - b);
            b += n;
            let mask = if n == 64 {
                !0
            } else {
                ((1u64 << n) - 1) << bit
            };
            (w, mask)
        })
    })
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
            let mut union = x.clone();
            union.add(&new);
            let mut expected = old.clone();
            for run in new.runs() {
                expected.insert(run.start, run.end);
            }
            prop_assert_eq!(union.count(), expected.count());
            prop_assert_eq!(union.iter().collect::<Vec<_>>(), expected.iter().collect::<Vec<_>>());
            prop_assert_eq!(x.iter().collect::<Vec<_>>(), old.iter().collect::<Vec<_>>());
            // Back to runs: the same set, normalised (runs at word edges and at the end too).
            prop_assert_eq!(&x.to_set(), &old);
            prop_assert_eq!(&union.to_set(), &expected);
            // Within a set: the intersection, clipped at its runs' ends.
            let mut window = RangeSet::new();
            window.insert(s, s + l);
            window.insert(s + l + 1, s + 2 * l + 70);
            prop_assert_eq!(&union.to_set_within(&window), &expected.intersection(&window));
            prop_assert_eq!(&x.to_set_within(&new), &old.intersection(&new));
            let mut full = BlockBits::from_set(&std::iter::once(0..128).collect());
            prop_assert_eq!(full.to_set().runs().collect::<Vec<_>>(), vec![0..128]);
            full.clear(63..65);
            prop_assert_eq!(full.to_set().runs().collect::<Vec<_>>(), vec![0..63, 65..128]);
            let mut merged = x.clone();
            merged.union_with(&y);
            prop_assert_eq!(&merged, &union);
            let mut one_by_one = x.clone();
            for run in new.runs() {
                one_by_one.insert(run);
            }
            prop_assert_eq!(&one_by_one, &union);
            let (mut told, mut fresh) = (x.clone(), Vec::new());
            told.add_new(&new, |b| fresh.push(b));
            prop_assert_eq!(&told, &union);
            prop_assert_eq!(fresh, new.difference(&old).iter().collect::<Vec<_>>());
            prop_assert_eq!(x.contains_run(s..s + l), old.contains_range(s, s + l));
            let (mut gained, mut lost) = (Vec::new(), Vec::new());
            x.changes_to(&y, |block, up| if up { gained.push(block) } else { lost.push(block) });
            prop_assert_eq!(gained, new.difference(&old).iter().collect::<Vec<_>>());
            prop_assert_eq!(lost, old.difference(&new).iter().collect::<Vec<_>>());
            let both: Vec<u64> = x
                .and(&y)
                .iter()
                .enumerate()
                .flat_map(|(w, &word)| (0..64).filter(move |b| word >> b & 1 == 1).map(move |b| w as u64 * 64 + b))
                .collect();
            prop_assert_eq!(x.meets(&y), !both.is_empty());
            prop_assert_eq!(both, old.iter().filter(|&b| new.contains(b)).collect::<Vec<_>>());
            let mut cut = x.clone();
            cut.clear(s..s + l);
            let mut expected = old.clone();
            expected.remove(s, s + l);
            prop_assert_eq!(cut.count(), expected.count());
            prop_assert_eq!(cut.iter().collect::<Vec<_>>(), expected.iter().collect::<Vec<_>>());
            let mut both = x.clone();
            both.intersect_with(&y);
            let expected: Vec<u64> = old.iter().filter(|&b| new.contains(b)).collect();
            prop_assert_eq!(both.count(), expected.len() as u64);
            prop_assert_eq!(both.iter().collect::<Vec<_>>(), expected);
            let mut less = x.clone();
            less.subtract(&y);
            let expected = old.difference(&new);
            prop_assert_eq!(less.count(), expected.count());
            prop_assert_eq!(less.iter().collect::<Vec<_>>(), expected.iter().collect::<Vec<_>>());
        }
    }
}
