//! Byte ranges, block indices and sets of ranges.

use std::{fmt, ops::Range};

use crate::BLOCK_SIZE;

/// Index of a [`BLOCK_SIZE`] block within a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockIndex(pub u64);

impl BlockIndex {
    /// Byte offset of the block's first byte.
    pub const fn offset(self) -> u64 {
        self.0 * BLOCK_SIZE
    }
}

impl From<u64> for BlockIndex {
    fn from(index: u64) -> Self {
        Self(index)
    }
}

impl fmt::Display for BlockIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A half-open byte range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ByteRange {
    /// First byte in the range.
    pub start: u64,
    /// One past the last byte in the range.
    pub end: u64,
}

impl ByteRange {
    /// A range `[start, end)`; an `end` below `start` gives an empty range at `start`.
    pub const fn new(start: u64, end: u64) -> Self {
        Self {
            start,
            end: if end < start { start } else { end },
        }
    }

    /// A range of `len` bytes from `offset`, saturating at `u64::MAX`.
    pub const fn from_offset_len(offset: u64, len: u64) -> Self {
        Self::new(offset, offset.saturating_add(len))
    }

    /// Number of bytes in the range.
    pub const fn len(&self) -> u64 {
        self.end - self.start
    }

    /// True when the range holds no byte.
    pub const fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// The overlap of two ranges (empty when they are disjoint).
    pub fn intersect(&self, other: &Self) -> Self {
        Self::new(self.start.max(other.start), self.end.min(other.end))
    }

    /// The blocks that hold at least one byte of this range (empty for an empty range).
    pub fn blocks(&self) -> Range<u64> {
        if self.is_empty() {
            return 0..0;
        }
        self.start / BLOCK_SIZE..self.end.div_ceil(BLOCK_SIZE)
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

/// A set of `u64` values stored as sorted, disjoint, non-adjacent half-open runs.
///
/// Used for byte ranges ("which bytes does the caller want") and for block indices ("which
/// blocks are still missing"). Every operation keeps the runs normalised, so two sets with the
/// same members compare equal. The runs sit in one sorted vector (a clone is one copy, a
/// lookup a binary search) and the number of members is kept beside them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// `(start, end)` of each run, in increasing order.
    runs: Vec<(u64, u64)>,
    /// Number of members.
    len: u64,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `[start, end)`.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // Runs that overlap or touch [start, end) are merged into it: those from the first
        // that ends at or after `start` to the last that starts at or before `end`.
        let i = self.runs.partition_point(|&(_, e)| e < start);
        let j = i + self.runs[i..].partition_point(|&(s, _)| s <= end);
        if i == j {
            self.runs.insert(i, (start, end));
            self.len += end - start;
            return;
        }
        let merged = (start.min(self.runs[i].0), end.max(self.runs[j - 1].1));
        let gone: u64 = self.runs[i..j].iter().map(|&(s, e)| e - s).sum();
        self.len = self.len - gone + (merged.1 - merged.0);
        self.runs[i] = merged;
        self.runs.drain(i + 1..j);
    }

