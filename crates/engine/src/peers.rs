//! Peers as sources: have-maps, rarest-first picking with a random start, per-peer slots,
//! banning a peer whose bytes fail verification, stalled requests, and the origin fallback
//! delay. Pure scheduling: peers' bytes are verified by the driver before they get here.

use std::{collections::BTreeMap, time::Instant};

use do_content::{BlockBits, BlockIndex, RangeSet};
use tracing::{debug, info};

use crate::{
    Action, DownloadId, Engine, Event, Input, PeerClass, PeerId, RequestId, State,
    download::{CoFetcher, Download, PeerRequest},
};

/// What the engine knows of a peer.
pub(crate) struct Peer {
    class: PeerClass,
    banned: bool,
    /// The most blocks it takes in one request ([`Input::PeerRequestLimit`]).
    max_blocks: u64,
}

impl Engine {
    /// Peer lifecycle and holdings.
    pub(crate) fn on_peer_input(&mut self, now: Instant, input: Input) {
        let affected = self.apply_peer_input(now, input);
        self.schedule_affected(now, affected);
    }

    /// Download `id`, if `peer` may tell it what it holds: the peer is known and not banned,
    /// and its requests for this file have not stalled.
    fn usable_download(&mut self, id: DownloadId, peer: PeerId) -> Option<&mut Download> {
        let usable = self.peers.get(&peer).is_some_and(|p| !p.banned);
        self.downloads
            .get_mut(&id)
            .filter(|d| usable && !d.dropped.contains(&peer))
    }

    /// The blocks of a download's file that this node's usable peers hold, on the LAN and
    /// beyond: what it tells a peer that asks what can come through it ([`Input::PeerNear`]
    /// there). What its peers beyond the LAN hold tells its LAN co-fetchers which blocks it
    /// can bring across the WAN; so the answer is kept as what this node last told, and
    /// [`Engine::far_take`] judges this node by it, as they do.
    pub fn held_by_peers(&mut self, id: DownloadId) -> BlockBits {
        let Some(d) = self.downloads.get_mut(&id) else {
            return BlockBits::default();
        };
        let held = d.peers_held().clone();
        d.told_near = Some(held.clone());
        held
    }

    /// Schedules the downloads `affected` names.
    pub(crate) fn schedule_affected(&mut self, now: Instant, affected: Affects) {
        let ids: Vec<DownloadId> = match affected {
            Affects::Nothing => Vec::new(),
            Affects::One(id) => vec![id],
            Affects::All => self.downloads.keys().copied().collect(),
        };
        for id in ids {
            self.schedule(now, id);
        }
    }

