//! The discrete-event loop: one [`do_engine::Engine`] per node, a virtual clock, the
//! flow-level [`Net`], and the simulator's stand-ins for the driver's I/O (origin requests,
//! peer requests, have-map polls, verification).
//!
//! The simulator plays the driver's part exactly where the real node's tokio driver would:
//! it carries out the engine's actions and reports their outcomes. Verification is modelled,
//! not computed: a block served by a corrupt peer is reported as [`Input::BlockCorrupt`], as
//! the driver's BLAKE3 check would report it, or, if it came before the manifest was trusted
//! (as [`Input::BlockUnchecked`]), refuted in [`Input::ManifestTrusted`].

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque},
    ops::Range,
    time::{Duration, Instant},
};

use do_content::{BlockBits, BlockIndex, ContentId, RangeSet, block_count};
use do_engine::{
    Action, Command, Config, DownloadId, Engine, Event, Failure, FileInfo, Input, PeerClass,
    PeerId, RequestId, Spec, SplitRing, State,
};

use crate::{
    net::{Eta, FlowId, Net, ResId},
    rng::Rng,
    scenario::{Mode, PeerSample, Scenario, Verify},
};

/// Node blocks reported per milestone of a peer flow (1 MiB, a whole peer request): the unit
/// in which its bytes arrive.
const CHUNK_BLOCKS: u64 = 16;
/// Blocks reported per milestone of an origin flow (one, as the driver reports them): an
/// origin shared by a crowd can be slow per connection, and the engine judges co-fetchers by
/// how steadily their holdings grow.
const ORIGIN_CHUNK_BLOCKS: u64 = 1;
/// Requests a node queues for an upload slot before it answers "busy" (as the driver does).
const UPLOAD_QUEUE: usize = 256;
/// How long peers take to notice a crashed node (a libp2p ping timeout).
const CRASH_DETECT_NS: u64 = 10_000_000_000;
/// The HRESULT a failed peer request reports (the driver's `DO_E_PEER_REQUEST_FAILED`).
const PEER_REQUEST_FAILED: u32 = 0x80D0_6802;
/// HTTP 503 as an HRESULT, what the origin answers during an outage.
const HTTP_503: u32 = 0x8019_01F7;
/// Nanoseconds per second.
const NS: f64 = 1e9;

/// How a node behaves as a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Serves what it holds.
    Honest,
    /// Serves blocks that fail verification.
    Corrupt,
    /// Accepts requests and never answers.
    Stall,
}

/// One file download of one node.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Job {
    /// Not started yet.
    Waiting,
    /// Started at this time (ns).
    Active(u64),
    /// Finished: (started, finished) ns.
    Done(u64, u64),
}

struct Node {
    engine: Engine,
    site: usize,
    up: ResId,
    down: ResId,
    up_bps: f64,
    down_bps: f64,
    key: u64,
    online: bool,
    behaviour: Behaviour,
    arrival: u64,
    neighbors: Vec<u32>,
    banned: BTreeSet<u32>,
    /// Verified blocks held, per file.
    held: Vec<RangeSet>,
    /// Per file: `held` as bits (what a poll merges into the hashes a node can learn).
    held_bits: Vec<BlockBits>,
    /// Per file: when it was last used (finished, or served to a peer), ns; evicted whole
    /// (its holdings dropped) least recently used first under the cache quota.
    used_at: Vec<u64>,
    /// Holdings changed since the last have poll, per file.
    changed: Vec<bool>,
    /// Per file: the blocks gained since the last have poll (what a poll reports of a peer
    /// to an engine that knows its holdings, as `Input::PeerGained`).
    gained: Vec<RangeSet>,
    /// Per file: what this node answers a co-fetcher that asks what can come through it (its
    /// engine's `held_by_peers`, as at the start of the poll under way), and how often that
    /// changed.
    near: Vec<(BlockBits, u64)>,
    /// Per file: the version of each neighbor's answer this node's engine was last told.
    told_near: Vec<BTreeMap<u32, u64>>,
    jobs: Vec<Job>,
    /// Per file: the engine trusts a manifest.
    trusted: Vec<bool>,
    /// Per file: blocks peers sent before the manifest was trusted, written but not checked
    /// (the driver checks them against the manifest once it is trusted).
    unchecked: Vec<RangeSet>,
    /// Per file: the unchecked blocks a corrupt peer sent (they fail that check).
    refuted: Vec<RangeSet>,
    /// Per file: the blocks whose hashes this node can tell (`Hashes`): its own verified
    /// ones and those it collected from its peers, all of them once it trusts a manifest.
    /// Hashes travel so: a node learns, one poll after another, what its peers' peers
    /// verified, and trusts the set only once it merges to the content id.
    known: Vec<BlockBits>,
    /// Per file: what `known` becomes at the end of the poll under way (every node answers
    /// a poll with what it knew before it).
    known_next: Vec<BlockBits>,
    /// Per file: neighbors already told that this node is fetching it.
    told_fetching: Vec<BTreeSet<u32>>,
    /// Per file: what each neighbor last told this node of whom it splits the origin's work
    /// with (its engine's `co_fetchers_for` this node), and from which version of its split
    /// (`split_version`: the same version tells the same).
    told_fetchers: Vec<BTreeMap<u32, ToldFetchers>>,
    /// The next poll reports every neighbor's holdings, changed or not (a download started,
    /// or the node reconnected).
    refresh_all: bool,
    /// Neighbors whose holdings the next poll reports again (a request to them failed, and
    /// the engine forgot what they hold).
    refresh: BTreeSet<u32>,
    timer: Option<u64>,
    /// Requests this node issued that are still open.
    open: BTreeMap<RequestId, Open>,
    /// Uploads in progress.
    uploads: usize,
    /// Requests waiting for an upload slot: (requester, request).
    queue: VecDeque<(u32, RequestId)>,
    leaves_at: Option<u64>,
    /// Bytes received by source, and sent to peers.
    from_origin: u64,
    from_peers: [u64; 3],
    to_peers: u64,
}

/// A request a node has open: an origin fetch or a peer request, waiting for its first byte
/// (or queued or stalled at its server), or flowing.
#[derive(Debug, Clone, Copy)]
struct Open {
    file: usize,
    /// The peer asked; `None` for the origin.
    server: Option<u32>,
    /// The next block to arrive, and one past the last.
    next: u64,
    end: u64,
    flow: Option<FlowId>,
}

/// What a flow carries.
#[derive(Debug, Clone, Copy)]
struct FlowInfo {
    node: u32,
    request: RequestId,
    /// First block of the chunk in flight, and one past its last block.
    chunk: (u64, u64),
    /// Bytes of the chunk in flight.
    chunk_bytes: u64,
    server: Option<u32>,
    /// The flow crosses the receiver's site WAN link (from the origin or another site).
    wan: bool,
    /// When its pending milestone event fires (`u64::MAX`: none pending).
    armed: u64,
}

#[derive(Debug)]
enum Ev {
    Arrive(u32),
    StartFile(u32, usize),
    Timer(u32, u64),
    HavePoll,
    /// One node polls its neighbors (as the driver does when a download joins its file's
    /// swarm).
    Poll(u32),
    Reply(u32, Box<Input>),
    /// An origin fetch's first byte arrives.
    OriginBegin(u32, RequestId),
    /// A peer request reaches its server.
    PeerBegin(u32, RequestId),
    /// A flow may have reached its milestone (checked: rates change in between).
    Milestone(FlowId),
    Leave(u32),
    Rejoin(u32),
    /// Peers learn that a crashed node is gone.
    Gone(u32),
    OutageStart,
    OutageEnd,
}

/// A neighbor's split version and the co-fetcher keys it told from it.
type ToldFetchers = (Option<u64>, Vec<(u64, u8)>);

/// What a node's holdings did between two have polls (taken at the start of a poll).
struct Changes {
    changed: Vec<bool>,
    gained: Vec<RangeSet>,
}

