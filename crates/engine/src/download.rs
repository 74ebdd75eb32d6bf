//! One download's bookkeeping: what is wanted, held and in flight.

use std::{
    cell::Cell,
    collections::{BTreeMap, BTreeSet},
    ops::Range,
    time::{Duration, Instant},
};

use do_content::{BlockBits, BlockIndex, ByteRange, ContentId, RangeSet, block_count, block_range};

use crate::{CommandError, FileInfo, PeerId, RequestId, Spec, State, Status, peers::Split};

/// A request in flight to a peer.
pub(crate) struct PeerRequest {
    pub(crate) peer: PeerId,
    /// The last time it delivered a block (or was sent).
    pub(crate) last_progress: Instant,
    /// Endgame looked for another peer to copy it to (it is no longer a timer; a later
    /// scheduling pass may still find one).
    pub(crate) copy_sought: bool,
}

/// A peer fetching the same file (see `Input::PeerFetching`).
pub(crate) struct CoFetcher {
    /// Its rank key.
    pub(crate) key: u64,
    /// Blocks it held when last heard of.
    pub(crate) held: u64,
    /// When its holdings last grew (or it joined).
    pub(crate) last_grew: Instant,
    /// It has not grown for the stall timeout.
    pub(crate) stalled: bool,
}

/// The origin's answer, once known.
pub(crate) struct Known {
    pub(crate) len: u64,
    pub(crate) accepts_ranges: bool,
}