    /// Records a peer input; returns the downloads to schedule again.
    pub(crate) fn apply_peer_input(&mut self, now: Instant, input: Input) -> Affects {
        let affected = match &input {
            Input::PeerHas { id, .. }
            | Input::PeerGained { id, .. }
            | Input::PeerFetching { id, .. }
            | Input::PeerCoFetchers { id, .. }
            | Input::ManifestTrusted { id, .. } => Affects::One(*id),
            // More only keeps the origin from blocks: nothing new to hand out (less is, below).
            Input::PeerNear { .. } => Affects::Nothing,
            // Smaller requests from now on: nothing new to hand out.
            Input::PeerRequestLimit { .. } => Affects::Nothing,
            _ => Affects::All,
        };
        match input {
            Input::PeerAdded { peer, class } => {
                let known = self.peers.entry(peer).or_insert(Peer {
                    class,
                    banned: false,
                    max_blocks: u64::MAX,
                });
                let moved = known.class != class;
                known.class = class;
                // A peer beyond the LAN: the LAN's co-fetchers now split what crosses the WAN
                // (and a co-fetcher that moved in or out of the LAN joins or leaves them).
                if moved || class != PeerClass::Lan {
                    for d in self.downloads.values_mut() {
                        d.move_shares();
                    }
                }
            }
            Input::PeerRequestLimit { peer, blocks } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.max_blocks = blocks.max(1);
                }
            }
            Input::PeerRemoved { peer } => {
                self.peers.remove(&peer);
                self.forget_peer(peer);
                // A peer that comes back gets a fresh chance.
                for d in self.downloads.values_mut() {
                    d.dropped.remove(&peer);
                }
            }
            Input::PeerHas { id, peer, blocks } => {
                if let Some(d) = self.usable_download(id, peer) {
                    d.note_growth(peer, blocks.count(), now);
                    d.set_have(peer, &blocks);
                }
            }
            Input::PeerGained { id, peer, blocks } => {
                if let Some(d) = self.usable_download(id, peer) {
                    d.add_have(peer, &blocks);
                    let held = d.haves.get(&peer).map_or(0, BlockBits::count);
                    d.note_growth(peer, held, now);
                }
            }
            Input::PeerNear { id, peer, blocks } => {
                // From a peer beyond the LAN too: in Group mode the sites' links, not the
                // origin's, are what the file is to cross (with them, sites-group took
                // 1.054-1.067 origin copies instead of 1.068-1.086, seeds 1-3).
                if let Some(d) = self.usable_download(id, peer)
                    && d.set_near(peer, blocks, now)
                {
                    return Affects::One(id);
                }
            }
            Input::PeerFetching { id, peer, key } => {
                let usable = self.peers.get(&peer).is_some_and(|p| !p.banned);
                if let (true, Some(d)) = (usable, self.downloads.get_mut(&id))
                    && !d.dropped.contains(&peer)
                {
                    let held = d.haves.get(&peer).map_or(0, BlockBits::count);
                    d.add_co_fetcher(
                        peer,
                        CoFetcher {
                            key,
                            held,
                            last_grew: now,
                            stalled: false,
                        },
                    );
                }
            }
            Input::PeerCoFetchers { id, peer, keys } => {
                let usable = self.peers.get(&peer).is_some_and(|p| !p.banned);
                if let (true, Some(d)) = (usable, self.downloads.get_mut(&id))
                    && !d.dropped.contains(&peer)
                {
                    d.set_reported(peer, keys, self.config.node_key);
                }
            }
            Input::ManifestTrusted { id, refuted, lost } => {
                let Some(d) = self.downloads.get_mut(&id) else {
                    return affected;
                };
                d.manifest_trusted = true;
                let liars = d.confirm_unchecked(&refuted, &lost);
                if d.state == State::Transferring {
                    d.last_progress = now;
                }
                self.emit_status(id);
                if !liars.is_empty() {
                    for peer in liars {
                        info!(
                            peer = peer.0,
                            download = id.0,
                            "peer sent bad blocks before the manifest was trusted: banned"
                        );
                        self.ban(peer);
                    }
                    return Affects::All;
                }
            }
            _ => unreachable!("only peer inputs are routed here"),
        }
        affected
    }

    /// A peer sent a block that failed verification: ban it everywhere.
    pub(crate) fn on_block_corrupt(&mut self, now: Instant, request: RequestId, block: BlockIndex) {
        let Some(&id) = self.requests.get(&request) else {
            return;
        };
        let Some(peer) = self.downloads[&id]
            .peer_requests
            .get(&request)
            .map(|p| p.peer)
        else {
            return;
        };
        info!(peer = peer.0, download = id.0, %block, "bad block from a peer: banned");
        self.ban(peer);
        let ids: Vec<DownloadId> = self.downloads.keys().copied().collect();
        for id in ids {
            self.schedule(now, id);
        }
    }

    /// Bans a peer everywhere: its requests are cancelled and it is never asked again.
    fn ban(&mut self, peer: PeerId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.banned = true;
        }
        self.forget_peer(peer);
        self.events.push_back(Event::PeerBanned { peer });
    }

    /// Cancels a peer's requests and forgets its holdings, in every download.
    fn forget_peer(&mut self, peer: PeerId) {
        let mut cancelled = Vec::new();
        for d in self.downloads.values_mut() {
            d.remove_have(peer);
            d.remove_co_fetcher(peer);
            let mine: Vec<RequestId> = d
                .peer_requests
                .iter()
                .filter(|(_, p)| p.peer == peer)
                .map(|(&r, _)| r)
                .collect();
            for request in mine {
                d.end_fetch(request);
                cancelled.push(request);
            }
        }
        for request in cancelled {
            self.requests.remove(&request);
            self.actions.push_back(Action::Cancel { request });
        }
    }

    /// Peer requests that delivered nothing for the stall timeout are cancelled; the peer is
    /// not asked for that file again.
    pub(crate) fn drop_stalled_peer_requests(&mut self, now: Instant) {
        let timeout = self.config.peer_stall_timeout;
        let mut stalled = Vec::new();
        for (&id, d) in &mut self.downloads {
            // While the origin fails this node too, co-fetchers are expected to stand still:
            // none is judged stalled (else every part is cut again when the origin returns,
            // and the whole crowd asks it for everything at once).
            let origin_failing = d.failures > 0;
            if !origin_failing {
                for peer in d.mark_stalled_co_fetchers(now, timeout) {
                    debug!(
                        download = id.0,
                        peer = peer.0,
                        "co-fetching peer stopped growing"
                    );
                }
            }
            let late: Vec<(RequestId, PeerId)> = d
                .peer_requests
                .iter()
                .filter(|(_, p)| now >= p.last_progress + timeout)
                .map(|(&r, p)| (r, p.peer))
                .collect();
            for (request, peer) in late {
                debug!(
                    download = id.0,
                    peer = peer.0,
                    "peer request stalled; peer dropped"
                );
                d.end_fetch(request);
                d.remove_have(peer);
                d.remove_co_fetcher(peer);
                d.dropped.insert(peer);
                stalled.push(request);
            }
        }
        for request in stalled {
            self.requests.remove(&request);
            self.actions.push_back(Action::Cancel { request });
        }
    }

    /// The earliest peer-related deadline of a download: a stall, or the end of the origin
    /// fallback delay while it holds the origin back.
    pub(crate) fn peer_deadline(&self, d: &Download) -> Option<Instant> {
        let stall = d
            .peer_requests
            .values()
            .map(|p| p.last_progress + self.config.peer_stall_timeout)
            .min();
        // Only while it is ahead: a deadline in the past would wake the driver forever.
        let fallback = (self.peering(d) && !d.fallback_passed)
            .then(|| d.started_at + self.config.origin_fallback_delay);
        // Co-fetchers are not judged while the origin fails this node (see
        // `drop_stalled_peer_requests`), so their deadlines are no timers then.
        let co_stall = if d.failures == 0 {
            d.co_stall_due(self.config.peer_stall_timeout)
        } else {
            None
        };
        [
            stall,
            fallback,
            co_stall,
            self.endgame_deadline(d),
            d.near_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When a download's rate window ends: only while it transfers with peers to supply it
    /// (without them the origin is asked for everything anyway).
    pub(crate) fn qos_deadline(&self, d: &Download) -> Option<Instant> {
        (self.config.min_background_qos > 0 && d.state == State::Transferring && self.peering(d))
            .then(|| d.qos_since + crate::QOS_WINDOW)
    }

    /// Ends a download's rate window if it is over: the origin tops the peers up while the
    /// window was slower than [`Config::min_background_qos`].
    pub(crate) fn check_qos(&mut self, now: Instant, id: DownloadId) {
        let Some(d) = self.downloads.get(&id) else {
            return;
        };
        let Some(end) = self.qos_deadline(d) else {
            return;
        };
        if now < end {
            return;
        }
        let d = self.downloads.get_mut(&id).expect("live");
        let seconds = now.duration_since(d.qos_since).as_secs_f64();
        let rate = d.qos_window_bytes() as f64 / seconds;
        let origin_rate = d.qos_origin_bytes as f64 / seconds;
        let min = self.config.min_background_qos as f64;
        let below = if d.qos_idle > 0 {
            d.qos_idle -= 1;
            false
        } else if rate >= min {
            d.qos_backoff = 0;
            false
        } else if d.below_qos && origin_rate < min / 2.0 {
            // A whole window of top-up, and the origin did not help: it shares the peers'
            // bottleneck. Judged again after a pause that doubles each time.
            d.qos_backoff = (d.qos_backoff * 2).clamp(1, QOS_MAX_PAUSE);
            d.qos_idle = d.qos_backoff;
            false
        } else {
            true
        };
        if below != d.below_qos {
            info!(
                download = id.0,
                rate = rate.round(),
                "{}",
                if below {
                    "slower than the minimum: the origin tops the peers up"
                } else {
                    "fast enough again: the origin back to its share"
                }
            );
        }
        d.below_qos = below;
        d.restart_qos_window(now);
    }

    /// In endgame, when the next peer request without a copy becomes due for one.
    fn endgame_deadline(&self, d: &Download) -> Option<Instant> {
        if !d.endgame || !d.manifest_trusted {
            return None;
        }
        d.peer_requests
            .values()
            .filter(|p| !p.copy_sought)
            .map(|p| p.last_progress + self.config.endgame_after)
            .min()
    }

    /// Endgame (every missing block is asked for): each peer request that has brought nothing
    /// for [`Config::endgame_after`] is asked once more of another peer holding all it still
    /// owes, the nearest class first, then the least busy (within its slots). Only with a
    /// trusted manifest, so that whichever copy comes first is checked as it arrives.
    pub(crate) fn endgame(&mut self, now: Instant, id: DownloadId) {
        let d = &self.downloads[&id];
        if !d.manifest_trusted {
            return;
        }
        let due: Vec<(RequestId, PeerId, RangeSet)> = d
            .peer_requests
            .iter()
            .filter(|(r, p)| {
                !d.twins.contains_key(r) && now >= p.last_progress + self.config.endgame_after
            })
            .filter_map(|(r, p)| Some((*r, p.peer, d.fetches.get(r)?.clone())))
            .filter(|(_, _, owed)| !owed.is_empty())
            .collect();
        if due.is_empty() {
            return;
        }
        let mut load: BTreeMap<PeerId, usize> = BTreeMap::new();
        for p in self
            .downloads
            .values()
            .flat_map(|d| d.peer_requests.values())
        {
            *load.entry(p.peer).or_default() += 1;
        }
        for (request, server, owed) in due {
            let d = self.downloads.get_mut(&id).expect("live");
            if let Some(p) = d.peer_requests.get_mut(&request) {
                p.copy_sought = true;
            }
            let (Some(first), Some(last)) = (owed.first(), owed.runs().next_back()) else {
                continue;
            };
            let blocks = first..last.end;
            let span = blocks.end - blocks.start;
            let holder = d
                .haves
                .iter()
                .filter(|&(&p, have)| {
                    let busy = load.get(&p).copied().unwrap_or(0);
                    p != server
                        && busy < self.config.peer_slots
                        && self
                            .peers
                            .get(&p)
                            .is_some_and(|info| !info.banned && info.max_blocks >= span)
                        && owed.runs().all(|run| have.contains_run(run))
                })
                .map(|(&p, _)| (self.peers[&p].class, load.get(&p).copied().unwrap_or(0), p))
                .min();
            let Some((_, _, peer)) = holder else {
                continue;
            };
            *load.entry(peer).or_default() += 1;
            let copy = self.new_request(id);
            let d = self.downloads.get_mut(&id).expect("live");
            d.fetches.insert(copy, owed);
            d.peer_requests.insert(
                copy,
                PeerRequest {
                    peer,
                    last_progress: now,
                    copy_sought: true,
                },
            );
            d.twins.insert(request, copy);
            d.twins.insert(copy, request);
            debug!(
                download = id.0,
                slow = server.0,
                peer = peer.0,
                ?blocks,
                "endgame: a slow request asked again of another peer"
            );
            self.actions.push_back(Action::RequestBlocks {
                request: copy,
                id,
                peer,
                blocks,
            });
        }
    }

    /// Asks peers for missing blocks they hold: nearest class first (a block a nearer peer
    /// holds waits for it rather than crossing a WAN link), the rarest blocks first
    /// (from a random point, so that downloads spread over the file), within each peer's slots.
    /// Before the manifest is trusted too: what peers send then waits, unchecked, for it (so
    /// that the parts of a crowd's co-fetchers move while the origin is still sending them).
    /// `missing` is the download's [`Download::missing`]; what this asks of peers is taken
    /// out of it.
    pub(crate) fn schedule_peers(&mut self, now: Instant, id: DownloadId, missing: &mut BlockBits) {
        // Without a content id to trust, peers' bytes could never be checked.
        let d = &self.downloads[&id];
        if !d.manifest_trusted && d.trusted_id().is_none() {
            return;
        }
        let limit = self.config.download_peer_requests;
        let mut budget = limit.saturating_sub(d.peer_requests.len());
        if (budget == 0 || missing.is_empty()) && self.config.peer_slots > 0 {
            // Nothing can be asked (every request slot is taken, or nothing is missing): the
            // pass below would stop at its first peer, after drawing where its first class
            // starts. The same draw, without sorting the peers first.
            if d.haves
                .keys()
                .any(|p| self.peers.get(p).is_some_and(|info| !info.banned))
            {
                self.rng.next_u64();
            }
            return;
        }
        let mut order: Vec<(PeerClass, PeerId)> = self.downloads[&id]
            .haves
            .keys()
            .filter_map(|p| {
                self.peers
                    .get(p)
                    .filter(|info| !info.banned)
                    .map(|info| (info.class, *p))
            })
            .collect();
        order.sort();
        // `missing`, as bits, kept in step with it below.
        let mut wanted = missing.clone();
        // Nearest class first. Within a class, requests are spread over the peers (a round
        // gives each peer at most one more), from a random peer onward, so that a crowd does
        // not queue at the same few servers.
        let mut classes: Vec<Vec<PeerId>> = Vec::new();
        for (class, peer) in order {
            match classes.last_mut() {
                Some(last) if self.peers[&last[0]].class == class => last.push(peer),
                _ => classes.push(vec![peer]),
            }
        }
        let last = classes.len().saturating_sub(1);
        let lan_request_blocks = if self.knows_far_peers() {
            self.config.mixed_request_blocks
        } else {
            self.config.peer_request_blocks
        };
        let mut far_applied = false;
        for (c, mut peers) in classes.into_iter().enumerate() {
            let class = self.peers[&peers[0]].class;
            let max = if class == PeerClass::Lan {
                lan_request_blocks
            } else {
                self.config.far_request_blocks
            };
            // Past the LAN, this node brings only its share of what the LAN lacks: the LAN's
            // other co-fetchers bring the rest across the WAN, each block once per site.
            if !far_applied && class != PeerClass::Lan {
                far_applied = true;
                if let Some(take) = self.far_take(&self.downloads[&id], &wanted) {
                    wanted = take;
                }
            }
            let turn = (self.rng.next_u64() % peers.len() as u64) as usize;
            peers.rotate_left(turn);
            // Peers found to hold nothing that is missing: `missing` only shrinks here, so they
            // are not looked at again in later rounds (their draw is still made, so that the
            // decisions stay those of a full scan).
            let mut dry = vec![false; peers.len()];
            for round in 0..self.config.peer_slots {
                for (k, &peer) in peers.iter().enumerate() {
                    if budget == 0 || missing.is_empty() {
                        return;
                    }
                    if self.peer_load(peer) > round {
                        continue;
                    }
                    let d = &self.downloads[&id];
                    let offset = self.rng.next_u64();
                    if dry[k] {
                        continue;
                    }
                    let max = max.min(self.peers[&peer].max_blocks);
                    let Some(blocks) = pick(d, &wanted, peer, offset, max) else {
                        dry[k] = true;
                        continue;
                    };
                    missing.clear(blocks.clone());
                    wanted.clear(blocks.clone());
                    budget -= 1;
                    let request = self.new_request(id);
                    let d = self.downloads.get_mut(&id).expect("live");
                    d.begin_fetch(request, blocks.clone());
                    d.peer_requests.insert(
                        request,
                        PeerRequest {
                            peer,
                            last_progress: now,
                            copy_sought: false,
                        },
                    );
                    self.actions.push_back(Action::RequestBlocks {
                        request,
                        id,
                        peer,
                        blocks,
                    });
                }
            }
            // What this class holds is left to it: farther peers get only what it lacks.
            if c < last {
                for peer in &peers {
                    if let Some(have) = self.downloads[&id].haves.get(peer) {
                        wanted.subtract(have);
                    }
                }
            }
        }
    }

    /// The missing blocks the origin may fetch now: none before the fallback delay while
    /// peering; after it, what no usable peer (with a trusted manifest) holds. `None`: not yet.
    /// `missing` is the download's [`Download::missing`].
    pub(crate) fn origin_candidates(
        &mut self,
        now: Instant,
        id: DownloadId,
        missing: &BlockBits,
    ) -> Option<RangeSet> {
        let near_wait = self.config.near_wait;
        let d = &self.downloads[&id];
        // Below the minimum speed the origin is asked for anything missing, at once.
        if d.below_qos {
            return Some(missing.to_set());
        }
        if self.peering(d) && now < d.started_at + self.config.origin_fallback_delay {
            return None;
        }
        // Only this node's share of what is missing is made into runs.
        let mut missing = match self.origin_share(d) {
            Some(share) => missing.to_set_within(share),
            None => missing.to_set(),
        };
        // Blocks a peer holds come from it, checked at once with a trusted manifest, or
        // checked when it is trusted (peers are asked only with a content id to trust).
        // (`haves` holds usable peers only: a peer that is banned or gone is forgotten.)
        if d.manifest_trusted || d.trusted_id().is_some() {
            missing = d.held_by_no_peer(&missing);
            // And blocks their own peers hold come through them, while they keep coming.
            if let Some(until) = d.near_wait_until(near_wait).filter(|&t| t > now) {
                let d = self.downloads.get_mut(&id).expect("live");
                let far = d.not_near(&missing);
                if far.count() < missing.count() {
                    d.near_until = Some(until);
                    missing = far;
                }
            }
        }
        Some(missing)
    }

    /// Cuts down or cancels the origin fetches that bring blocks outside this node's share
    /// (the share shrank: a co-fetcher joined and takes them over). A fetch whose block in
    /// flight is still in the share goes on through the share's blocks that follow it, then
    /// is cancelled: cancelling it at once threw away the part of that block that had come,
    /// and asked again for the rest. A fetch whose block in flight left the share is
    /// cancelled at once. What they owed beyond goes back to `missing`, and what lies inside
    /// the share is asked for again. Without this, every node that started before the others
    /// came would fetch its first, larger share to the end.
    pub(crate) fn cancel_stray_origin_fetches(&mut self, id: DownloadId, missing: &mut BlockBits) {
        let d = self.downloads.get_mut(&id).expect("live");
        // Only when the share may have moved: computing it can sweep every peer's holdings.
        if !d.take_shares_moved() {
            return;
        }
        let d = &self.downloads[&id];
        if !d.info.as_ref().is_some_and(|i| i.accepts_ranges) {
            return;
        }
        let Some(share) = self.origin_share(d) else {
            return;
        };
        let stray: Vec<RequestId> = d
            .fetches
            .iter()
            .filter(|(r, _)| !d.peer_requests.contains_key(r))
            .filter(|(_, owed)| !owed.difference(share).is_empty())
            .map(|(&r, _)| r)
            .collect();
        let share = share.clone();
        for request in stray {
            let d = self.downloads.get_mut(&id).expect("live");
            if let Some(rest) = d.trim_fetch(request, &share) {
                for run in rest.runs() {
                    missing.insert(run);
                }
                debug!(
                    download = id.0,
                    request = request.0,
                    "origin fetch beyond the share: cut to the share's blocks it brings next"
                );
                continue;
            }
            if let Some(owed) = d.fetches.get(&request) {
                for run in owed.runs() {
                    missing.insert(run);
                }
            }
            debug!(
                download = id.0,
                request = request.0,
                "origin fetch outside the share: cancelled"
            );
            self.cancel_fetch(id, request);
        }
    }

    /// This node's share of the origin's work on a whole-file download that other nodes
    /// fetch at the same time (see [`Engine::split`]), as computed by [`Engine::refresh_split`].
    /// `None`: nobody to share with.
    fn origin_share<'a>(&self, d: &'a Download) -> Option<&'a RangeSet> {
        d.split.as_ref()?.as_ref().map(|split| &split.mine)
    }

    /// Computes a download's split again if the shares may have moved since.
    pub(crate) fn refresh_split(&mut self, id: DownloadId) {
        let Some(d) = self.downloads.get(&id) else {
            return;
        };
        if d.split.is_none() {
            let split = self.split(d);
            let d = self.downloads.get_mut(&id).expect("live");
            let before = d.told_before.take().unwrap_or_default();
            if split.as_ref().map_or(&[][..], |s| &s.told[..]) != before {
                self.splits_made += 1;
                d.split_version = self.splits_made;
            }
            d.split = Some(split);
        }
    }

    /// How the origin's work on a whole-file download is split among the nodes fetching it:
    /// this one, its co-fetchers, and the co-fetchers its peers report. The file's blocks
    /// form a ring; each node's key hashes to [`SPLIT_POINTS`] points on it, and a node
    /// fetches the arcs from each of its points up to the next point of any node (consistent
    /// hashing). Nodes that see different parts of the swarm then still never leave a block
    /// to nobody: a node that sees fewer others has longer arcs, so its arcs hold the ones it
    /// would have in the view of the whole swarm; and a node that joins or leaves moves only
    /// the arcs beside its points. A co-fetcher of this node that stopped growing while its
    /// arcs still have blocks nobody holds drops out, and they go to the points before them;
    /// a reported one drops out when its reporters drop it. `None`: nobody to share with.
    pub(crate) fn split(&self, d: &Download) -> Option<Split> {
        if d.ranges.is_some() {
            return None;
        }
        let blocks = d.info.as_ref().map(|i| do_content::block_count(i.len))?;
        let own = self.config.node_key;
        let mut direct: Vec<(u64, bool)> = d
            .co_fetchers()
            .iter()
            .filter(|(p, co)| co.key != own && self.peers.get(p).is_some_and(|i| !i.banned))
            .map(|(_, co)| (co.key, co.stalled))
            .collect();
        direct.sort_unstable();
        direct.dedup_by_key(|m| m.0);
        // Every key reported, at its distance from this node (the nearest report's).
        let mut near: BTreeMap<u64, u8> = BTreeMap::new();
        for report in d.reported.values() {
            for &(k, hops) in report {
                let e = near.entry(k).or_insert(u8::MAX);
                *e = (*e).min(hops.saturating_add(1));
            }
        }
        if direct.is_empty() && near.is_empty() {
            return None;
        }
        // Needed blocks that neither this node nor any usable peer holds or is bringing (the
        // origin fetches of this node do not count: they may be taking over a stalled
        // co-fetcher's part): computed only if some co-fetcher stalled.
        let mut unheld: Option<RangeSet> = None;
        let mut out: Vec<u64> = Vec::new();
        loop {
            let mut members: Vec<u64> = direct.iter().map(|m| m.0).collect();
            members.extend(near.keys().filter(|k| !out.contains(k)));
            members.push(own);
            let points = ring(&members, blocks);
            let part = |k: u64| arcs(&points, k, blocks);
            let dropout = direct.iter().position(|&(k, stalled)| {
                if !stalled {
                    return false;
                }
                let unheld = unheld.get_or_insert_with(|| d.held_by_no_peer(&d.not_from_peers()));
                !unheld.intersection(&part(k)).is_empty()
            });
            match dropout {
                Some(i) => {
                    out.push(direct.remove(i).0);
                }
                None => {
                    // What this node tells: itself, its own co-fetchers, and the keys it was
                    // told of whose distance from it is at most `TOLD_HOPS`.
                    for &(k, _) in &direct {
                        near.insert(k, 1);
                    }
                    near.insert(own, 0);
                    near.retain(|_, hops| *hops <= TOLD_HOPS);
                    let keys: Vec<u64> = near.keys().copied().collect();
                    let told = ring(&keys, blocks)
                        .into_iter()
                        .map(|(point, k)| (point, k, near[&k]))
                        .collect();
                    return Some(Split {
                        mine: part(own),
                        told,
                        far: self.far_ring(d, blocks),
                        left_out: !out.is_empty(),
                    });
                }
            }
        }
    }

    /// Whether any known peer is beyond the LAN (Group, Internet).
    fn knows_far_peers(&self) -> bool {
        self.peers.values().any(|p| p.class != PeerClass::Lan)
    }

    /// With peers beyond the LAN: the ring on which this node and its LAN co-fetchers that
    /// still grow (a stalled one's blocks go to the others) split what crosses the WAN (see
    /// [`Engine::far_take`]). `None`: no peer beyond the LAN, or no LAN co-fetcher to share
    /// with.
    fn far_ring(&self, d: &Download, blocks: u64) -> Option<FarRing> {
        if !self.knows_far_peers() {
            return None;
        }
        let own = self.config.node_key;
        let mut lan: Vec<(u64, Option<PeerId>)> = d
            .co_fetchers()
            .iter()
            .filter(|(p, co)| {
                !co.stalled
                    && co.key != own
                    && self
                        .peers
                        .get(p)
                        .is_some_and(|i| !i.banned && i.class == PeerClass::Lan)
            })
            .map(|(&p, co)| (co.key, Some(p)))
            .collect();
        if lan.is_empty() {
            return None;
        }
        lan.push((own, None));
        lan.sort_unstable();
        lan.dedup_by_key(|m| m.0);
        let keys: Vec<u64> = lan.iter().map(|m| m.0).collect();
        let points = ring(&keys, blocks)
            .into_iter()
            .map(|(point, k)| (point, keys.binary_search(&k).expect("a member's key")))
            .collect();
        Some(FarRing {
            points,
            members: lan.into_iter().map(|m| m.1).collect(),
        })
    }

    /// The blocks of `wanted` this node brings across the WAN for its LAN, with peers beyond
    /// the LAN and LAN co-fetchers to share with (`None` otherwise: it takes what it wants).
    /// Each block goes to one member of the download's [`FarRing`] that can bring it: the
    /// block's arc's owner if it can, else the first after it on the ring that can. This node
    /// can bring what its peers beyond the LAN hold, as far as it last told its co-fetchers
    /// ([`Engine::held_by_peers`]: so that they judge it from what it judges them, the same
    /// news); a co-fetcher, what it last said can come through it ([`Input::PeerNear`]: its
    /// own peers' blocks, on its LAN and beyond; the LAN's are not wanted across the WAN). So
    /// no block waits on a co-fetcher whose peers beyond the LAN lack it while another one's
    /// hold it, and each crosses the WAN once. Before this node trusts a manifest, each
    /// member keeps its own arcs: blocks from peers come unchecked and are not told, so no
    /// co-fetcher could see that another had already brought the block it would take over.
    /// (In `sites-group`: 169 s and 1.22 origin copies with arcs only; 104 s and 1.07 so.)
    fn far_take(&self, d: &Download, wanted: &BlockBits) -> Option<BlockBits> {
        let Some(Some(Split { far: Some(far), .. })) = &d.split else {
            return None;
        };
        let mut reach = BlockBits::default();
        for (p, have) in &d.haves {
            if !is_lan(&self.peers, *p) {
                reach.union_with(have);
            }
        }
        if let Some(told) = &d.told_near {
            reach.intersect_with(told);
        }
        let can: Vec<Option<&BlockBits>> = far
            .members
            .iter()
            .map(|m| match m {
                None => Some(&reach),
                Some(peer) => d.near_of(*peer),
            })
            .collect();
        let mut take = wanted.clone();
        take.intersect_with(&reach);
        let mut mine = BlockBits::default();
        let n = far.points.len();
        for block in take.iter() {
            let arc = (far.points.partition_point(|&(p, _)| p <= block) + n - 1) % n;
            let bringer = if d.manifest_trusted {
                (0..n)
                    .map(|s| far.points[(arc + s) % n].1)
                    .find(|&m| can[m].is_some_and(|c| c.contains(block)))
            } else {
                Some(far.points[arc].1)
            };
            if bringer.is_some_and(|m| far.members[m].is_none()) {
                mine.insert(block..block + 1);
            }
        }
        Some(mine)
    }

    /// True when peers could help this download: it knows the content id it must hash to (so
    /// peer blocks can be verified once a manifest arrives) and some peer is known. Only then
    /// does the origin wait out the fallback delay, as DO delays HTTP only when peering.
    fn peering(&self, d: &Download) -> bool {
        d.trusted_id().is_some() && self.peers.values().any(|p| !p.banned)
    }

    /// Requests in flight to `peer`, over all downloads.
    fn peer_load(&self, peer: PeerId) -> usize {
        self.downloads
            .values()
            .map(|d| d.peer_requests.values().filter(|p| p.peer == peer).count())
            .sum()
    }
}