struct Entry {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Raw results of a run, for [`crate::report`].
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Per node: (arrival s, up bytes/s, down bytes/s, site, finishes for good).
    pub nodes: Vec<NodeInfo>,
    /// Completed downloads: (node, file, start s, finish s).
    pub completions: Vec<(u32, usize, f64, f64)>,
    /// Bytes the origin sent (every byte that left it, cancelled flows included).
    pub origin_bytes: u64,
    /// Of those, the bytes sent to misbehaving nodes (corrupt or stalling: once banned,
    /// they have only the origin left).
    pub origin_bytes_to_faulty: u64,
    /// Verified bytes received from peers, by class (LAN, Group, Internet).
    pub peer_bytes: [u64; 3],
    /// Bytes into each site over its WAN link.
    pub wan_ingress: Vec<u64>,
    /// Bytes out of each site over its WAN link.
    pub wan_egress: Vec<u64>,
    /// Bytes of corrupt blocks received (and dropped).
    pub corrupt_bytes_received: u64,
    /// Bytes an engine assembled without a verified copy of them: blocks it counted as in
    /// place but never received, or received only from a corrupt peer (must be 0).
    pub corrupt_bytes_committed: u64,
    /// Bytes moved and not kept: corrupt, cancelled mid-chunk, or duplicates.
    pub wasted_bytes: u64,
    /// Of the origin's bytes, those of blocks cut off in flight (a fetch cancelled, or ended
    /// by an outage, in the middle of a block).
    pub origin_cut_bytes: u64,
    /// Files evicted from nodes' caches under the quota, and their bytes.
    pub evictions: u64,
    /// Bytes of the files evicted.
    pub evicted_bytes: u64,
    /// Most bytes a node's cache held at once (files finished or under way).
    pub peak_cache_bytes: u64,
    /// Bans, and the time of the first (s).
    pub bans: u64,
    /// Time of the first ban, s.
    pub first_ban_s: Option<f64>,
    /// Requests an engine sent to a peer it had banned (must be 0).
    pub requests_to_banned: u64,
    /// Events processed.
    pub events: u64,
    /// Simulated time at the end, s.
    pub end_s: f64,
    /// Downloads that should have finished and did not.
    pub unfinished: u64,
    /// Bytes received per second of simulated time, by source: origin, LAN, Group, Internet.
    pub timeline: Vec<[u64; 4]>,
    /// A hash of the event sequence (determinism check).
    pub trace_hash: u64,
    /// Peak flows in progress at once.
    pub peak_flows: usize,
}

/// What the report needs of each node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Arrival, s.
    pub arrival_s: f64,
    /// Upload capacity, bytes/s.
    pub up: f64,
    /// Download capacity, bytes/s.
    pub down: f64,
    /// Site index.
    pub site: usize,
    /// Expected to finish every file (not a node that leaves for good).
    pub must_finish: bool,
}

/// A simulation in progress.
pub struct Sim {
    sc: Scenario,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Entry>>,
    net: Net,
    nodes: Vec<Node>,
    flows: Vec<Option<FlowInfo>>,
    origin: ResId,
    site_in: Vec<Option<ResId>>,
    site_out: Vec<Option<ResId>>,
    origin_up: bool,
    base: Instant,
    /// Each file's length on the wire.
    file_len: Vec<u64>,
    /// Each file's length as the engines see it: the wire length over the scenario's grain,
    /// so that an engine block stands for one simulated block.
    engine_len: Vec<u64>,
    /// Bytes on the wire of one engine block (the scenario's `block_kib`).
    block_bytes: u64,
    file_id: Vec<ContentId>,
    out: Outcome,
    etas: Vec<Eta>,
    have_poll_ns: u64,
    poll_scheduled: bool,
    /// The run's seed.
    seed: u64,
    /// Per site, the nodes that have come up, in order (for `online_peers`).
    up: Vec<Vec<u32>>,
    /// Per node, whether it is in `up`.
    been_up: Vec<bool>,
}

fn mbit(x: f64) -> f64 {
    x * 1e6 / 8.0
}

fn secs(ns: u64) -> f64 {
    ns as f64 / NS
}

fn ns(s: f64) -> u64 {
    (s * NS).round().max(0.0) as u64
}

impl Sim {
    /// Builds the fleet of `sc` with `seed`.
    pub fn new(sc: Scenario, seed: u64) -> Self {
        let mut topo = Rng::new(seed, 1);
        let mut fault_rng = Rng::new(seed, 2);
        let mut arrival_rng = Rng::new(seed, 3);
        let mut net = Net::new();
        let origin = net.add_resource(mbit(sc.origin.up_mbit));
        let mut site_in = Vec::new();
        let mut site_out = Vec::new();
        for site in &sc.sites {
            site_in.push(site.wan_down_mbit.map(|m| net.add_resource(mbit(m))));
            site_out.push(site.wan_up_mbit.map(|m| net.add_resource(mbit(m))));
        }
        let files = sc.files.len();
        let file_len: Vec<u64> = sc.files.iter().map(|f| f.bytes()).collect();
        let engine_len: Vec<u64> = file_len.iter().map(|l| l.div_ceil(sc.grain())).collect();
        let block_bytes = sc.block_kib * 1024;
        let file_id: Vec<ContentId> = (0..files)
            .map(|i| {
                let mut b = [0u8; 32];
                b[..8].copy_from_slice(&seed.to_le_bytes());
                b[8..16].copy_from_slice(&(i as u64).to_le_bytes());
                ContentId::from_bytes(b)
            })
            .collect();
        let mut nodes = Vec::new();
        let mut gap_clock = 0.0;
        for (s, site) in sc.sites.iter().enumerate() {
            let total_share: f64 = site.hosts.iter().map(|h| h.share).sum();
            for k in 0..site.nodes {
                // Host classes in proportion, deterministic by position within the site.
                let pos = (k as f64 + 0.5) / site.nodes as f64 * total_share;
                let mut acc = 0.0;
                let class = site
                    .hosts
                    .iter()
                    .find(|h| {
                        acc += h.share;
                        pos < acc
                    })
                    .unwrap_or(site.hosts.last().expect("checked non-empty"));
                let (up_bps, down_bps) = (mbit(class.up_mbit), mbit(class.down_mbit));
                let up = net.add_resource(up_bps);
                let down = net.add_resource(down_bps);
                let arrival = match sc.arrivals.poisson_mean_gap_s {
                    Some(gap) => {
                        gap_clock += -gap * (1.0 - arrival_rng.f64()).ln();
                        ns(gap_clock)
                    }
                    None => ns(arrival_rng.f64() * sc.arrivals.window_s),
                };
                let index = nodes.len() as u64;
                let key = topo.u64();
                nodes.push(Node {
                    engine: Engine::new(engine_config(&sc, key), engine_seed(seed, index, 0)),
                    site: s,
                    up,
                    down,
                    up_bps,
                    down_bps,
                    key,
                    online: false,
                    behaviour: Behaviour::Honest,
                    arrival,
                    neighbors: Vec::new(),
                    banned: BTreeSet::new(),
                    held: vec![RangeSet::new(); files],
                    held_bits: vec![BlockBits::default(); files],
                    used_at: vec![0; files],
                    changed: vec![false; files],
                    gained: vec![RangeSet::new(); files],
                    near: vec![(BlockBits::default(), 0); files],
                    told_near: vec![BTreeMap::new(); files],
                    jobs: vec![Job::Waiting; files],
                    trusted: vec![false; files],
                    unchecked: vec![RangeSet::new(); files],
                    refuted: vec![RangeSet::new(); files],
                    known: vec![BlockBits::default(); files],
                    known_next: vec![BlockBits::default(); files],
                    told_fetching: vec![BTreeSet::new(); files],
                    told_fetchers: vec![BTreeMap::new(); files],
                    refresh_all: false,
                    refresh: BTreeSet::new(),
                    timer: None,
                    open: BTreeMap::new(),
                    uploads: 0,
                    queue: VecDeque::new(),
                    leaves_at: None,
                    from_origin: 0,
                    from_peers: [0; 3],
                    to_peers: 0,
                });
            }
        }
        let n = nodes.len();
        // Faults: a fixed count of each kind, at random nodes.
        let mut order: Vec<usize> = (0..n).collect();
        fault_rng.shuffle(&mut order);
        let corrupt = (sc.faults.corrupt_fraction * n as f64).round() as usize;
        let stall = (sc.faults.stall_fraction * n as f64).round() as usize;
        for (i, &node) in order.iter().enumerate() {
            if i < corrupt {
                nodes[node].behaviour = Behaviour::Corrupt;
            } else if i < corrupt + stall {
                nodes[node].behaviour = Behaviour::Stall;
            }
        }
        let mut sim = Self {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            net,
            nodes,
            flows: Vec::new(),
            origin,
            site_in,
            site_out,
            origin_up: true,
            base: Instant::now(),
            file_len,
            engine_len,
            block_bytes,
            file_id,
            out: Outcome {
                wan_ingress: vec![0; sc.sites.len()],
                wan_egress: vec![0; sc.sites.len()],
                ..Outcome::default()
            },
            etas: Vec::new(),
            have_poll_ns: ns(sc.engine.have_interval_s),
            poll_scheduled: false,
            seed,
            up: vec![Vec::new(); sc.sites.len()],
            been_up: vec![false; n],
            sc,
        };
        sim.build_neighbors(&mut topo);
        sim.plan_churn(&mut fault_rng);
        for i in 0..n {
            let at = if sim.sc.arrivals.hosts_up_first {
                0
            } else {
                sim.nodes[i].arrival
            };
            sim.push(at, Ev::Arrive(i as u32));
        }
        for o in sim.sc.origin.outages.clone() {
            sim.push(ns(o.start_s), Ev::OutageStart);
            if let Some(end) = o.end_s {
                sim.push(ns(end), Ev::OutageEnd);
            }
        }
        sim
    }