pub(crate) struct Download {
    pub(crate) spec: Spec,
    pub(crate) state: State,
    pub(crate) error: u32,
    pub(crate) extended_error: u32,
    /// Paused by the caller (no automatic retry), as opposed to paused by a transient error.
    pub(crate) user_paused: bool,
    /// Requested byte ranges (clipped to the file once its length is known); `None` = whole.
    pub(crate) ranges: Option<Vec<ByteRange>>,
    pub(crate) info: Option<Known>,
    /// Blocks verified and in the cache.
    have: RangeSet,
    /// Blocks the requested bytes touch.
    needed: RangeSet,
    /// `needed`, as bits.
    needed_bits: BlockBits,
    /// `have` and `unchecked_all` together, as bits: what is not missing before the fetches
    /// in flight are counted (kept in step wherever either changes).
    settled: BlockBits,
    /// Blocks each fetch still owes (origin and peer requests alike).
    pub(crate) fetches: BTreeMap<RequestId, RangeSet>,
    /// The requests among `fetches` that went to peers.
    pub(crate) peer_requests: BTreeMap<RequestId, PeerRequest>,
    /// Origin fetches cut down to the blocks of this node's share they are bringing (their
    /// span left the share): each is cancelled once those are in, so that none of the bytes
    /// of the block in flight are lost.
    pub(crate) trimmed: BTreeSet<RequestId>,
    /// Endgame pairs: a slow peer request and the copy of it sent to another peer, each
    /// mapped to the other. The blocks one brings are struck from the other's; the one left
    /// owing nothing is cancelled. A request has at most one copy.
    pub(crate) twins: BTreeMap<RequestId, RequestId>,
    /// Every missing block was asked for at the last scheduling pass (endgame: slow peer
    /// requests get a copy, see `Config::endgame_after`).
    pub(crate) endgame: bool,
    /// What each usable peer holds of this file (change it through `set_have`/`remove_have`,
    /// which keep `availability` in step).
    pub(crate) haves: BTreeMap<PeerId, BlockBits>,
    /// How many of `haves` hold each block.
    availability: Vec<u32>,
    /// What the peers in `haves` hold, all in one: kept up as they gain blocks, and computed
    /// again when next asked (`None`) after one lost some or left.
    peers_held: Option<BlockBits>,
    /// What can come through each usable peer: the blocks its own peers hold, as it last
    /// said (`Input::PeerNear`); and all of them in one set, computed again when one changed
    /// (`None`). They are left to come through the peers while peers keep bringing blocks (see
    /// `Config::near_wait`).
    near_by: BTreeMap<PeerId, BlockBits>,
    near: Option<BlockBits>,
    /// What this node last told can come through it (`Engine::held_by_peers`): its LAN
    /// co-fetchers split what crosses the WAN by it (`Engine::far_take`).
    pub(crate) told_near: Option<BlockBits>,
    /// When `near` last grew, and when a peer last brought a block.
    near_grew: Instant,
    pub(crate) peer_block_at: Instant,
    /// The origin was kept from blocks in `near` until this time at the last scheduling pass
    /// (a timer then, to ask it once the wait is over).
    pub(crate) near_until: Option<Instant>,
    /// Peers fetching this file at the same time, who split the origin's work with this node.
    /// (Changed only through the methods below, which keep `co_stall_due` true.)
    co_fetchers: BTreeMap<PeerId, CoFetcher>,
    /// When the first co-fetcher still growing would be judged stalled, as last computed from
    /// `co_fetchers` (`None`: to compute again; every change to them clears it: see
    /// [`Download::co_fetchers_changed`]). The driver asks for timers after every input.
    co_stall_due: Cell<Option<Option<Instant>>>,
    /// The co-fetchers' keys each peer reports (`Input::PeerCoFetchers`), each with its
    /// distance from the reporter (0: the reporter itself).
    pub(crate) reported: BTreeMap<PeerId, Vec<(u64, u8)>>,
    /// This node's share of the origin's work may have moved since the last look (a
    /// co-fetcher came, went or stalled, or a stalled one's part may now be held elsewhere):
    /// origin fetches outside it are looked for at the next scheduling pass.
    shares_moved: bool,
    /// How the origin's work is split, as last computed (see `Engine::split`); `None` when
    /// the shares may have moved since.
    pub(crate) split: Option<Option<Split>>,
    /// Which version of what the split tells `split` is (`Engine::split_version`).
    pub(crate) split_version: u64,
    /// What the last split computed told (`Split::told`; empty with no split), kept from the
    /// moment the shares may have moved until the split is computed again: one that tells the
    /// same keeps its version.
    pub(crate) told_before: Option<Vec<(u64, u64, u8)>>,
    /// Peers whose requests for this file stalled: what they say they hold is ignored until
    /// they reconnect, so their blocks come from elsewhere (the origin if need be).
    pub(crate) dropped: BTreeSet<PeerId>,
    /// The driver holds a manifest whose root is a trusted content id: peer blocks are
    /// verified one by one as they arrive.
    pub(crate) manifest_trusted: bool,
    /// Blocks peers sent before the manifest was trusted, by sender: written but not checked
    /// yet (never counted as held, never served), checked when it is trusted.
    unchecked: BTreeMap<PeerId, RangeSet>,
    /// All of `unchecked`, in one set.
    unchecked_all: RangeSet,
    /// When the download last started (for the origin fallback delay).
    pub(crate) started_at: Instant,
    /// The origin fallback delay of the current start has passed (its deadline is no longer
    /// a timer).
    pub(crate) fallback_passed: bool,
    /// Start of the current rate window (`Config::min_background_qos`), and the bytes
    /// transferred then.
    pub(crate) qos_since: Instant,
    pub(crate) qos_bytes: u64,
    /// The last full window was slower than `Config::min_background_qos`: the origin tops
    /// the peers up.
    pub(crate) below_qos: bool,
    /// Bytes the origin brought in the current rate window.
    pub(crate) qos_origin_bytes: u64,
    /// Windows left before the rate is judged again, and the length of the last such pause
    /// (doubling): a top-up through which the origin brought less than half the minimum
    /// shares the peers' bottleneck (a site's WAN link, say), and only adds to it.
    pub(crate) qos_idle: u32,
    pub(crate) qos_backoff: u32,
    pub(crate) retry_at: Option<Instant>,
    pub(crate) last_progress: Instant,
    pub(crate) no_progress_timeout: Duration,
    /// Transient failures since the last progress.
    pub(crate) failures: u32,
    /// Times the origin's file changed under this download.
    pub(crate) restarts: u32,
    pub(crate) stat_pending: bool,
    pub(crate) assembling: bool,
    pub(crate) content_id: Option<ContentId>,
    /// The content id the origin published for the current version, if any.
    pub(crate) published: Option<ContentId>,
    bytes_total: u64,
    bytes_transferred: u64,
}