/// The downloads a peer input may change the schedule of.
pub(crate) enum Affects {
    Nothing,
    One(DownloadId),
    All,
}

/// How the origin's work on one file is cut (see [`Engine::split`]).
pub(crate) struct Split {
    /// The blocks this node fetches from the origin.
    pub(crate) mine: RangeSet,
    /// The ring on which this node and its LAN co-fetchers split what crosses the WAN
    /// ([`Engine::far_ring`]).
    pub(crate) far: Option<FarRing>,
    /// The ring of this node, its own co-fetchers among those it splits with, and the
    /// reported ones at most [`TOLD_HOPS`] away, as `(point, key, distance)`: what
    /// [`Engine::co_fetchers_for`] answers from.
    pub(crate) told: Vec<(u64, u64, u8)>,
    /// Some stalled co-fetcher was left out because its arcs held blocks no peer holds.
    pub(crate) left_out: bool,
}

/// The ring of this node and its LAN co-fetchers that still grow, on which they split what
/// crosses the WAN ([`Engine::far_take`]).
pub(crate) struct FarRing {
    /// Every point of the members, in order, as (point, index into `members`).
    points: Vec<(u64, usize)>,
    /// The members, ordered by key: `None` for this node, else the co-fetcher.
    members: Vec<Option<PeerId>>,
}