    /// Symmetric neighbor sets. On a site: everyone (what mDNS gives the node, which connects
    /// to every peer it discovers), or, with `peers_per_node` set, `peers_per_node / 2` random
    /// picks each (degrees then average `peers_per_node`). Across sites, in Group and Internet
    /// mode: `wan_peers_per_node` random picks each on other sites.
    fn build_neighbors(&mut self, rng: &mut Rng) {
        if self.sc.mode == Mode::Http {
            return;
        }
        let mut by_site: Vec<Vec<u32>> = vec![Vec::new(); self.sc.sites.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            by_site[node.site].push(i as u32);
        }
        let k = self.sc.engine.peers_per_node;
        let n = self.nodes.len();
        let mut edges: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); n];
        let link = |edges: &mut Vec<BTreeSet<u32>>, a: u32, b: u32| {
            if a != b {
                edges[a as usize].insert(b);
                edges[b as usize].insert(a);
            }
        };
        for local in &by_site {
            if k == 0 || local.len() <= k + 1 {
                for (x, &a) in local.iter().enumerate() {
                    for &b in &local[x + 1..] {
                        link(&mut edges, a, b);
                    }
                }
            } else if self.sc.engine.peer_sample == PeerSample::Swarm {
                // In order of arrival, each node picks among those that came before it.
                let mut order = local.clone();
                order.sort_by_key(|&a| (self.nodes[a as usize].arrival, a));
                for (x, &a) in order.iter().enumerate().skip(1) {
                    if x <= k.div_ceil(2) {
                        for &b in &order[..x] {
                            link(&mut edges, a, b);
                        }
                        continue;
                    }
                    for _ in 0..k.div_ceil(2) {
                        // The less connected of two (else the first nodes would be hubs that
                        // every later one asks, and the crowd's last nodes would wait on them).
                        let b = order[rng.below(x as u64) as usize];
                        let c = order[rng.below(x as u64) as usize];
                        let b = if edges[c as usize].len() < edges[b as usize].len() {
                            c
                        } else {
                            b
                        };
                        link(&mut edges, a, b);
                    }
                }
            } else {
                for &a in local {
                    for _ in 0..k.div_ceil(2) {
                        let b = local[rng.below(local.len() as u64) as usize];
                        link(&mut edges, a, b);
                    }
                }
            }
        }
        let ring_peers = self.sc.engine.ring_peers;
        if k > 0 && ring_peers > 0 {
            // Each file's ring (files of one length share it).
            let mut lens = self.engine_len.clone();
            lens.sort_unstable();
            lens.dedup();
            for local in by_site.iter().filter(|local| local.len() > k + 1) {
                let keys: Vec<u64> = local.iter().map(|&a| self.nodes[a as usize].key).collect();
                let by_key: BTreeMap<u64, u32> =
                    keys.iter().copied().zip(local.iter().copied()).collect();
                for &len in &lens {
                    let ring = SplitRing::new(&keys, block_count(len));
                    for &a in local {
                        for key in ring.successors(self.nodes[a as usize].key, ring_peers) {
                            link(&mut edges, a, by_key[&key]);
                        }
                    }
                }
            }
        }
        if self.sc.mode != Mode::Lan && self.sc.sites.len() > 1 {
            for a in 0..n {
                let site = self.nodes[a].site;
                let others = n - by_site[site].len();
                for _ in 0..self.sc.engine.wan_peers_per_node.div_ceil(2) {
                    if others == 0 {
                        break;
                    }
                    // The r-th node not on this site.
                    let mut r = rng.below(others as u64) as usize;
                    let b = by_site
                        .iter()
                        .enumerate()
                        .filter(|&(s, _)| s != site)
                        .find_map(|(_, nodes)| {
                            if r < nodes.len() {
                                Some(nodes[r])
                            } else {
                                r -= nodes.len();
                                None
                            }
                        })
                        .expect("r is below the count of other sites' nodes");
                    link(&mut edges, a as u32, b);
                }
            }
        }
        for (node, e) in self.nodes.iter_mut().zip(edges) {
            node.neighbors = e.into_iter().collect();
        }
    }

    fn plan_churn(&mut self, rng: &mut Rng) {
        let churn = self.sc.churn.clone();
        let n = self.nodes.len();
        let leaving = (churn.leave_fraction * n as f64).round() as usize;
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        for &i in order.iter().take(leaving) {
            let [from, to] = churn.window_s;
            let at = ns(from + rng.f64() * (to - from)).max(self.nodes[i].arrival);
            self.push(at, Ev::Leave(i as u32));
            if let Some(back) = churn.rejoin_after_s {
                self.push(at + ns(back), Ev::Rejoin(i as u32));
            }
        }
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Entry {
            at,
            seq: self.seq,
            ev,
        }));
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    /// Runs to the end (every download done, or the scenario's time limit) and returns the
    /// raw outcome.
    pub fn run(mut self) -> Outcome {
        let limit = ns(self.sc.max_time_s);
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        while let Some(Reverse(entry)) = self.queue.pop() {
            if entry.at > limit {
                self.now = limit;
                break;
            }
            self.now = entry.at;
            self.out.events += 1;
            hash = (hash ^ entry.at).wrapping_mul(0x0100_0000_01b3);
            hash = (hash ^ ev_tag(&entry.ev)).wrapping_mul(0x0100_0000_01b3);
            self.handle(entry.ev);
            self.out.peak_flows = self.out.peak_flows.max(self.net.active());
        }
        self.out.trace_hash = hash;
        self.finish()
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Arrive(i) => self.arrive(i),
            Ev::StartFile(i, f) => self.start_file(i, f),
            Ev::Timer(i, at) => {
                let node = &mut self.nodes[i as usize];
                if node.online && node.timer == Some(at) {
                    node.timer = None;
                    let now = self.instant();
                    self.nodes[i as usize].engine.handle_timeout(now);
                    self.drain(i);
                }
            }
            Ev::HavePoll => self.have_poll(),
            Ev::Poll(i) => {
                self.poll_node(i as usize, None);
            }
            Ev::Reply(i, input) => self.feed(i, *input),
            Ev::OriginBegin(i, request) => self.origin_begin(i, request),
            Ev::PeerBegin(i, request) => self.peer_begin(i, request),
            Ev::Milestone(flow) => self.check_milestone(flow),
            Ev::Leave(i) => self.leave(i),
            Ev::Rejoin(i) => self.rejoin(i),
            Ev::Gone(i) => {
                if !self.nodes[i as usize].online {
                    self.tell_neighbors_gone(i);
                }
            }
            Ev::OutageStart => self.outage_start(),
            Ev::OutageEnd => self.origin_up = true,
        }
    }

    fn arrive(&mut self, i: u32) {
        let now = self.now;
        let node = &mut self.nodes[i as usize];
        if node.online {
            return;
        }
        node.online = true;
        self.connect(i);
        let starts: Vec<(usize, f64)> = self
            .sc
            .files
            .iter()
            .enumerate()
            .map(|(f, spec)| (f, spec.start_s))
            .collect();
        // (A host up from the start is asked for its files from its arrival on.)
        let from = now.max(self.nodes[i as usize].arrival);
        for (f, start) in starts {
            if matches!(self.nodes[i as usize].jobs[f], Job::Waiting) {
                self.push(from + ns(start), Ev::StartFile(i, f));
            }
        }
        self.ensure_poll();
    }

    /// Links `i`, which comes up, to nodes of its site that are up until it has
    /// `online_peers` online neighbors there (see `EngineKnobs::online_peers`).
    fn link_online(&mut self, i: u32) {
        let want = self.sc.engine.online_peers;
        let site = self.nodes[i as usize].site;
        if want > 0 && self.sc.engine.peers_per_node > 0 {
            let mut online = self.nodes[i as usize]
                .neighbors
                .iter()
                .filter(|&&j| {
                    let n = &self.nodes[j as usize];
                    n.online && n.site == site
                })
                .count();
            let mut rng = Rng::new(self.seed, 0x6f6e_6c69_6e65 ^ u64::from(i));
            let up = &self.up[site];
            let mut tries = 0;
            while online < want && tries < 4 * want && !up.is_empty() {
                tries += 1;
                let j = up[rng.below(up.len() as u64) as usize];
                let node = &self.nodes[i as usize];
                if j == i || !self.nodes[j as usize].online || node.neighbors.contains(&j) {
                    continue;
                }
                for (a, b) in [(i, j), (j, i)] {
                    let list = &mut self.nodes[a as usize].neighbors;
                    let at = list.partition_point(|&x| x < b);
                    list.insert(at, b);
                }
                online += 1;
            }
        }
        if !std::mem::replace(&mut self.been_up[i as usize], true) {
            self.up[site].push(i);
        }
    }

    /// Tells `i`'s engine about its online neighbors, and them about `i`.
    fn connect(&mut self, i: u32) {
        self.link_online(i);
        let neighbors = self.nodes[i as usize].neighbors.clone();
        let now = self.instant();
        for j in neighbors {
            if !self.nodes[j as usize].online {
                continue;
            }
            let class = self.class(i, j);
            if !self.nodes[i as usize].banned.contains(&j) {
                self.nodes[i as usize].engine.handle_input(
                    now,
                    Input::PeerAdded {
                        peer: PeerId(u64::from(j)),
                        class,
                    },
                );
            }
            if !self.nodes[j as usize].banned.contains(&i) {
                self.nodes[j as usize].engine.handle_input(
                    now,
                    Input::PeerAdded {
                        peer: PeerId(u64::from(i)),
                        class,
                    },
                );
                self.drain(j);
            }
        }
        self.nodes[i as usize].refresh_all = true;
        self.drain(i);
    }

    fn class(&self, a: u32, b: u32) -> PeerClass {
        if self.nodes[a as usize].site == self.nodes[b as usize].site {
            PeerClass::Lan
        } else if self.sc.mode == Mode::Group {
            PeerClass::Group
        } else {
            PeerClass::Internet
        }
    }

    fn start_file(&mut self, i: u32, f: usize) {
        let node = &mut self.nodes[i as usize];
        if !node.online || !matches!(node.jobs[f], Job::Waiting) {
            return;
        }
        node.jobs[f] = Job::Active(self.now);
        node.refresh_all = true;
        self.make_room(i, f);
        let id = DownloadId(f as u64 + 1);
        let spec = Spec {
            url: format!("http://origin/file{f}"),
            content_id: None,
            no_progress_timeout: Some(Duration::from_secs(3600)),
        };
        let now = self.instant();
        let engine = &mut self.nodes[i as usize].engine;
        engine
            .handle_command(now, Command::Create { id, spec })
            .expect("a fresh id");
        engine
            .handle_command(now, Command::Start { id, ranges: None })
            .expect("a created download starts");
        self.drain(i);
        // The poll stops while no node downloads: a download that starts later (a host up
        // from the start, a file that starts after the others finished) starts it again.
        self.ensure_poll();
    }

    fn ensure_poll(&mut self) {
        if !self.poll_scheduled && self.sc.mode != Mode::Http {
            self.poll_scheduled = true;
            let at = self.now + self.have_poll_ns;
            self.push(at, Ev::HavePoll);
        }
    }

    /// The driver's periodic poll: each downloading node learns what its neighbors hold of
    /// the files it wants, which of them fetch those files too, and trusts a manifest once the
    /// hashes it can get from them cover the whole file.
    fn have_poll(&mut self) {
        self.poll_scheduled = false;
        // What changed since the last poll; what changes during this one (a node that comes to
        // trust a manifest holds more) is for the next.
        let changed: Vec<Changes> = self
            .nodes
            .iter_mut()
            .map(|node| {
                let files = node.changed.len();
                Changes {
                    changed: std::mem::replace(&mut node.changed, vec![false; files]),
                    gained: std::mem::replace(&mut node.gained, vec![RangeSet::new(); files]),
                }
            })
            .collect();
        // What each downloading node answers `Near` in this poll.
        for node in &mut self.nodes {
            for (f, job) in node.jobs.iter().enumerate() {
                if node.online && matches!(job, Job::Active(_)) {
                    let bits = node.engine.held_by_peers(DownloadId(f as u64 + 1));
                    let (near, version) = &mut node.near[f];
                    if bits != *near {
                        *near = bits;
                        *version += 1;
                    }
                }
            }
        }
        let mut any_active = false;
        for i in 0..self.nodes.len() {
            any_active |= self.poll_node(i, Some(&changed));
        }
        for node in &mut self.nodes {
            for (known, next) in node.known.iter_mut().zip(&node.known_next) {
                known.clone_from(next);
            }
        }
        if any_active {
            self.ensure_poll();
        }
    }

    /// Node `i`'s poll of its neighbors: their holdings that changed since the last poll
    /// (all of them after a start or a reconnection), who fetches the same files, and trust in
    /// a manifest once the hashes it can get cover the whole file. `changed`: what changed
    /// since the last poll (`None`: the live flags). True if `i` downloads.
    fn poll_node(&mut self, i: usize, changed: Option<&[Changes]>) -> bool {
        if !self.nodes[i].online {
            return false;
        }
        let now = self.instant();
        let files = self.file_len.len();
        let mut any_active = false;
        let mut batch: Vec<Input> = Vec::new();
        for f in 0..files {
            if !matches!(self.nodes[i].jobs[f], Job::Active(_)) {
                continue;
            }
            any_active = true;
            let id = DownloadId(f as u64 + 1);
            let blocks = block_count(self.engine_len[f]);
            // What the node could learn hashes of, while it does not trust a manifest yet.
            // (As bits: the neighbors' holdings are fragmented, and merging thousands of
            // runs one by one costs more than the rest of the poll.)
            let mut union = (!self.nodes[i].trusted[f]).then(|| {
                let mut bits = self.nodes[i].held_bits[f].clone();
                bits.union_with(&self.nodes[i].known[f]);
                bits
            });
            let neighbors = self.nodes[i].neighbors.clone();
            for j in neighbors {
                let (ju, iu) = (j as usize, i);
                if !self.nodes[ju].online || self.nodes[iu].banned.contains(&j) {
                    continue;
                }
                let peer = PeerId(u64::from(j));
                let refresh = self.nodes[iu].refresh_all || self.nodes[iu].refresh.contains(&j);
                let node = &self.nodes[ju];
                let report = changed.map_or(node.changed[f], |c| c[ju].changed[f]);
                if (report || refresh) && !node.held[f].is_empty() {
                    // The whole holdings to an engine that lacks them (it never had them, or
                    // forgot them: a request failed, the peer was gone); to the others what
                    // came since the last poll, which is all they lack.
                    let whole = self.sc.engine.whole_have_reports
                        || !self.nodes[iu].engine.knows_holdings(id, peer);
                    let node = &self.nodes[ju];
                    let blocks = if whole {
                        node.held[f].clone()
                    } else {
                        // (Blocks gained during this poll, after the changes were taken, are
                        // told with them: a report tells what the peer holds when it answers.)
                        // (Usually none: the merge is made only if there are, once per
                        // neighbor it is told to.)
                        match changed {
                            Some(c) if node.gained[f].is_empty() => c[ju].gained[f].clone(),
                            Some(c) => {
                                let mut gained = node.gained[f].clone();
                                for run in c[ju].gained[f].runs() {
                                    gained.insert(run.start, run.end);
                                }
                                gained
                            }
                            None => node.gained[f].clone(),
                        }
                    };
                    batch.push(if whole {
                        Input::PeerHas { id, peer, blocks }
                    } else {
                        Input::PeerGained { id, peer, blocks }
                    });
                }
                // What can come through a co-fetcher: what its own peers hold (told
                // when it changed, and again after a refresh: the engine forgets it with the
                // peer's holdings).
                let (near, version) = &self.nodes[ju].near[f];
                if matches!(self.nodes[ju].jobs[f], Job::Active(_))
                    && (refresh || self.nodes[iu].told_near[f].get(&j) != Some(version))
                {
                    let (blocks, version) = (near.clone(), *version);
                    self.nodes[iu].told_near[f].insert(j, version);
                    batch.push(Input::PeerNear { id, peer, blocks });
                }
                if matches!(self.nodes[ju].jobs[f], Job::Active(_))
                    && !self.nodes[iu].told_fetching[f].contains(&j)
                {
                    self.nodes[iu].told_fetching[f].insert(j);
                    let key = self.nodes[ju].key;
                    batch.push(Input::PeerFetching { id, peer, key });
                }
                // And whom it splits the origin's work with (again after a refresh: the
                // engine forgets it with the peer's holdings).
                if matches!(self.nodes[ju].jobs[f], Job::Active(_)) {
                    let version = self.nodes[ju].engine.split_version(id);
                    let told_version = self.nodes[iu].told_fetchers[f].get(&j).map(|t| t.0);
                    if refresh || version.is_none() || told_version != Some(version) {
                        let asker = self.nodes[iu].key;
                        let keys = self.nodes[ju].engine.co_fetchers_for(id, asker);
                        let told = self.nodes[iu].told_fetchers[f].get(&j).map(|t| &t.1);
                        if refresh || told != Some(&keys) {
                            batch.push(Input::PeerCoFetchers {
                                id,
                                peer,
                                keys: keys.clone(),
                            });
                        }
                        self.nodes[iu].told_fetchers[f].insert(j, (version, keys));
                    }
                }
                // Every peer answers with the hashes of what it verified and of what it
                // collected (a stalling peer stalls on blocks only; a corrupt cache has the
                // right hashes).
                if let Some(union) = &mut union {
                    union.union_with(&self.nodes[ju].held_bits[f]);
                    union.union_with(&self.nodes[ju].known[f]);
                }
            }
            let proofs = self.sc.engine.verify == Verify::Proofs;
            let Some(union) = union else { continue };
            if proofs || union.count() == blocks {
                // The driver checks what arrived unchecked: a corrupt peer's blocks fail.
                let node = &mut self.nodes[i];
                node.trusted[f] = true;
                // A node that trusts a manifest tells every hash.
                node.known_next[f] = BlockBits::from_set(&std::iter::once(0..blocks).collect());
                let refuted = std::mem::take(&mut node.refuted[f]);
                let good = std::mem::take(&mut node.unchecked[f]).difference(&refuted);
                for run in good.runs() {
                    node.held[f].insert(run.start, run.end);
                    node.gained[f].insert(run.start, run.end);
                    node.held_bits[f].insert(run);
                }
                node.changed[f] |= !good.is_empty();
                batch.push(Input::ManifestTrusted {
                    id,
                    refuted,
                    lost: RangeSet::new(),
                });
            } else {
                self.nodes[i].known_next[f] = union;
            }
        }
        self.nodes[i].refresh_all = false;
        self.nodes[i].refresh.clear();
        if !batch.is_empty() {
            self.nodes[i].engine.handle_inputs(now, batch);
            self.drain(i as u32);
        }
        any_active
    }

    fn feed(&mut self, i: u32, input: Input) {
        if !self.nodes[i as usize].online {
            return;
        }
        let now = self.instant();
        self.nodes[i as usize].engine.handle_input(now, input);
        self.drain(i);
    }

    /// Carries out `i`'s engine's actions, reads its events, re-arms its timer.
    fn drain(&mut self, i: u32) {
        while let Some(action) = self.nodes[i as usize].engine.poll_action() {
            self.act(i, action);
        }
        while let Some(event) = self.nodes[i as usize].engine.poll_event() {
            self.on_event(i, event);
        }
        let node = &mut self.nodes[i as usize];
        if !node.online {
            return;
        }
        let next = node
            .engine
            .poll_timeout()
            .map(|t| t.saturating_duration_since(self.base).as_nanos() as u64);
        if let Some(at) = next
            && node.timer != Some(at)
        {
            let at = at.max(self.now);
            node.timer = Some(at);
            self.push(at, Ev::Timer(i, at));
        }
    }

    /// Under the cache quota, evicts node `i`'s finished files, least recently used first,
    /// until file `f` fits beside what it holds (the store's rule: files under way are
    /// pinned; a file too big for the quota is taken anyway, over it).
    fn make_room(&mut self, i: u32, f: usize) {
        let file_len = &self.file_len;
        let node = &mut self.nodes[i as usize];
        let in_cache = |node: &Node, g: usize| {
            g == f || matches!(node.jobs[g], Job::Active(_)) || !node.held[g].is_empty()
        };
        let used = |node: &Node| -> u64 {
            (0..file_len.len())
                .filter(|&g| in_cache(node, g))
                .map(|g| file_len[g])
                .sum()
        };
        if let Some(quota) = self.sc.cache_mib.map(|m| (m * 1_048_576.0) as u64) {
            while used(node) > quota {
                let Some(g) = (0..file_len.len())
                    .filter(|&g| matches!(node.jobs[g], Job::Done(..)) && !node.held[g].is_empty())
                    .min_by_key(|&g| (node.used_at[g], g))
                else {
                    break;
                };
                node.held[g] = RangeSet::new();
                node.held_bits[g] = BlockBits::default();
                node.gained[g] = RangeSet::new();
                self.out.evictions += 1;
                self.out.evicted_bytes += file_len[g];
            }
        }
        self.out.peak_cache_bytes = self.out.peak_cache_bytes.max(used(node));
    }

    fn origin_rtt(&self, i: u32) -> u64 {
        let site = &self.sc.sites[self.nodes[i as usize].site];
        ns(2.0 * (self.sc.origin.latency_ms + site.wan_latency_ms) / 1e3)
    }

    fn peer_one_way(&self, a: u32, b: u32) -> u64 {
        let (sa, sb) = (self.nodes[a as usize].site, self.nodes[b as usize].site);
        let sites = &self.sc.sites;
        if sa == sb {
            ns(sites[sa].lan_latency_ms / 1e3)
        } else {
            ns((sites[sa].wan_latency_ms + sites[sb].wan_latency_ms) / 1e3)
        }
    }

    fn act(&mut self, i: u32, action: Action) {
        let now = self.now;
        match action {
            Action::Stat { request, id, .. } => {
                let f = file_of(id);
                let result = if self.origin_up {
                    Ok(FileInfo {
                        len: self.engine_len[f],
                        accepts_ranges: true,
                        cached: self.nodes[i as usize].held[f].clone(),
                        content_id: Some(self.file_id[f]),
                    })
                } else {
                    Err(Failure::Transient(HTTP_503))
                };
                let at = now + self.origin_rtt(i);
                self.push(at, Ev::Reply(i, Box::new(Input::Stat { request, result })));
                // With the file known, the driver joins its swarm and asks every peer at once.
                if self.sc.mode != Mode::Http {
                    let lan_rtt =
                        ns(2.0 * self.sc.sites[self.nodes[i as usize].site].lan_latency_ms / 1e3);
                    self.push(at + lan_rtt, Ev::Poll(i));
                }
            }
            Action::Fetch {
                request, id, range, ..
            } => {
                let blocks = range.blocks();
                self.nodes[i as usize].open.insert(
                    request,
                    Open {
                        file: file_of(id),
                        server: None,
                        next: blocks.start,
                        end: blocks.end,
                        flow: None,
                    },
                );
                let at = now + self.origin_rtt(i);
                self.push(at, Ev::OriginBegin(i, request));
            }
            Action::RequestBlocks {
                request,
                id,
                peer,
                blocks,
            } => {
                let server = peer.0 as u32;
                if self.nodes[i as usize].banned.contains(&server) {
                    self.out.requests_to_banned += 1;
                }
                self.nodes[i as usize].open.insert(
                    request,
                    Open {
                        file: file_of(id),
                        server: Some(server),
                        next: blocks.start,
                        end: blocks.end,
                        flow: None,
                    },
                );
                let at = now + self.peer_one_way(i, server);
                self.push(at, Ev::PeerBegin(i, request));
            }
            Action::Cancel { request } => self.cancel(i, request),
            Action::Assemble { request, id, .. } => {
                // The driver hashes what it assembles: blocks the engine counts as in place but
                // that have no verified copy (never received, or only from a corrupt peer)
                // would fail the content id. Any such byte is a broken safety invariant.
                let f = file_of(id);
                let unverified = unverified_bytes(
                    self.file_len[f],
                    self.block_bytes,
                    &self.nodes[i as usize].held[f],
                );
                self.out.corrupt_bytes_committed += unverified;
                let result = if unverified == 0 {
                    Ok(Some(self.file_id[f]))
                } else {
                    Err(Failure::Integrity)
                };
                self.push(
                    now,
                    Ev::Reply(i, Box::new(Input::Assembled { request, result })),
                );
            }
            Action::Restart { .. } => {}
        }
    }

    fn on_event(&mut self, i: u32, event: Event) {
        match event {
            Event::PeerBanned { peer } => {
                let j = peer.0 as u32;
                self.out.bans += 1;
                self.out.first_ban_s.get_or_insert(secs(self.now));
                self.nodes[i as usize].banned.insert(j);
                // The driver disconnects it: the banned node loses this peer too.
                if self.nodes[j as usize].online {
                    let now = self.instant();
                    self.nodes[j as usize].engine.handle_input(
                        now,
                        Input::PeerRemoved {
                            peer: PeerId(u64::from(i)),
                        },
                    );
                    self.drain(j);
                }
            }
            Event::Status { id, status } => {
                let f = file_of(id);
                if status.state == State::Transferred
                    && let Job::Active(started) = self.nodes[i as usize].jobs[f]
                {
                    let node = &mut self.nodes[i as usize];
                    node.jobs[f] = Job::Done(started, self.now);
                    node.used_at[f] = self.now;
                    // What it collected to get there is of no more use (its holdings tell
                    // every hash now).
                    node.told_fetchers[f] = BTreeMap::new();
                    node.known[f] = BlockBits::default();
                    node.known_next[f] = BlockBits::default();
                    self.out
                        .completions
                        .push((i, f, secs(started), secs(self.now)));
                    let all_done = self.nodes[i as usize]
                        .jobs
                        .iter()
                        .all(|j| matches!(j, Job::Done(..)));
                    if all_done && let Some(linger) = self.sc.churn.linger_s {
                        let at = self.now + ns(linger);
                        self.nodes[i as usize].leaves_at = Some(at);
                        self.push(at, Ev::Leave(i));
                    }
                }
            }
        }
    }

    fn origin_begin(&mut self, i: u32, request: RequestId) {
        if !self.nodes[i as usize].open.contains_key(&request) {
            return;
        }
        if !self.origin_up {
            self.nodes[i as usize].open.remove(&request);
            let result = Err(Failure::Transient(HTTP_503));
            self.feed(i, Input::FetchEnded { request, result });
            return;
        }
        let site = self.nodes[i as usize].site;
        let mut path = vec![self.origin];
        path.extend(self.site_in[site]);
        path.push(self.nodes[i as usize].down);
        self.start_flow(i, request, &path, true);
    }

    fn peer_begin(&mut self, i: u32, request: RequestId) {
        let Some(&Open {
            file,
            server: Some(server),
            next,
            end,
            ..
        }) = self.nodes[i as usize].open.get(&request)
        else {
            return;
        };
        let s = &self.nodes[server as usize];
        let holds = s.held[file].contains_range(next, end);
        if !s.online || !holds || !s.neighbors.contains(&i) || s.banned.contains(&i) {
            self.fail_peer_request(i, request, server);
            return;
        }
        match s.behaviour {
            Behaviour::Stall => {} // accepted, never answered: the engine's stall timer ends it
            Behaviour::Honest | Behaviour::Corrupt => {
                if s.uploads < self.sc.engine.upload_slots(self.sc.mode) {
                    self.begin_upload(i, request);
                } else if s.queue.len() < UPLOAD_QUEUE {
                    self.nodes[server as usize].queue.push_back((i, request));
                } else {
                    self.fail_peer_request(i, request, server);
                }
            }
        }
    }

    fn fail_peer_request(&mut self, i: u32, request: RequestId, server: u32) {
        self.nodes[i as usize].open.remove(&request);
        self.nodes[i as usize].refresh.insert(server);
        let at = self.now + self.peer_one_way(i, server);
        let result = Err(Failure::Transient(PEER_REQUEST_FAILED));
        self.push(
            at,
            Ev::Reply(i, Box::new(Input::FetchEnded { request, result })),
        );
    }

    fn begin_upload(&mut self, i: u32, request: RequestId) {
        let Some(&Open {
            file,
            server: Some(server),
            ..
        }) = self.nodes[i as usize].open.get(&request)
        else {
            return;
        };
        self.nodes[server as usize].uploads += 1;
        self.nodes[server as usize].used_at[file] = self.now;
        let (si, ri) = (
            self.nodes[server as usize].site,
            self.nodes[i as usize].site,
        );
        let mut path = vec![self.nodes[server as usize].up];
        let wan = si != ri;
        if wan {
            path.extend(self.site_out[si]);
            path.extend(self.site_in[ri]);
        }
        path.push(self.nodes[i as usize].down);
        self.start_flow(i, request, &path, wan);
    }

    fn chunk_bytes(&self, f: usize, chunk: (u64, u64)) -> u64 {
        wire_bytes(self.file_len[f], self.block_bytes, chunk.0..chunk.1)
    }

    /// Starts the flow of `i`'s open `request` across `path`.
    fn start_flow(&mut self, i: u32, request: RequestId, path: &[ResId], wan: bool) {
        let open = self.nodes[i as usize].open[&request];
        let chunk = next_chunk(&open, self.sc.grain());
        let bytes = self.chunk_bytes(open.file, chunk);
        let mut etas = std::mem::take(&mut self.etas);
        let flow = self.net.start(self.now, path, bytes as f64, &mut etas);
        let slot = flow.0 as usize;
        if self.flows.len() <= slot {
            self.flows.resize(slot + 1, None);
        }
        self.flows[slot] = Some(FlowInfo {
            node: i,
            request,
            chunk,
            chunk_bytes: bytes,
            server: open.server,
            wan,
            armed: u64::MAX,
        });
        self.schedule_etas(&mut etas);
        self.etas = etas;
        if let Some(o) = self.nodes[i as usize].open.get_mut(&request) {
            o.flow = Some(flow);
        }
    }

    /// Keeps one live milestone event per flow, at or before the time it reaches its
    /// milestone: an earlier time is pushed; a later one waits for the pending event, which
    /// re-arms itself (so rate changes do not flood the queue with stale events).
    fn schedule_etas(&mut self, etas: &mut Vec<Eta>) {
        for eta in etas.drain(..) {
            self.arm(eta.flow, eta.at);
        }
    }

    fn arm(&mut self, flow: FlowId, at: u64) {
        let Some(info) = self.flows[flow.0 as usize].as_mut() else {
            return;
        };
        if at < info.armed {
            info.armed = at;
            self.push(at, Ev::Milestone(flow));
        }
    }

    fn check_milestone(&mut self, flow: FlowId) {
        let Some(info) = self.flows.get(flow.0 as usize).copied().flatten() else {
            return;
        };
        if info.armed != self.now {
            return; // a stale event: another one is pending for this flow
        }
        if self.net.remaining(self.now, flow) < 1.0 {
            self.milestone(flow);
            return;
        }
        let at = self.net.eta(self.now, flow);
        let slot = self.flows[flow.0 as usize].as_mut().expect("checked");
        slot.armed = u64::MAX;
        self.arm(flow, at);
    }

    /// Removes a flow from the network; returns the bytes of its chunk it had carried.
    fn end_flow(&mut self, flow: FlowId) -> u64 {
        let info = self.flows[flow.0 as usize].take().expect("live flow");
        let carried = info.chunk_bytes - self.net.remaining(self.now, flow).round() as u64;
        let mut etas = std::mem::take(&mut self.etas);
        self.net.remove(self.now, flow, &mut etas);
        self.schedule_etas(&mut etas);
        self.etas = etas;
        self.count_wire(&info, carried);
        if let Some(server) = info.server {
            self.upload_done(server);
        }
        carried
    }

    /// Counts bytes that crossed links: the origin's, and the WAN links'.
    fn count_wire(&mut self, info: &FlowInfo, bytes: u64) {
        let receiver_site = self.nodes[info.node as usize].site;
        match info.server {
            None => {
                self.out.origin_bytes += bytes;
                if self.nodes[info.node as usize].behaviour != Behaviour::Honest {
                    self.out.origin_bytes_to_faulty += bytes;
                }
            }
            Some(s) if info.wan => {
                let server_site = self.nodes[s as usize].site;
                self.out.wan_egress[server_site] += bytes;
            }
            Some(_) => {}
        }
        if info.wan {
            self.out.wan_ingress[receiver_site] += bytes;
        }
    }

    /// A server's upload ended: its next queued request starts.
    fn upload_done(&mut self, server: u32) {
        let s = &mut self.nodes[server as usize];
        s.uploads = s.uploads.saturating_sub(1);
        while let Some((i, request)) = self.nodes[server as usize].queue.pop_front() {
            let Some(open) = self.nodes[i as usize].open.get(&request) else {
                continue;
            };
            // (What it was asked for may have been evicted while the request waited.)
            if self.nodes[server as usize].held[open.file].contains_range(open.next, open.end) {
                self.begin_upload(i, request);
                break;
            }
            self.fail_peer_request(i, request, server);
        }
    }

    fn milestone(&mut self, flow: FlowId) {
        let info = self.flows[flow.0 as usize].expect("live flow");
        let i = info.node;
        let request = info.request;
        let Some(&open) = self.nodes[i as usize].open.get(&request) else {
            return;
        };
        let (file, end) = (open.file, open.end);
        let (first, last) = info.chunk;
        let bytes = info.chunk_bytes;
        let corrupt = info
            .server
            .is_some_and(|s| self.nodes[s as usize].behaviour == Behaviour::Corrupt);
        // Before the manifest is trusted, peer blocks are written unchecked (a corrupt peer's
        // too: nothing can tell yet), and checked when it is trusted.
        let unchecked = info.server.is_some() && !self.nodes[i as usize].trusted[file];
        let finished = last >= end || (corrupt && !unchecked);
        if finished {
            self.end_flow(flow);
            self.nodes[i as usize].open.remove(&request);
        } else {
            let next = next_chunk(&Open { next: last, ..open }, self.sc.grain());
            let next_bytes = self.chunk_bytes(file, next);
            self.count_wire(&info, bytes);
            let eta = self.net.next_milestone(self.now, flow, next_bytes as f64);
            if let Some(slot) = self.flows[flow.0 as usize].as_mut() {
                slot.chunk = next;
                slot.chunk_bytes = next_bytes;
                slot.armed = u64::MAX;
            }
            self.arm(flow, eta.at);
            if let Some(o) = self.nodes[i as usize].open.get_mut(&request) {
                o.next = last;
            }
        }
        self.bin(info.server.map(|s| self.class(i, s)), bytes);
        let now = self.instant();
        if corrupt {
            self.out.corrupt_bytes_received += bytes;
        }
        if corrupt && !unchecked {
            self.out.wasted_bytes += bytes;
            self.nodes[i as usize].engine.handle_input(
                now,
                Input::BlockCorrupt {
                    request,
                    block: BlockIndex(first),
                },
            );
            self.drain(i);
            return;
        }
        let node = &mut self.nodes[i as usize];
        let fresh = (last - first) - node.held[file].clipped(first, last).count();
        let waste = if corrupt {
            last - first
        } else {
            last - first - fresh
        };
        if waste > 0 {
            self.out.wasted_bytes += bytes * waste / (last - first);
        }
        if unchecked {
            node.unchecked[file].insert(first, last);
            if corrupt {
                node.refuted[file].insert(first, last);
            }
        } else {
            node.held[file].insert(first, last);
            node.held_bits[file].insert(first..last);
            node.gained[file].insert(first, last);
            node.changed[file] = true;
        }
        let node = &mut self.nodes[i as usize];
        match info.server {
            None => node.from_origin += bytes,
            Some(s) => {
                let class = self.class(i, s) as usize;
                self.nodes[i as usize].from_peers[class] += bytes;
                self.nodes[s as usize].to_peers += bytes;
            }
        }
        let engine = &mut self.nodes[i as usize].engine;
        for b in first..last {
            let block = BlockIndex(b);
            let input = if unchecked {
                Input::BlockUnchecked { request, block }
            } else {
                Input::Block { request, block }
            };
            engine.handle_input(now, input);
        }
        if finished {
            engine.handle_input(
                now,
                Input::FetchEnded {
                    request,
                    result: Ok(()),
                },
            );
        }
        self.drain(i);
    }

    fn bin(&mut self, class: Option<PeerClass>, bytes: u64) {
        let second = (self.now / 1_000_000_000) as usize;
        if self.out.timeline.len() <= second {
            self.out.timeline.resize(second + 1, [0; 4]);
        }
        let k = match class {
            None => 0,
            Some(PeerClass::Lan) => 1,
            Some(PeerClass::Group) => 2,
            Some(PeerClass::Internet) => 3,
        };
        self.out.timeline[second][k] += bytes;
    }

    fn cancel(&mut self, i: u32, request: RequestId) {
        let Some(open) = self.nodes[i as usize].open.remove(&request) else {
            return;
        };
        if let Some(flow) = open.flow
            && self.flows[flow.0 as usize].is_some()
        {
            let carried = self.end_flow(flow);
            self.out.wasted_bytes += carried;
            if open.server.is_none() {
                self.out.origin_cut_bytes += carried;
            }
        }
        // A queued request leaves the server's queue lazily (skipped when its turn comes).
    }

    fn leave(&mut self, i: u32) {
        if !self.nodes[i as usize].online {
            return;
        }
        let crash = self.sc.churn.crash;
        // Its own requests die with it.
        let open: Vec<RequestId> = self.nodes[i as usize].open.keys().copied().collect();
        for request in open {
            self.cancel(i, request);
        }
        // Uploads to others: a clean leave fails them at once; a crash leaves them hanging
        // until the requesters' stall timers fire.
        let serving: Vec<(u32, RequestId, FlowId)> = self
            .flows
            .iter()
            .enumerate()
            .filter_map(|(k, f)| {
                f.filter(|f| f.server == Some(i))
                    .map(|f| (f.node, f.request, FlowId(k as u32)))
            })
            .collect();
        for (r, request, flow) in serving {
            let carried = self.end_flow(flow);
            self.out.wasted_bytes += carried;
            if crash {
                if let Some(o) = self.nodes[r as usize].open.get_mut(&request) {
                    o.flow = None;
                }
            } else {
                self.fail_peer_request(r, request, i);
            }
        }
        let node = &mut self.nodes[i as usize];
        node.queue.clear();
        node.uploads = 0;
        node.online = false;
        node.timer = None;
        if crash {
            let at = self.now + CRASH_DETECT_NS;
            self.push(at, Ev::Gone(i));
        } else {
            self.tell_neighbors_gone(i);
        }
    }

    fn tell_neighbors_gone(&mut self, i: u32) {
        let now = self.instant();
        for j in self.nodes[i as usize].neighbors.clone() {
            if self.nodes[j as usize].online {
                // What it was told of `i` goes with the connection.
                let peer = &mut self.nodes[j as usize];
                for told in &mut peer.told_fetching {
                    told.remove(&i);
                }
                for told in &mut peer.told_fetchers {
                    told.remove(&i);
                }
                self.nodes[j as usize].engine.handle_input(
                    now,
                    Input::PeerRemoved {
                        peer: PeerId(u64::from(i)),
                    },
                );
                self.drain(j);
            }
        }
    }

    /// A node comes back with the verified blocks it had: a new engine (a restarted
    /// process), its unfinished downloads started again (the cache answers the stat).
    fn rejoin(&mut self, i: u32) {
        let files = self.file_len.len();
        let node = &mut self.nodes[i as usize];
        if node.online {
            return;
        }
        node.engine = Engine::new(
            engine_config(&self.sc, node.key),
            engine_seed(self.seed, u64::from(i), self.now),
        );
        node.trusted = vec![false; files];
        node.unchecked = vec![RangeSet::new(); files];
        node.refuted = vec![RangeSet::new(); files];
        node.known = vec![BlockBits::default(); files];
        node.known_next = vec![BlockBits::default(); files];
        node.told_fetching = vec![BTreeSet::new(); files];
        node.told_fetchers = vec![BTreeMap::new(); files];
        for f in 0..files {
            if matches!(node.jobs[f], Job::Active(_)) {
                node.jobs[f] = Job::Waiting;
            }
            node.changed[f] = !node.held[f].is_empty();
        }
        self.arrive(i);
    }

    fn outage_start(&mut self) {
        self.origin_up = false;
        let origin_flows: Vec<(u32, RequestId, FlowId)> = self
            .flows
            .iter()
            .enumerate()
            .filter_map(|(k, f)| {
                f.filter(|f| f.server.is_none())
                    .map(|f| (f.node, f.request, FlowId(k as u32)))
            })
            .collect();
        for (i, request, flow) in origin_flows {
            let carried = self.end_flow(flow);
            self.out.wasted_bytes += carried;
            self.out.origin_cut_bytes += carried;
            self.nodes[i as usize].open.remove(&request);
            let result = Err(Failure::Transient(HTTP_503));
            self.feed(i, Input::FetchEnded { request, result });
        }
    }

    fn finish(mut self) -> Outcome {
        self.out.end_s = secs(self.now);
        let rejoin = self.sc.churn.rejoin_after_s.is_some();
        for node in &self.nodes {
            // A node that left for good (and never finished) is not expected to.
            let left_for_good = !node.online && !rejoin && node.leaves_at.is_none();
            let done = node.jobs.iter().all(|j| matches!(j, Job::Done(..)));
            if !done && !left_for_good {
                self.out.unfinished += node
                    .jobs
                    .iter()
                    .filter(|j| !matches!(j, Job::Done(..)))
                    .count() as u64;
            }
            self.out.peer_bytes[0] += node.from_peers[0];
            self.out.peer_bytes[1] += node.from_peers[1];
            self.out.peer_bytes[2] += node.from_peers[2];
            self.out.nodes.push(NodeInfo {
                arrival_s: secs(node.arrival),
                up: node.up_bps,
                down: node.down_bps,
                site: node.site,
                must_finish: !left_for_good,
            });
        }
        self.out
    }
}