impl Download {
    pub(crate) fn new(spec: Spec, no_progress_timeout: Duration, now: Instant) -> Self {
        Self {
            spec,
            state: State::Created,
            error: 0,
            extended_error: 0,
            user_paused: false,
            ranges: None,
            info: None,
            have: RangeSet::new(),
            settled: BlockBits::default(),
            needed: RangeSet::new(),
            needed_bits: BlockBits::default(),
            fetches: BTreeMap::new(),
            peer_requests: BTreeMap::new(),
            trimmed: BTreeSet::new(),
            twins: BTreeMap::new(),
            endgame: false,
            haves: BTreeMap::new(),
            availability: Vec::new(),
            peers_held: None,
            told_near: None,
            near_by: BTreeMap::new(),
            near: None,
            near_grew: now,
            peer_block_at: now,
            near_until: None,
            co_fetchers: BTreeMap::new(),
            co_stall_due: Cell::new(None),
            reported: BTreeMap::new(),
            shares_moved: false,
            split: None,
            split_version: 0,
            told_before: None,
            dropped: BTreeSet::new(),
            manifest_trusted: false,
            unchecked: BTreeMap::new(),
            unchecked_all: RangeSet::new(),
            started_at: now,
            fallback_passed: false,
            qos_since: now,
            qos_bytes: 0,
            below_qos: false,
            qos_origin_bytes: 0,
            qos_idle: 0,
            qos_backoff: 0,
            retry_at: None,
            last_progress: now,
            no_progress_timeout,
            failures: 0,
            restarts: 0,
            stat_pending: false,
            assembling: false,
            content_id: None,
            published: None,
            bytes_total: 0,
            bytes_transferred: 0,
        }
    }

    pub(crate) fn status(&self) -> Status {
        Status {
            bytes_total: self.bytes_total,
            bytes_transferred: self.bytes_transferred,
            state: self.state,
            error: self.error,
            extended_error: self.extended_error,
        }
    }

    /// The content id the bytes must hash to: the caller's, else the origin's published one.
    pub(crate) fn trusted_id(&self) -> Option<ContentId> {
        self.spec.content_id.or(self.published)
    }

    /// Starts a new rate window at `now` (a start, or the end of the last window).
    pub(crate) fn restart_qos_window(&mut self, now: Instant) {
        self.qos_since = now;
        self.qos_bytes = self.bytes_transferred;
        self.qos_origin_bytes = 0;
    }

    /// Bytes transferred since the current rate window began.
    pub(crate) fn qos_window_bytes(&self) -> u64 {
        self.bytes_transferred.saturating_sub(self.qos_bytes)
    }

    /// True while the download should be moving: the no-progress clock runs.
    pub(crate) fn is_waiting_for_progress(&self) -> bool {
        self.state == State::Transferring
            || (self.state == State::Paused && !self.user_paused && self.error == 0)
    }

    pub(crate) fn set_info(&mut self, info: FileInfo) {
        self.stat_pending = false;
        let blocks = block_count(info.len);
        self.have = info.cached.clipped(0, blocks);
        // A new look at the file: what was waiting for a check is fetched again if need be.
        self.unchecked.clear();
        self.unchecked_all = RangeSet::new();
        self.settled = BlockBits::from_set(&self.have);
        self.move_shares();
        self.info = Some(Known {
            len: info.len,
            accepts_ranges: info.accepts_ranges,
        });
        self.refresh_needed();
    }