/// Longest pause, in rate windows, before a download whose origin top-ups did not help is
/// judged against the minimum speed again.
const QOS_MAX_PAUSE: u32 = 32;

/// How far (in hops between co-fetchers) the keys a node tells of may be. Reports travel
/// so far and no further: a key that left stops being told within as many polls, however
/// the reports go round; and a node learns its peers' peers' peers, enough in a sparse mesh.
pub(crate) const TOLD_HOPS: u8 = 2;

/// Points each node has on the ring of a split (see [`Engine::split`]): with more, the
/// arcs' lengths vary less (one point each: the longest of 1,000 arcs is about 7 times the
/// mean; four: about 3 times), and each node fetches that many runs.
pub(crate) const SPLIT_POINTS: u64 = 4;

/// Whether `peer` is a known LAN peer.
fn is_lan(peers: &BTreeMap<PeerId, Peer>, peer: PeerId) -> bool {
    peers.get(&peer).is_some_and(|p| p.class == PeerClass::Lan)
}

/// The arcs of `key` on a ring of `points` ([`ring`]) over `blocks` blocks: from each of its
/// points up to the next point.
pub(crate) fn arcs(points: &[(u64, u64)], key: u64, blocks: u64) -> RangeSet {
    let mut set = RangeSet::new();
    for (i, &(start, k)) in points.iter().enumerate() {
        if k != key {
            continue;
        }
        match points.get(i + 1) {
            Some(&(end, _)) => set.insert(start, end),
            None => {
                set.insert(start, blocks);
                set.insert(0, points[0].0);
            }
        }
    }
    set
}