/// Bytes of a `len`-byte file cut into `block_bytes` blocks outside the verified blocks
/// `held` (an empty file is one empty block, as `block_count` counts it).
fn unverified_bytes(len: u64, block_bytes: u64, held: &RangeSet) -> u64 {
    std::iter::once(0..len.div_ceil(block_bytes).max(1))
        .collect::<RangeSet>()
        .difference(held)
        .runs()
        .map(|r| wire_bytes(len, block_bytes, r))
        .sum()
}

/// The bytes on the wire of `blocks` of a file of `len` bytes cut into `block_bytes` blocks.
fn wire_bytes(len: u64, block_bytes: u64, blocks: Range<u64>) -> u64 {
    (blocks.end * block_bytes).min(len) - (blocks.start * block_bytes).min(len)
}

/// The file of a download (the simulator numbers downloads from 1, files from 0).
fn file_of(id: DownloadId) -> usize {
    (id.0 - 1) as usize
}

/// The blocks an open request's next milestone brings: a whole peer request at once, the
/// origin's bytes block by block (engine blocks of `grain` node blocks each).
fn next_chunk(open: &Open, grain: u64) -> (u64, u64) {
    let step = if open.server.is_some() {
        (CHUNK_BLOCKS / grain).max(1)
    } else {
        ORIGIN_CHUNK_BLOCKS
    };
    (open.next, open.end.min(open.next + step))
}