    /// Recomputes the needed blocks and byte counts from the ranges and the file length.
    pub(crate) fn refresh_needed(&mut self) {
        let Some(info) = &self.info else { return };
        let len = info.len;
        if let Some(ranges) = &mut self.ranges {
            for r in ranges.iter_mut() {
                r.end = r.end.min(len);
            }
        }
        let wanted = self.wanted_bytes(len);
        self.needed = RangeSet::new();
        for run in wanted.runs() {
            let blocks = ByteRange::new(run.start, run.end).blocks();
            self.needed.insert(blocks.start, blocks.end);
        }
        self.needed_bits = BlockBits::from_set(&self.needed);
        self.bytes_total = wanted.count();
        self.bytes_transferred = self
            .have
            .iter()
            .map(|b| overlap(&wanted, block_range(len, BlockIndex(b))))
            .sum();
    }

    /// Blocks still needed that no fetch is bringing. As bits: what is held is fragmented
    /// (rarest-first), this runs at every scheduling pass, and the passes work on bits.
    pub(crate) fn missing(&self) -> BlockBits {
        let mut bits = self.needed_bits.clone();
        bits.subtract(&self.settled);
        for owed in self.fetches.values() {
            for run in owed.runs() {
                bits.clear(run);
            }
        }
        #[cfg(debug_assertions)]
        {
            let mut runs = self
                .needed
                .difference(&self.have)
                .difference(&self.unchecked_all);
            for run in self.fetches.values().flat_map(RangeSet::runs) {
                runs.remove(run.start, run.end);
            }
            assert_eq!(
                bits.to_set(),
                runs,
                "the settled bits are out of step with what is held"
            );
        }
        bits
    }

    /// Blocks still needed that no peer is bringing: [`Download::missing`] plus what the
    /// origin fetches are bringing. A co-fetcher's gap that this node fetches in its stead is
    /// still its gap (else taking it over would undo itself).
    pub(crate) fn not_from_peers(&self) -> RangeSet {
        let mut left = self
            .needed
            .difference(&self.have)
            .difference(&self.unchecked_all);
        let from_peers = self
            .peer_requests
            .keys()
            .filter_map(|r| self.fetches.get(r));
        for owed in from_peers {
            for run in owed.runs() {
                left.remove(run.start, run.end);
            }
        }
        left
    }

    /// The next span of `missing` blocks for one origin request: a share of what is missing
    /// per connection, clamped to `[min, max]` blocks, from the first missing run.
    pub(crate) fn next_span(
        missing: &RangeSet,
        connections: usize,
        min: u64,
        max: u64,
    ) -> Option<Range<u64>> {
        let first = missing.runs().next()?;
        let share = (missing.count() / connections as u64).clamp(min.max(1), max.max(1));
        Some(first.start..first.end.min(first.start + share))
    }

    pub(crate) fn begin_fetch(&mut self, request: RequestId, blocks: Range<u64>) {
        self.fetches
            .insert(request, std::iter::once(blocks).collect());
    }

    /// Cuts origin fetch `request` down to the run of its owed blocks inside `share` that
    /// starts with the block it brings now (an origin fetch brings its span in order), and
    /// returns the rest it owed. `None`, and nothing cut: the block it brings now lies outside
    /// `share` (it is to be cancelled).
    pub(crate) fn trim_fetch(&mut self, request: RequestId, share: &RangeSet) -> Option<RangeSet> {
        let owed = self.fetches.get_mut(&request)?;
        let first = owed.runs().next()?;
        let keep = share
            .clipped(first.start, first.end)
            .runs()
            .next()
            .filter(|r| r.start == first.start)?;
        let mut rest = std::mem::take(owed);
        rest.remove(keep.start, keep.end);
        owed.insert(keep.start, keep.end);
        self.trimmed.insert(request);
        Some(rest)
    }

    /// Whether `request` is a trimmed origin fetch (see [`Download::trim_fetch`]) that owes
    /// nothing more: it is to be cancelled.
    pub(crate) fn trimmed_and_done(&self, request: RequestId) -> bool {
        self.trimmed.contains(&request) && self.fetches.get(&request).is_none_or(RangeSet::is_empty)
    }

    /// A block arrived for `request`: its twin (if any) no longer owes it. Returns the twin
    /// if it now owes nothing (it is to be cancelled).
    pub(crate) fn strike_from_twin(&mut self, request: RequestId, block: u64) -> Option<RequestId> {
        let twin = *self.twins.get(&request)?;
        let owed = self.fetches.get_mut(&twin)?;
        owed.remove(block, block + 1);
        owed.is_empty().then_some(twin)
    }

