//! Which peers a download polls: on a LAN of hundreds of nodes, asking every peer what it holds
//! every poll costs each node a request per peer per poll (and the fleet N² of them). A
//! download polls a bounded set instead, as BitTorrent's peer set and the simulator's
//! `peers_per_node` do. The set prefers the peers that asked this node about the same file
//! (they want it too, or hold it), keeps the peers that have or fetch the file, and lets a
//! few peers with nothing to offer go at each rotation for others drawn at random, so that
//! holders beyond the set are found in time.

use std::{collections::HashSet, hash::Hash};

use rand::{Rng, seq::IteratorRandom};

/// The peers a download polls, and what it learned of them.
#[derive(Debug)]
pub(crate) struct Polled<P> {
    /// The most peers polled at once (0: every connected peer).
    limit: usize,
    /// The set polled.
    members: HashSet<P>,
    /// Peers that asked this node about the file since the last choice.
    askers: HashSet<P>,
    /// Members whose last answer held nothing of the file and who did not fetch it.
    idle: HashSet<P>,
}

impl<P: Copy + Eq + Hash + Ord> Polled<P> {
    /// An empty set of at most `limit` peers (0: no bound).
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            members: HashSet::new(),
            askers: HashSet::new(),
            idle: HashSet::new(),
        }
    }

    /// A peer asked this node about the file: it joins the set at the next choice, before
    /// peers drawn at random.
    pub(crate) fn asked_by(&mut self, peer: P) {
        if !self.members.contains(&peer) {
            self.askers.insert(peer);
        }
    }

    /// A member's answer: whether it holds some of the file or fetches it.
    pub(crate) fn answered(&mut self, peer: P, useful: bool) {
        if useful {
            self.idle.remove(&peer);
        } else if self.members.contains(&peer) {
            self.idle.insert(peer);
        }
    }

    /// Chooses the set among the `connected` peers and returns it with the `ring` neighbours
    /// (polled on top of the limit, never rotated out), sorted. Members that left go; with
    /// `rotate`, up to a quarter of the limit (at least one) of the idle members go too. The
    /// places free are filled by askers first, then by peers drawn with `rng`.
    pub(crate) fn choose(
        &mut self,
        connected: &HashSet<P>,
        ring: &[P],
        rotate: bool,
        rng: &mut impl Rng,
    ) -> Vec<P> {
        if self.limit == 0 || connected.len() <= self.limit {
            self.members.clone_from(connected);
        } else {
            self.members.retain(|p| connected.contains(p));
            if rotate {
                let mut idle: Vec<P> = self
                    .idle
                    .iter()
                    .filter(|p| self.members.contains(p))
                    .copied()
                    .collect();
                idle.sort_unstable();
                for p in idle.into_iter().take((self.limit / 4).max(1)) {
                    self.members.remove(&p);
                }
            }
            let mut askers: Vec<P> = self
                .askers
                .iter()
                .filter(|p| connected.contains(p) && !self.members.contains(p))
                .copied()
                .collect();
            askers.sort_unstable();
            for p in askers {
                if self.members.len() >= self.limit {
                    break;
                }
                self.members.insert(p);
            }
            let room = self.limit.saturating_sub(self.members.len());
            let drawn = connected
                .iter()
                .filter(|p| !self.members.contains(p))
                .copied()
                .choose_multiple(rng, room);
            self.members.extend(drawn);
        }
        self.askers.retain(|p| !self.members.contains(p));
        self.idle.retain(|p| self.members.contains(p));
        let mut members: Vec<P> = self.members.iter().copied().collect();
        members.extend(ring.iter().filter(|p| connected.contains(p)));
        members.sort_unstable();
        members.dedup();
        members
    }
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    fn peers(range: std::ops::Range<u32>) -> HashSet<u32> {
        range.collect()
    }

    #[test]
    fn a_small_lan_is_polled_whole_and_no_limit_means_every_peer() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut small = Polled::new(8);
        assert_eq!(
            small.choose(&peers(0..5), &[], false, &mut rng),
            vec![0, 1, 2, 3, 4]
        );
        let mut unbounded = Polled::new(0);
        assert_eq!(
            unbounded.choose(&peers(0..100), &[], true, &mut rng).len(),
            100
        );
    }

    #[test]
    fn a_large_lan_is_polled_up_to_the_limit_and_the_set_stays_put_without_rotation() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut polled = Polled::new(8);
        let connected = peers(0..100);
        let first = polled.choose(&connected, &[], false, &mut rng);
        assert_eq!(first.len(), 8);
        assert!(first.iter().all(|p| connected.contains(p)));
        for p in &first {
            polled.answered(*p, false);
        }
        // Idle members stay until a rotation.
        assert_eq!(polled.choose(&connected, &[], false, &mut rng), first);
    }

    #[test]
    fn askers_join_before_random_peers_and_useful_members_are_kept() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut polled = Polled::new(8);
        let connected = peers(0..100);
        let first = polled.choose(&connected, &[], false, &mut rng);
        // Two members hold the file; the other six answered with nothing.
        for (i, p) in first.iter().enumerate() {
            polled.answered(*p, i < 2);
        }
        let askers: Vec<u32> = (0..100).filter(|p| !first.contains(p)).take(3).collect();
        for &a in &askers {
            polled.asked_by(a);
        }
        // A rotation lets two idle members go (a quarter of 8): two askers take their places.
        let second = polled.choose(&connected, &[], true, &mut rng);
        assert_eq!(second.len(), 8);
        assert!(second.contains(&first[0]) && second.contains(&first[1]));
        let gone: Vec<&u32> = first.iter().filter(|p| !second.contains(p)).collect();
        assert_eq!(gone.len(), 2, "{first:?} -> {second:?}");
        assert!(gone.iter().all(|p| !first[..2].contains(p)));
        assert!(askers[..2].iter().all(|a| second.contains(a)));
        // The third asker waits for the next free place.
        assert!(!second.contains(&askers[2]));
        let third = polled.choose(&connected, &[], true, &mut rng);
        assert!(third.contains(&askers[2]), "{third:?}");
    }

    #[test]
    fn members_that_leave_are_replaced_and_rotations_find_every_peer_in_time() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut polled = Polled::new(8);
        let mut connected = peers(0..40);
        let first = polled.choose(&connected, &[], false, &mut rng);
        connected.remove(&first[0]);
        let second = polled.choose(&connected, &[], false, &mut rng);
        assert_eq!(second.len(), 8);
        assert!(!second.contains(&first[0]));
        // With every member idle, rotations reach every connected peer.
        let mut seen: HashSet<u32> = HashSet::new();
        for _ in 0..200 {
            let set = polled.choose(&connected, &[], true, &mut rng);
            for &p in &set {
                polled.answered(p, false);
            }
            seen.extend(set);
        }
        assert_eq!(seen, connected);
    }

    #[test]
    fn ring_neighbours_are_polled_on_top_of_the_limit_and_never_rotated_out() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut polled = Polled::new(8);
        let connected = peers(0..100);
        // 200 is not connected (it left): it is not polled.
        let ring = [97, 98, 99, 200];
        for _ in 0..20 {
            let set = polled.choose(&connected, &ring, true, &mut rng);
            assert!(ring[..3].iter().all(|p| set.contains(p)), "{set:?}");
            assert!(!set.contains(&200));
            assert!(set.len() <= 8 + 3);
            for &p in &set {
                polled.answered(p, false);
            }
        }
    }
}