/// Node `key`'s engine configuration under the scenario's knobs.
/// Sizes in blocks are divided by the scenario's grain, so that they keep their sizes in bytes
/// (at least one block), and so is the minimum speed, since the engine counts its bytes.
fn engine_config(sc: &Scenario, key: u64) -> Config {
    let node = Config::default();
    let grain = sc.grain();
    let blocks = |n: u64| (n / grain).max(1);
    Config {
        node_key: key,
        origin_fallback_delay: Duration::from_secs_f64(sc.engine.origin_fallback_delay_s),
        peer_slots: sc.engine.peer_slots,
        peer_request_blocks: blocks(sc.engine.peer_request_blocks),
        mixed_request_blocks: blocks(node.mixed_request_blocks),
        far_request_blocks: blocks(node.far_request_blocks),
        min_span_blocks: blocks(node.min_span_blocks),
        max_span_blocks: blocks(node.max_span_blocks),
        min_background_qos: sc.engine.min_background_qos / grain,
        endgame_after: Duration::from_secs_f64(sc.engine.endgame_after_s),
        near_wait: Duration::from_secs_f64(sc.engine.near_wait_s),
        ..node
    }
}

/// The seed of node `index`'s engine started at `now` (a rejoin starts a new one).
fn engine_seed(seed: u64, index: u64, now: u64) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&index.to_le_bytes());
    bytes[16..24].copy_from_slice(&now.to_le_bytes());
    bytes
}