    /// Records what `peer` holds now (replacing what it said before).
    pub(crate) fn set_have(&mut self, peer: PeerId, blocks: &RangeSet) {
        let new = BlockBits::from_set(blocks);
        let old = self.haves.remove(&peer);
        match (&mut self.peers_held, &old) {
            // Nothing said before: the peers' holdings only grow.
            (Some(held), None) => held.union_with(&new),
            (Some(_), Some(_)) => self.peers_held = None,
            _ => {}
        }
        old.unwrap_or_default()
            .changes_to(&new, |block, gained| self.count(block, gained));
        self.haves.insert(peer, new);
    }

    /// `co_fetchers` changed (one came, went, grew or stalled): when the next one stalls is
    /// computed again.
    fn co_fetchers_changed(&self) {
        self.co_stall_due.set(None);
    }

    /// The peers fetching the same file.
    pub(crate) fn co_fetchers(&self) -> &BTreeMap<PeerId, CoFetcher> {
        &self.co_fetchers
    }

    /// `peer` fetches the same file (kept as it was if known already): the shares may move.
    pub(crate) fn add_co_fetcher(&mut self, peer: PeerId, co: CoFetcher) {
        self.co_fetchers.entry(peer).or_insert(co);
        self.co_fetchers_changed();
        self.move_shares();
    }

    /// `peer` fetches the file no more (as far as this node is concerned): the shares move if
    /// it did.
    pub(crate) fn remove_co_fetcher(&mut self, peer: PeerId) {
        if self.co_fetchers.remove(&peer).is_some() {
            self.co_fetchers_changed();
            self.move_shares();
        }
    }

    /// Marks the co-fetchers that have not grown since `timeout` before `now` as stalled (the
    /// shares move if any was); returns them.
    pub(crate) fn mark_stalled_co_fetchers(
        &mut self,
        now: Instant,
        timeout: Duration,
    ) -> Vec<PeerId> {
        let mut marked = Vec::new();
        for (peer, co) in &mut self.co_fetchers {
            if !co.stalled && now >= co.last_grew + timeout {
                co.stalled = true;
                marked.push(*peer);
            }
        }
        if !marked.is_empty() {
            self.co_fetchers_changed();
            self.move_shares();
        }
        marked
    }

    /// Gives every co-fetcher a fresh stall clock from `now` (bytes flow again after a pause
    /// of this node's own).
    pub(crate) fn restart_co_fetcher_clocks(&mut self, now: Instant) {
        for co in self.co_fetchers.values_mut() {
            co.last_grew = now;
        }
        self.co_fetchers_changed();
    }

    /// When the first co-fetcher still growing is judged stalled, `timeout` after it last grew.
    pub(crate) fn co_stall_due(&self, timeout: Duration) -> Option<Instant> {
        if let Some(due) = self.co_stall_due.get() {
            return due;
        }
        let due = self
            .co_fetchers
            .values()
            .filter(|co| !co.stalled)
            .map(|co| co.last_grew + timeout)
            .min();
        self.co_stall_due.set(Some(due));
        due
    }

    /// `peer` says it holds `held` blocks: a co-fetcher that grew is not stalled. With a
    /// stalled co-fetcher, whether it keeps its part depends on what the others hold: the
    /// shares may move. (Only if the split left one out: what peers hold only grows here, and
    /// a stalled co-fetcher keeps its part while its arcs hold no block that no peer holds, so
    /// one kept stays kept.) A stalled co-fetcher that grows again is back in the split.
    pub(crate) fn note_growth(&mut self, peer: PeerId, held: u64, now: Instant) {
        let mut revived = false;
        if let Some(co) = self.co_fetchers.get_mut(&peer)
            && held > co.held
        {
            co.held = held;
            co.last_grew = now;
            revived = co.stalled;
            co.stalled = false;
            self.co_fetchers_changed();
        }
        let kept_all = matches!(&self.split, Some(Some(split)) if !split.left_out);
        if revived || (!kept_all && self.co_fetchers.values().any(|co| co.stalled)) {
            self.move_shares();
        }
    }