/// Where point `point` of `key` falls on the ring of a file of `blocks` blocks.
pub(crate) fn ring_point(key: u64, point: u64, blocks: u64) -> u64 {
    ((u128::from(mix(key, point)) * u128::from(blocks)) >> 64) as u64
}

/// For each point of `asker` on the ring of a file of `blocks` blocks, the key (with its
/// distance) of the first point of `told` (ordered as [`ring`] orders) after it, not
/// `asker`'s own; each key once.
pub(crate) fn successors(told: &[(u64, u64, u8)], asker: u64, blocks: u64) -> Vec<(u64, u8)> {
    // (The asker has at most `SPLIT_POINTS` points: past that, some other key is there.)
    if told.len() <= SPLIT_POINTS as usize && told.iter().all(|&(_, k, _)| k == asker) {
        return Vec::new();
    }
    let mut keys: Vec<(u64, u8)> = (0..SPLIT_POINTS)
        .map(|v| {
            let at = (ring_point(asker, v, blocks), asker);
            let from = told.partition_point(|&(p, k, _)| (p, k) <= at);
            (from..)
                .map(|i| told[i % told.len()])
                .find(|&(_, k, _)| k != asker)
                .map(|(_, k, hops)| (k, hops))
                .expect("another key is on the ring")
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Every point of `members` on the ring of a file of `blocks` blocks, in order, with its key.
pub(crate) fn ring(members: &[u64], blocks: u64) -> Vec<(u64, u64)> {
    let mut ring: Vec<(u64, u64)> = members
        .iter()
        .flat_map(|&k| (0..SPLIT_POINTS).map(move |v| (ring_point(k, v, blocks), k)))
        .collect();
    ring.sort_unstable();
    ring.dedup();
    ring
}

/// The points of many nodes' keys on the ring of one file's split ([`Engine::split`]), ordered
/// as the split orders them, to find each node's ring neighbours: the nodes whose points come
/// right after its own, which bound its arcs. A node that polls them learns where its arcs end
/// in the view of the whole swarm, however large the swarm and however few peers it polls.
#[derive(Debug, Clone)]
pub struct SplitRing {
    points: Vec<(u64, u64)>,
    blocks: u64,
}

impl SplitRing {
    /// The ring of `keys` (rank keys, [`Config::node_key`](crate::Config::node_key)) for a
    /// file of `blocks` blocks.
    pub fn new(keys: &[u64], blocks: u64) -> Self {
        let blocks = blocks.max(1);
        Self {
            points: ring(keys, blocks),
            blocks,
        }
    }

    /// For each of `own`'s points, the keys of the first `per_point` other nodes whose points
    /// follow it on the ring; each key once, sorted. `own` need not be on the ring.
    pub fn successors(&self, own: u64, per_point: usize) -> Vec<u64> {
        let mut keys = Vec::new();
        if per_point == 0 || self.points.iter().all(|&(_, k)| k == own) {
            return keys;
        }
        let len = self.points.len();
        for v in 0..SPLIT_POINTS {
            let at = (ring_point(own, v, self.blocks), own);
            let from = self.points.partition_point(|&p| p <= at);
            let mut found = 0;
            for i in 0..len {
                let (_, k) = self.points[(from + i) % len];
                if k == own {
                    continue;
                }
                keys.push(k);
                found += 1;
                if found == per_point {
                    break;
                }
            }
        }
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

/// A well-mixed hash of `key` and `n`.
fn mix(key: u64, n: u64) -> u64 {
    let mut x = key ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Most candidate blocks one rarest-first pick looks at.
const PICK_SAMPLE: u64 = 64;

/// Picks the rarest of the `missing` blocks (held by nobody here, brought by no request) that
/// `peer` holds, scanning from `offset`, and extends it into a run of at most `max` such blocks.
/// `missing` is given as bits: a pick costs one pass over the words, however scattered the
/// blocks are.
fn pick(
    d: &Download,
    missing: &BlockBits,
    peer: PeerId,
    offset: u64,
    max: u64,
) -> Option<std::ops::Range<u64>> {
    let have = d.haves.get(&peer)?;
    // Most peers hold nothing missing: a look for one common block, without building them,
    // says so (and past it, `count` below is at least 1).
    if !have.meets(missing) {
        return None;
    }
    // The wanted blocks (held by the peer, missing here), and how many come before each word.
    let wanted = have.and(missing);
    let mut before = Vec::with_capacity(wanted.len());
    let mut count = 0;
    for w in &wanted {
        before.push(count);
        count += u64::from(w.count_ones());
    }
    let at_rank = |rank: u64| {
        let w = before.partition_point(|&b| b <= rank) - 1;
        w as u64 * 64 + u64::from(nth_bit(wanted[w], (rank - before[w]) as u32))
    };
    // Scan from a random point; keep the first block of least availability. Beyond
    // `PICK_SAMPLE` candidates, only that many, evenly spaced from the random point, are looked
    // at: rarest-first stays close to exact while a pick costs the same for any file size.
    let start = offset % count;
    let (probes, step) = if count <= PICK_SAMPLE {
        (count, 1)
    } else {
        (PICK_SAMPLE, count / PICK_SAMPLE)
    };
    let mut best: Option<(u32, u64)> = None;
    for k in 0..probes {
        let b = at_rank((start + k * step) % count);
        let a = d.availability(b);
        if best.is_none_or(|(ba, _)| a < ba) {
            best = Some((a, b));
            if a == 1 {
                break;
            }
        }
    }
    let (_, first) = best?;
    // The run of wanted blocks from `first`, at most `max` long.
    let mut end = first + 1;
    while end < first + max
        && wanted
            .get((end / 64) as usize)
            .is_some_and(|w| w >> (end % 64) & 1 == 1)
    {
        end += 1;
    }
    Some(first..end)
}

/// The place of the `n`-th set bit of `word` (counting from 0, from the low end).
fn nth_bit(mut word: u64, n: u32) -> u32 {
    for _ in 0..n {
        word &= word - 1;
    }
    word.trailing_zeros()
}