    /// Removes `[start, end)`.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // The runs that overlap [start, end).
        let i = self.runs.partition_point(|&(_, e)| e <= start);
        let j = i + self.runs[i..].partition_point(|&(s, _)| s < end);
        if i == j {
            return;
        }
        let (first, last) = (self.runs[i].0, self.runs[j - 1].1);
        let gone: u64 = self.runs[i..j].iter().map(|&(s, e)| e - s).sum();
        let left = (first < start).then_some((first, start));
        let right = (last > end).then_some((end, last));
        let kept: u64 = [left, right].iter().flatten().map(|&(s, e)| e - s).sum();
        self.len = self.len - gone + kept;
        self.runs.splice(i..j, left.into_iter().chain(right));
    }

    /// True when `value` is in the set.
    pub fn contains(&self, value: u64) -> bool {
        let i = self.runs.partition_point(|&(s, _)| s <= value);
        i > 0 && self.runs[i - 1].1 > value
    }

    /// True when every value of `[start, end)` is in the set.
    pub fn contains_range(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        let i = self.runs.partition_point(|&(s, _)| s <= start);
        i > 0 && self.runs[i - 1].1 >= end
    }

    /// Number of values in the set.
    pub fn count(&self) -> u64 {
        self.len
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The runs, in increasing order.
    pub fn runs(&self) -> impl DoubleEndedIterator<Item = Range<u64>> + '_ {
        self.runs.iter().map(|&(s, e)| s..e)
    }

    /// The smallest value, if any.
    pub fn first(&self) -> Option<u64> {
        self.runs.first().map(|&(s, _)| s)
    }

    /// The part of the set inside `[start, end)` (costs the runs it keeps, not the whole set).
    pub fn clipped(&self, start: u64, end: u64) -> Self {
        if start >= end {
            return Self::new();
        }
        let i = self.runs.partition_point(|&(_, e)| e <= start);
        Self::from_sorted(
            self.runs[i..]
                .iter()
                .take_while(|&&(s, _)| s < end)
                .map(|&(s, e)| (s.max(start), e.min(end))),
        )
    }

    /// The values of this set that are not in `other`: one merge of both runs, linear in
    /// their number.
    pub fn difference(&self, other: &Self) -> Self {
        // Each of their runs splits at most one of ours in two.
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.runs.len() + other.runs.len());
        let mut theirs = other.runs().peekable();
        for r in self.runs() {
            while theirs.next_if(|q| q.end <= r.start).is_some() {}
            let mut cur = r.start;
            loop {
                match theirs.peek() {
                    Some(q) if q.start < r.end => {
                        if q.start > cur {
                            out.push((cur, q.start));
                        }
                        cur = cur.max(q.end);
                        if q.end >= r.end {
                            break; // it may overlap the next run too
                        }
                        theirs.next();
                    }
                    _ => {
                        if cur < r.end {
                            out.push((cur, r.end));
                        }
                        break;
                    }
                }
            }
        }
        Self::from_sorted(out)
    }

    /// The values in both sets: one merge of both runs, linear in their number.
    pub fn intersection(&self, other: &Self) -> Self {
        let (small, large) = if self.runs.len() <= other.runs.len() {
            (self, other)
        } else {
            (other, self)
        };
        // Few runs against many (a node's share of the file against what it lacks): the large
        // set clipped to each run of the small one, which costs the runs it keeps.
        if small.runs.len() * 16 < large.runs.len() {
            let mut out: Vec<(u64, u64)> = Vec::new();
            for &(s, e) in &small.runs {
                let i = large.runs.partition_point(|&(_, end)| end <= s);
                out.extend(
                    large.runs[i..]
                        .iter()
                        .take_while(|&&(start, _)| start < e)
                        .map(|&(start, end)| (start.max(s), end.min(e))),
                );
            }
            return Self::from_sorted(out);
        }
        let mut out: Vec<(u64, u64)> = Vec::new();
        let (mut a, mut b) = (self.runs.iter().peekable(), other.runs.iter().peekable());
        while let (Some(&&(s1, e1)), Some(&&(s2, e2))) = (a.peek(), b.peek()) {
            let (start, end) = (s1.max(s2), e1.min(e2));
            if start < end {
                out.push((start, end));
            }
            // The run that ends first can meet nothing further in the other set.
            if e1 <= e2 {
                a.next();
            } else {
                b.next();
            }
        }
        Self::from_sorted(out)
    }

    /// Every value in the set, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs().flatten()
    }

    /// A set of runs that are already sorted, disjoint, non-empty and never adjacent.
    pub(crate) fn from_sorted(runs: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let runs: Vec<(u64, u64)> = runs.into_iter().collect();
        let len = runs.iter().map(|&(s, e)| e - s).sum();
        Self { runs, len }
    }
}

impl fmt::Debug for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.runs()).finish()
    }
}