    /// Adds `blocks` to what `peer` holds.
    pub(crate) fn add_have(&mut self, peer: PeerId, blocks: &RangeSet) {
        let availability = &mut self.availability;
        self.haves
            .entry(peer)
            .or_default()
            .add_new(blocks, |b| count_in(availability, b, true));
        if let Some(held) = &mut self.peers_held {
            for run in blocks.runs() {
                held.insert(run);
            }
        }
    }

    /// What the peers in `haves` hold, all in one.
    pub(crate) fn peers_held(&mut self) -> &BlockBits {
        let haves = &self.haves;
        self.peers_held.get_or_insert_with(|| {
            let mut held = BlockBits::default();
            for bits in haves.values() {
                held.union_with(bits);
            }
            held
        })
    }

    /// Forgets what `peer` holds, and the co-fetchers it reported.
    pub(crate) fn remove_have(&mut self, peer: PeerId) {
        if let Some(old) = self.haves.remove(&peer) {
            for block in old.iter() {
                self.count(block, false);
            }
            self.peers_held = None;
        }
        if self.near_by.remove(&peer).is_some() {
            self.near = None;
        }
        if self.reported.remove(&peer).is_some() {
            self.move_shares();
        }
    }

    /// The shares of the origin's work may have moved: they are computed again when next
    /// needed, and origin fetches outside this node's share are looked for.
    pub(crate) fn move_shares(&mut self) {
        self.shares_moved = true;
        if let Some(split) = self.split.take() {
            self.told_before = Some(split.map(|s| s.told).unwrap_or_default());
        }
    }

    /// Whether the shares may have moved since the last look for stray origin fetches;
    /// clears it.
    pub(crate) fn take_shares_moved(&mut self) -> bool {
        std::mem::take(&mut self.shares_moved)
    }

    /// Records the co-fetchers' keys `peer` reports, each with its distance from `peer`
    /// (not `own`, this node's key). A change moves the shares: a key came or went, or a
    /// distance this node tells others changed.
    pub(crate) fn set_reported(&mut self, peer: PeerId, mut keys: Vec<(u64, u8)>, own: u64) {
        keys.retain(|&(k, _)| k != own);
        keys.sort_unstable();
        keys.dedup_by_key(|e| e.0);
        if self.reported.get(&peer) != Some(&keys) {
            self.reported.insert(peer, keys);
            self.move_shares();
        }
    }

    /// The blocks of `set` that no peer in `haves` holds (from the availability counts: one
    /// pass over `set`, whatever the number of peers).
    pub(crate) fn held_by_no_peer(&self, set: &RangeSet) -> RangeSet {
        filter_blocks(set, |b| self.availability(b) == 0)
    }

    /// What can come through `peer` now (replaces what it said before). True if it lost
    /// blocks: the origin may be asked for them.
    pub(crate) fn set_near(&mut self, peer: PeerId, blocks: BlockBits, now: Instant) -> bool {
        let old = self.near_by.get(&peer);
        if old == Some(&blocks) {
            return false;
        }
        let (mut gained, mut lost) = (false, false);
        old.unwrap_or(&BlockBits::default())
            .changes_to(&blocks, |_, g| if g { gained = true } else { lost = true });
        if gained {
            self.near_grew = now;
        }
        self.near_by.insert(peer, blocks);
        self.near = None;
        lost
    }

    /// What can come through `peer`, as it last said (`None`: it did not say).
    pub(crate) fn near_of(&self, peer: PeerId) -> Option<&BlockBits> {
        self.near_by.get(&peer)
    }

    /// Until when the origin is kept from what can come through the peers: while peers keep
    /// bringing blocks, or news of such blocks keeps coming, and for `wait` after.
    pub(crate) fn near_wait_until(&self, wait: Duration) -> Option<Instant> {
        (!self.near_by.is_empty()).then(|| self.near_grew.max(self.peer_block_at) + wait)
    }