fn ev_tag(ev: &Ev) -> u64 {
    match ev {
        Ev::Arrive(i) => u64::from(*i) << 8 | 1,
        Ev::StartFile(i, f) => (u64::from(*i) << 16) ^ (*f as u64) << 8 | 2,
        Ev::Timer(i, _) => u64::from(*i) << 8 | 3,
        Ev::HavePoll => 4,
        Ev::Reply(i, _) => u64::from(*i) << 8 | 5,
        Ev::OriginBegin(i, r) => (u64::from(*i) << 24) ^ r.0 << 8 | 6,
        Ev::PeerBegin(i, r) => (u64::from(*i) << 24) ^ r.0 << 8 | 7,
        Ev::Milestone(f) => u64::from(f.0) << 8 | 8,
        Ev::Leave(i) => u64::from(*i) << 8 | 9,
        Ev::Rejoin(i) => u64::from(*i) << 8 | 10,
        Ev::Gone(i) => u64::from(*i) << 8 | 11,
        Ev::OutageStart => 12,
        Ev::OutageEnd => 13,
        Ev::Poll(i) => u64::from(*i) << 8 | 14,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use do_content::BLOCK_SIZE;

    #[test]
    fn unverified_bytes_count_every_block_without_a_verified_copy() {
        let len = 3 * BLOCK_SIZE + 100; // four blocks, the last one short
        let unverified = |held: Range<u64>| {
            let held: RangeSet = std::iter::once(held).filter(|r| !r.is_empty()).collect();
            unverified_bytes(len, BLOCK_SIZE, &held)
        };
        assert_eq!(unverified(0..0), len);
        assert_eq!(unverified(0..4), 0);
        assert_eq!(unverified(0..3), 100);
        assert_eq!(unverified(1..4), BLOCK_SIZE);
    }

    #[test]
    fn a_coarse_block_stands_for_its_bytes_on_the_wire() {
        // 16 node blocks a block: a file of 2.5 such blocks is three engine blocks, the
        // engine's file a sixteenth of its length.
        let block = 16 * BLOCK_SIZE;
        let len = 2 * block + block / 2;
        let engine_len = len.div_ceil(16);
        assert_eq!(block_count(engine_len), 3);
        assert_eq!(wire_bytes(len, block, 0..1), block);
        assert_eq!(wire_bytes(len, block, 2..3), block / 2);
        assert_eq!(wire_bytes(len, block, 0..3), len);
        let held: RangeSet = std::iter::once(0..2).collect();
        assert_eq!(unverified_bytes(len, block, &held), block / 2);
    }
}