impl FromIterator<Range<u64>> for RangeSet {
    fn from_iter<I: IntoIterator<Item = Range<u64>>>(iter: I) -> Self {
        let mut set = Self::new();
        for r in iter {
            set.insert(r.start, r.end);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        Remove(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        (any::<bool>(), 0u64..200, 0u64..40).prop_map(|(ins, s, l)| {
            if ins {
                Op::Insert(s, s + l)
            } else {
                Op::Remove(s, s + l)
            }
        })
    }

    proptest! {
        #[test]
        fn range_set_matches_a_btree_set_model(ops in proptest::collection::vec(op(), 0..60)) {
            let mut set = RangeSet::new();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(s, e) => { set.insert(s, e); model.extend(s..e); }
                    Op::Remove(s, e) => { set.remove(s, e); for v in s..e { model.remove(&v); } }
                }
            }
            prop_assert_eq!(set.count(), model.len() as u64);
            prop_assert_eq!(set.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            for v in 0..250 {
                prop_assert_eq!(set.contains(v), model.contains(&v));
            }
            // Normalised: runs are disjoint and never adjacent.
            let runs: Vec<_> = set.runs().collect();
            for pair in runs.windows(2) {
                prop_assert!(pair[0].end < pair[1].start);
            }
            let rebuilt: RangeSet = runs.iter().cloned().collect();
            prop_assert_eq!(rebuilt, set);
        }

        #[test]
        fn contains_range_agrees_with_contains(
            ops in proptest::collection::vec(op(), 0..30), s in 0u64..200, l in 0u64..50,
        ) {
            let mut set = RangeSet::new();
            for op in ops {
                if let Op::Insert(a, b) = op { set.insert(a, b) } else if let Op::Remove(a, b) = op { set.remove(a, b) }
            }
            prop_assert_eq!(set.contains_range(s, s + l), (s..s + l).all(|v| set.contains(v)));
            let clipped = set.clipped(s, s + l);
            let mut other = RangeSet::new();
            other.insert(s, s + l);
            other.insert(s + 2 * l + 3, s + 3 * l + 7);
            let diff = set.difference(&other);
            prop_assert_eq!(
                diff.iter().collect::<Vec<_>>(),
                set.iter().filter(|v| !other.contains(*v)).collect::<Vec<_>>()
            );
            prop_assert_eq!(other.difference(&set).count(), other.iter().filter(|v| !set.contains(*v)).count() as u64);
            // Few runs against many (the lookup path).
            let mut comb = RangeSet::new();
            for k in 0..40 {
                comb.insert(k * 6, k * 6 + 2);
            }
            let small = other.difference(&comb);
            prop_assert_eq!(
                small.iter().collect::<Vec<_>>(),
                other.iter().filter(|v| !comb.contains(*v)).collect::<Vec<_>>()
            );
            // Intersections both ways round, by a merge and by clipping the many runs to the
            // few (either path, the same runs).
            for (many, few) in [(&set, &other), (&comb, &other), (&comb, &set)] {
                let kept = many.intersection(few);
                prop_assert_eq!(
                    kept.iter().collect::<Vec<_>>(),
                    many.iter().filter(|v| few.contains(*v)).collect::<Vec<_>>()
                );
                prop_assert_eq!(&kept, &few.intersection(many));
                for pair in kept.runs().collect::<Vec<_>>().windows(2) {
                    prop_assert!(pair[0].end < pair[1].start);
                }
            }
            let runs: Vec<_> = diff.runs().collect();
            for pair in runs.windows(2) {
                prop_assert!(pair[0].end < pair[1].start);
            }
            prop_assert_eq!(clipped.iter().collect::<Vec<_>>(), set.iter().filter(|v| (s..s + l).contains(v)).collect::<Vec<_>>());
        }

        #[test]
        fn byte_range_blocks_cover_exactly(start in 0u64..1_000_000, len in 0u64..1_000_000) {
            let r = ByteRange::from_offset_len(start, len);
            let blocks = r.blocks();
            if len == 0 {
                prop_assert!(blocks.is_empty());
            } else {
                prop_assert!(blocks.start * BLOCK_SIZE <= r.start);
                prop_assert!(blocks.end * BLOCK_SIZE >= r.end);
                prop_assert!((blocks.start + 1) * BLOCK_SIZE > r.start);
                prop_assert!((blocks.end - 1) * BLOCK_SIZE < r.end);
            }
            let other = ByteRange::from_offset_len(start / 2, len * 2);
            let both = r.intersect(&other);
            prop_assert!(both.start >= r.start.max(other.start) && both.end <= r.end.min(other.end) || both.is_empty());
        }
    }
}