    /// The blocks of `set` that cannot come through any peer.
    pub(crate) fn not_near(&mut self, set: &RangeSet) -> RangeSet {
        let by = &self.near_by;
        let near = self.near.get_or_insert_with(|| {
            let mut all = BlockBits::default();
            for bits in by.values() {
                all.union_with(bits);
            }
            all
        });
        filter_blocks(set, |b| !near.contains(b))
    }

    /// How many peers in `haves` hold `block`.
    pub(crate) fn availability(&self, block: u64) -> u32 {
        usize::try_from(block)
            .ok()
            .and_then(|b| self.availability.get(b))
            .copied()
            .unwrap_or(0)
    }

    fn count(&mut self, block: u64, up: bool) {
        count_in(&mut self.availability, block, up);
    }

    pub(crate) fn end_fetch(&mut self, request: RequestId) {
        self.fetches.remove(&request);
        self.peer_requests.remove(&request);
        self.trimmed.remove(&request);
        if let Some(twin) = self.twins.remove(&request) {
            self.twins.remove(&twin);
        }
    }

    /// Requests in flight to the origin.
    pub(crate) fn origin_fetches(&self) -> usize {
        self.fetches.len() - self.peer_requests.len()
    }

    /// Records a block written by `request`; true if it is new.
    pub(crate) fn add_block(
        &mut self,
        request: RequestId,
        block: BlockIndex,
        now: Instant,
    ) -> bool {
        if let Some(owed) = self.fetches.get_mut(&request) {
            owed.remove(block.0, block.0 + 1);
        }
        if let Some(p) = self.peer_requests.get_mut(&request) {
            p.last_progress = now;
            self.peer_block_at = now;
        }
        let Some(info) = &self.info else { return false };
        if block.0 >= block_count(info.len) || self.have.contains(block.0) {
            return false;
        }
        self.have.insert(block.0, block.0 + 1);
        self.settled.insert(block.0..block.0 + 1);
        let len = info.len;
        if !self.peer_requests.contains_key(&request) {
            self.qos_origin_bytes += block_range(len, block).len();
        }
        self.bytes_transferred += overlap(&self.wanted_bytes(len), block_range(len, block));
        true
    }

    /// Records a block a peer sent for `request` before the manifest was trusted: written, not
    /// checked yet. True if the request was live.
    pub(crate) fn add_unchecked(
        &mut self,
        request: RequestId,
        block: BlockIndex,
        now: Instant,
    ) -> bool {
        let Some(p) = self.peer_requests.get_mut(&request) else {
            return false;
        };
        p.last_progress = now;
        self.peer_block_at = now;
        let peer = p.peer;
        if let Some(owed) = self.fetches.get_mut(&request) {
            owed.remove(block.0, block.0 + 1);
        }
        let fresh = self
            .info
            .as_ref()
            .is_some_and(|i| block.0 < block_count(i.len))
            && !self.have.contains(block.0);
        if fresh {
            self.unchecked
                .entry(peer)
                .or_default()
                .insert(block.0, block.0 + 1);
            self.unchecked_all.insert(block.0, block.0 + 1);
            self.settled.insert(block.0..block.0 + 1);
        }
        fresh
    }

    /// Some block waits, unchecked, for the manifest.
    pub(crate) fn has_unchecked(&self) -> bool {
        !self.unchecked.is_empty()
    }

    /// The manifest is trusted and the driver checked the unchecked blocks: all but `refuted`
    /// and `lost` are now held. Returns the peers that sent a refuted block.
    pub(crate) fn confirm_unchecked(&mut self, refuted: &RangeSet, lost: &RangeSet) -> Vec<PeerId> {
        self.unchecked_all = RangeSet::new();
        let Some(len) = self.info.as_ref().map(|i| i.len) else {
            self.unchecked.clear();
            self.settled = BlockBits::from_set(&self.have);
            return Vec::new();
        };
        let wanted = self.wanted_bytes(len);
        let mut liars = Vec::new();
        for (peer, blocks) in std::mem::take(&mut self.unchecked) {
            let checked = blocks.difference(lost);
            let good = checked.difference(refuted);
            if good.count() < checked.count() {
                liars.push(peer);
            }
            for run in good.runs() {
                for b in run {
                    if !self.have.contains(b) {
                        self.have.insert(b, b + 1);
                        self.bytes_transferred += overlap(&wanted, block_range(len, BlockIndex(b)));
                    }
                }
            }
        }
        self.settled = BlockBits::from_set(&self.have);
        liars
    }

    /// The file is complete: what peers hold and whom the origin's work was split with are of
    /// no more use (a download started again for more ranges learns them again at the
    /// driver's next poll). In a fleet, most downloads are finished ones: each kept a bitmap
    /// per peer.
    pub(crate) fn release_peers(&mut self) {
        self.haves = BTreeMap::new();
        self.availability = Vec::new();
        self.peers_held = None;
        self.told_near = None;
        self.co_fetchers = BTreeMap::new();
        self.co_fetchers_changed();
        self.reported = BTreeMap::new();
        self.near_by = BTreeMap::new();
        self.near = None;
        self.near_until = None;
        self.move_shares();
        // (A split computed again after this one tells others in any case.)
        self.told_before = None;
    }

    /// The origin's file changed: everything known about the old version goes.
    pub(crate) fn forget_file(&mut self) {
        self.info = None;
        self.have = RangeSet::new();
        self.settled = BlockBits::default();
        self.needed = RangeSet::new();
        self.needed_bits = BlockBits::default();
        self.fetches.clear();
        self.peer_requests.clear();
        self.twins.clear();
        self.release_peers();
        self.unchecked.clear();
        self.unchecked_all = RangeSet::new();
        self.published = None;
        self.manifest_trusted = false;
        self.bytes_total = 0;
        self.bytes_transferred = 0;
    }

    fn wanted_bytes(&self, len: u64) -> RangeSet {
        match &self.ranges {
            Some(ranges) => ranges.iter().map(|r| r.start..r.end.min(len)).collect(),
            None => std::iter::once(0..len).collect(),
        }
    }
}

/// Checks requested ranges: at least one, none empty, none overlapping, and (when the length
/// is known) none starting at or past the end. A range may run to `u64::MAX` ("to the end").
pub(crate) fn check_ranges(ranges: &[ByteRange], len: Option<u64>) -> Result<(), CommandError> {
    if ranges.is_empty() || ranges.iter().any(ByteRange::is_empty) {
        return Err(CommandError::InvalidRange);
    }
    let mut sorted = ranges.to_vec();
    sorted.sort();
    if sorted.windows(2).any(|w| w[0].end > w[1].start) {
        return Err(CommandError::OverlappingRanges);
    }
    if let Some(len) = len
        && sorted
            .iter()
            .any(|r| r.start >= len || (r.end > len && r.end != u64::MAX))
    {
        return Err(CommandError::InvalidRange);
    }
    Ok(())
}

/// The blocks of `set` for which `keep` is true, as runs (one pass over `set`).
fn filter_blocks(set: &RangeSet, keep: impl Fn(u64) -> bool) -> RangeSet {
    let mut out = RangeSet::new();
    for run in set.runs() {
        let mut start = None;
        for b in run.clone() {
            match (keep(b), start) {
                (true, None) => start = Some(b),
                (false, Some(s)) => {
                    out.insert(s, b);
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            out.insert(s, run.end);
        }
    }
    out
}

fn overlap(wanted: &RangeSet, block: ByteRange) -> u64 {
    wanted.clipped(block.start, block.end).count()
}

/// Counts one holder more (`up`) or less of `block` in `availability`.
fn count_in(availability: &mut Vec<u32>, block: u64, up: bool) {
    let b = usize::try_from(block).expect("block indices fit in memory");
    if availability.len() <= b {
        availability.resize(b + 1, 0);
    }
    let slot = &mut availability[b];
    *slot = if up {
        *slot + 1
    } else {
        slot.saturating_sub(1)
    };
}
