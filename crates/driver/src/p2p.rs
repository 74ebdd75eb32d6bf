//! The node's p2p side: finding peers (on the LAN over mDNS; beyond it, in Group and Internet
//! modes, through bootstrap peers and Kademlia provider records), telling the engine who holds
//! what, carrying the engine's block requests to peers (verifying every block before it is
//! written), building a trusted manifest from peers' block hashes, and serving the cache
//! (complete files and the verified blocks of downloads in progress) to others.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    path::Path,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use do_content::{
    BlockBits, BlockHash, BlockIndex, ContentId, Manifest, RangeSet, block_count, block_range,
    hash_block,
};
use do_engine::{DownloadId, Engine, Failure, Input, PeerClass, PeerId, RequestId, SplitRing};
use do_origin::Validators;
use do_p2p::{
    BehaviourEvent,
    lane::Cipher,
    wire::{self, MAX_HASHES, Request, Response},
};
use do_store::{EntryId, Store};
use futures::StreamExt;
use libp2p::{
    Multiaddr, Swarm, identify, kad, mdns,
    multiaddr::Protocol,
    request_response::{self, OutboundRequestId, ResponseChannel},
    swarm::{ConnectionId, NetworkBehaviour as _, SwarmEvent, dial_opts::DialOpts},
};
use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc},
    task::JoinSet,
};
use tracing::{debug, info, warn};

use crate::{
    actor::{Found, IoEvent},
    dialer::Dialer,
    lane::{self, LaneCounters, LaneEvent, Tickets},
    polled::Polled,
    shaper::Shaper,
};

/// DO_E_FATAL_CORE_ERROR: a peer request could not be sent or its answer handled.
const DO_E_PEER_REQUEST_FAILED: u32 = 0x80D0_6802;
/// How often peers are asked what they hold of the files being downloaded.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Requests waiting for an upload slot; beyond this, peers get `Busy`.
const UPLOAD_QUEUE: usize = 256;
/// How often (in polls) a download asks the DHT again who holds its file: co-fetchers beyond
/// the LAN announce themselves as they start.
const PROVIDER_QUERY_POLLS: u64 = 10;

/// How long a peer whose lane failed (or that offers none) is asked over libp2p only.
const LANE_RETRY: Duration = Duration::from_secs(30);
/// Failures in a row after which the wait for another lane stops doubling (30 s × 2^4: 8 min).
const LANE_BACKOFF_STEPS: u32 = 4;
/// How long block requests wait for a lane being opened (on a LAN it takes a round trip and a
/// TCP connection) before they go over libp2p.
const LANE_WAIT: Duration = Duration::from_secs(1);

/// Answers computed off the actor, waiting to be sent, with the class of the peer asking and
/// the upload slot the answer holds until it is handed to the swarm.
type Answer = (
    ResponseChannel<Response>,
    Response,
    PeerClass,
    OwnedSemaphorePermit,
);

/// Byte and peer counters, node-wide (DO's `Get-DeliveryOptimizationPerfSnap` fields).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) bytes_from_lan_peers: AtomicU64,
    pub(crate) bytes_to_lan_peers: AtomicU64,
    pub(crate) bytes_from_group_peers: AtomicU64,
    pub(crate) bytes_to_group_peers: AtomicU64,
    pub(crate) bytes_from_internet_peers: AtomicU64,
    pub(crate) bytes_to_internet_peers: AtomicU64,
    pub(crate) peers_banned: AtomicU64,
}

impl Counters {
    fn received_from(&self, class: PeerClass) -> &AtomicU64 {
        match class {
            PeerClass::Lan => &self.bytes_from_lan_peers,
            PeerClass::Group => &self.bytes_from_group_peers,
            PeerClass::Internet => &self.bytes_from_internet_peers,
        }
    }

    pub(crate) fn served_to(&self, class: PeerClass) -> &AtomicU64 {
        match class {
            PeerClass::Lan => &self.bytes_to_lan_peers,
            PeerClass::Group => &self.bytes_to_group_peers,
            PeerClass::Internet => &self.bytes_to_internet_peers,
        }
    }
}

/// A file this node is downloading and exchanging with peers.
struct Swarming {
    content: ContentId,
    entry: EntryId,
    len: u64,
    /// Block hashes collected so far (own verified blocks and peers' claims), until the
    /// manifest is trusted.
    hashes: Vec<Option<BlockHash>>,
    /// Set once the collected hashes merged to the content id (or a peer's did).
    manifest: Option<Arc<Manifest>>,
    /// Blocks peers sent before the manifest was trusted, with the hashes of their bytes:
    /// written into the data file but not recorded (so neither served nor assembled), told to
    /// the engine as unchecked; checked and recorded once the manifest is trusted.
    unchecked: BTreeMap<u64, BlockHash>,
    /// Taken around each write into the data file: the kernel writes one file's pages one
    /// writer at a time, and writers that waited for it there spun on a CPU (about 5 % of the
    /// receiving daemon's), where here they sleep.
    writes: Arc<Mutex<()>>,
    /// Peers asked for their status and not yet answered.
    polling: HashSet<libp2p::PeerId>,
    /// The peers polled (a bounded set on a large LAN).
    polled: Polled<libp2p::PeerId>,
    /// Peers asked for hashes and not yet answered.
    hashing: HashSet<libp2p::PeerId>,
    /// Peers already reported to the engine as fetching this file too.
    co_fetchers: HashSet<libp2p::PeerId>,
    /// Co-fetchers asked whom they split the origin's work with, not yet answered.
    asking_co: HashSet<libp2p::PeerId>,
    /// Co-fetchers asked what their own peers hold, not yet answered.
    asking_near: HashSet<libp2p::PeerId>,
}

/// A connected peer.
struct Known {
    id: PeerId,
    addr: Multiaddr,
    /// LAN (found by mDNS, in every mode), Group (a member beyond the LAN, in Group mode) or
    /// Internet (beyond the LAN, in Internet mode).
    class: PeerClass,
    /// Its rank key (`do_p2p::rank_key`): where its points are on a split's ring.
    key: u64,
}

/// A download whose origin could not be reached, asking peers for the file's manifest.
struct PeerStat {
    /// The engine's stat request, answered once peers have.
    request: RequestId,
    content: ContentId,
    /// The origin's failure, reported if no peer has the manifest.
    failure: Failure,
    /// Manifest requests not yet answered.
    asked: usize,
}

/// What the actor must finish after an event (it owns the jobs and the cache entries).
pub(crate) enum Outcome {
    /// A peer sent the manifest of a download whose origin is unreachable: the download can
    /// go on from peers.
    PeerStat {
        download: DownloadId,
        request: RequestId,
        manifest: Arc<Manifest>,
    },
    /// No peer had it: the origin's failure stands.
    NoPeerStat {
        request: RequestId,
        failure: Failure,
    },
    /// The group's members answered a download's claim request: the first content id one
    /// of them claimed, or `None`. The stat goes on with it.
    Claimed {
        download: DownloadId,
        request: RequestId,
        found: Box<Found>,
        content: Option<ContentId>,
    },
}

/// A download whose stat waits for the group members' claims.
struct Claiming {
    request: RequestId,
    found: Box<Found>,
    /// Claim requests not yet answered.
    asked: usize,
}

/// What a request sent to a peer was for.
pub(crate) enum Pending {
    Manifest {
        download: DownloadId,
    },
    Claim {
        download: DownloadId,
    },
    Status {
        download: DownloadId,
    },
    Hashes {
        download: DownloadId,
    },
    CoFetchers {
        download: DownloadId,
    },
    Near {
        download: DownloadId,
    },
    Blocks {
        request: RequestId,
        download: DownloadId,
        first: u64,
        count: u64,
    },
    Lane {
        secret: [u8; do_p2p::lane::SECRET_LEN],
        cipher: Cipher,
    },
}

/// A peer's data lane (see [`lane`]).
enum Lane {
    /// Asked for a ticket over libp2p (at `since`); block requests wait for the lane, for
    /// [`LANE_WAIT`] at most, then go over libp2p.
    Opening {
        since: Instant,
        waiting: Vec<Pending>,
    },
    /// Carrying block requests (`id` tells this lane from a later one to the same peer).
    Up {
        id: u64,
        jobs: mpsc::Sender<lane::Job>,
    },
    /// None (the peer offers none, or its lane failed): libp2p only, until then.
    Off { until: Instant },
}

/// What the serving side knows of downloads in progress (read by answering threads).
#[derive(Clone, Copy)]
pub(crate) struct Active {
    entry: EntryId,
    len: u64,
    fetching: bool,
}

pub(crate) type ActiveMap = Arc<Mutex<HashMap<ContentId, Active>>>;

/// What woke the p2p side.
pub(crate) enum P2pEvent {
    Swarm(Box<SwarmEvent<BehaviourEvent>>),
    Answer(Answer),
    Lane(LaneEvent),
    /// A lane's answer freed an upload slot.
    SlotFree,
    Tick,
}

/// What the p2p side needs of the actor.
pub(crate) struct Ctx<'a> {
    pub(crate) now: Instant,
    pub(crate) engine: &'a mut Engine,
    pub(crate) store: &'a Arc<Store>,
    pub(crate) tasks: &'a mut JoinSet<()>,
    pub(crate) io_tx: &'a mpsc::Sender<IoEvent>,
}

/// The p2p side of the node.
pub(crate) struct P2p {
    swarm: Swarm<do_p2p::Behaviour>,
    key: u64,
    /// Only the group's members can connect in Group mode.
    class: PeerClass,
    group: Option<String>,
    /// Internet mode: peers mDNS does not see are Internet peers.
    internet: bool,
    /// Files announced in the DHT (when Kademlia runs).
    providing: HashSet<ContentId>,
    /// Polls since the start, for the DHT's provider queries.
    polls: u64,
    answers_tx: mpsc::Sender<Answer>,
    answers_rx: mpsc::Receiver<Answer>,
    /// DO's upload slots: each answer being computed or sent holds one, on libp2p or on a
    /// lane; requests over libp2p wait for one in `queue`.
    slots: Arc<Semaphore>,
    /// Told when a lane frees a slot.
    slot_freed: Arc<Notify>,
    /// Data lanes: offered to peers (when on), and to each peer.
    lanes_on: bool,
    /// The most peers a download polls (0: all).
    poll_peers: usize,
    /// Ring neighbours per point a download polls besides (see `P2pConfig::ring_peers`).
    ring_peers: usize,
    lane_listen: std::net::SocketAddr,
    lane_server: Option<lane::Server>,
    tickets: Arc<Tickets>,
    lanes: HashMap<libp2p::PeerId, Lane>,
    /// Lanes to a peer that failed in a row (none answered a request since): each doubles the
    /// wait for the next (a peer behind a NAT offers a port nobody can reach).
    lane_failures: HashMap<libp2p::PeerId, u32>,
    /// Peers that failed an AEGIS-128L lane request (they predate it): asked for AES-256-GCM
    /// lanes until they reconnect.
    lane_aes: HashSet<libp2p::PeerId>,
    next_lane: u64,
    lane_tx: mpsc::Sender<LaneEvent>,
    lane_rx: mpsc::Receiver<LaneEvent>,
    pub(crate) lane_counters: Arc<LaneCounters>,
    /// `banned`, for the lane server's tasks.
    banned_shared: Arc<Mutex<HashSet<libp2p::PeerId>>>,
    /// The upload rate cap, shared by the tasks answering requests (each locks it for one
    /// computation, never across an await).
    shaper: Option<Arc<Mutex<Shaper>>>,
    queue: VecDeque<(libp2p::PeerId, Request, ResponseChannel<Response>)>,
    peers: HashMap<libp2p::PeerId, Known>,
    dialer: Dialer,
    /// The transport tried first.
    dial_first: crate::Transport,
    banned: HashSet<libp2p::PeerId>,
    by_engine: HashMap<PeerId, libp2p::PeerId>,
    next_peer: u64,
    swarms: HashMap<DownloadId, Swarming>,
    peer_stats: HashMap<DownloadId, PeerStat>,
    claims: HashMap<DownloadId, Claiming>,
    pending: HashMap<OutboundRequestId, Pending>,
    active: ActiveMap,
    tick: tokio::time::Interval,
    pub(crate) counters: Arc<Counters>,
}

impl P2p {
    /// Starts the swarm with the node's persisted identity.
    pub(crate) fn start(
        config: &crate::P2pConfig,
        identity_dir: &Path,
    ) -> Result<Self, do_p2p::Error> {
        let key = do_p2p::load_or_create_identity(identity_dir)?;
        let mut layer = config.layer.clone();
        // Beyond the LAN: Internet mode, and Group mode given bootstrap peers.
        layer.kademlia = config.internet || (layer.group.is_some() && !config.bootstrap.is_empty());
        let mut swarm = do_p2p::swarm(key, &layer)?;
        swarm
            .listen_on(config.listen.clone())
            .map_err(|e| do_p2p::Error::Transport(e.to_string()))?;
        // QUIC beside TCP, except in Group mode (the private network is TCP only).
        let quic = config.layer.quic && config.layer.group.is_none();
        if quic {
            swarm
                .listen_on(config.quic_listen.clone())
                .map_err(|e| do_p2p::Error::Transport(e.to_string()))?;
        }
        let me = *swarm.local_peer_id();
        let group = config.layer.group.as_ref();
        match group {
            Some(g) => {
                info!(peer = %me, group = g.id(), key = g.fingerprint(), "p2p layer up, group mode")
            }
            None => info!(peer = %me, "p2p layer up"),
        }
        // With QUIC first, a peer is dialed once its QUIC address is known (or a moment later).
        let prefer =
            (quic && config.dial_first == crate::Transport::Quic).then_some(crate::Transport::Quic);
        let mut dialer = Dialer::new(me, prefer);
        for addr in &config.bootstrap {
            let Some(Protocol::P2p(peer)) = addr.iter().last() else {
                return Err(do_p2p::Error::Transport(format!(
                    "bootstrap peer {addr}: the address must end with /p2p/<peer id>"
                )));
            };
            if peer == me {
                continue;
            }
            if let Some(kad) = swarm.behaviour_mut().kad.as_mut() {
                kad.add_address(&peer, addr.clone());
            }
            dialer.found(Instant::now(), peer, vec![addr.clone()], false);
        }
        if let Some(kad) = swarm.behaviour_mut().kad.as_mut() {
            // Without bootstrap peers the DHT fills from the LAN's peers as they connect.
            let _ = kad.bootstrap();
        }
        let (answers_tx, answers_rx) = mpsc::channel(64);
        let (lane_tx, lane_rx) = mpsc::channel(64);
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            swarm,
            key: do_p2p::rank_key(&me),
            class: if group.is_some() {
                PeerClass::Group
            } else {
                PeerClass::Lan
            },
            group: group.map(|g| g.id().to_owned()),
            internet: config.internet && group.is_none(),
            providing: HashSet::new(),
            polls: 0,
            answers_tx,
            answers_rx,
            slots: Arc::new(Semaphore::new(config.upload_slots.max(1))),
            slot_freed: Arc::default(),
            lanes_on: config.data_lanes,
            poll_peers: config.poll_peers,
            ring_peers: config.ring_peers,
            lane_listen: config.data_lane_listen,
            lane_server: None,
            tickets: Arc::default(),
            lanes: HashMap::new(),
            lane_failures: HashMap::new(),
            lane_aes: HashSet::new(),
            next_lane: 1,
            lane_tx,
            lane_rx,
            lane_counters: Arc::default(),
            banned_shared: Arc::default(),
            shaper: config
                .upload_max_rate
                .map(|rate| Arc::new(Mutex::new(Shaper::new(rate)))),
            queue: VecDeque::new(),
            peers: HashMap::new(),
            dialer,
            dial_first: config.dial_first,
            banned: HashSet::new(),
            by_engine: HashMap::new(),
            next_peer: 1,
            swarms: HashMap::new(),
            peer_stats: HashMap::new(),
            claims: HashMap::new(),
            pending: HashMap::new(),
            active: ActiveMap::default(),
            tick,
            counters: Arc::default(),
        })
    }

    /// This node's rank key (see `do_p2p::rank_key`).
    pub(crate) fn key(&self) -> u64 {
        self.key
    }

    /// The download mode's name (DO's `DownloadMode`): `lan`, `group` or `internet`.
    pub(crate) fn mode(&self) -> &'static str {
        match (self.class, self.internet) {
            (PeerClass::Group, _) => "group",
            (_, true) => "internet",
            _ => "lan",
        }
    }

    /// Announces in the DHT every complete file of the cache (at start: a restarted node is
    /// found again by those who look beyond the LAN).
    pub(crate) fn announce_cached(&mut self, store: &Store) {
        if self.swarm.behaviour().kad.as_ref().is_none() {
            return;
        }
        let Ok(entries) = store.entries() else {
            return;
        };
        for (_, meta) in entries {
            if let (true, Some(Ok(content))) = (
                meta.complete,
                meta.content_id.as_deref().map(str::parse::<ContentId>),
            ) {
                self.provide(content);
            }
        }
    }

    /// Announces `content` in the DHT, once (Kademlia republishes it).
    fn provide(&mut self, content: ContentId) {
        if !self.providing.insert(content) {
            return;
        }
        if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut()
            && let Err(e) = kad.start_providing(do_p2p::provider_key(content.as_bytes()))
        {
            warn!(%content, error = %e, "cannot announce the file in the DHT");
        }
    }

    /// Withdraws from the DHT the files this node announced and no longer holds nor fetches
    /// (evicted, deleted, or a download that stopped): their records would send askers to a
    /// node that answers "not here".
    fn withdraw_gone(&mut self, store: &Store) {
        if self.providing.is_empty() || self.swarm.behaviour().kad.as_ref().is_none() {
            return;
        }
        let fetching: HashSet<ContentId> = self.swarms.values().map(|s| s.content).collect();
        for content in withdrawn(&self.providing, &fetching, store) {
            self.providing.remove(&content);
            debug!(%content, "no longer held: withdrawn from the DHT");
            if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                kad.stop_providing(&do_p2p::provider_key(content.as_bytes()));
            }
        }
    }

    /// Asks the DHT who holds `content`; the holders found are dialed.
    fn find_providers(&mut self, content: ContentId) {
        if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
            kad.get_providers(do_p2p::provider_key(content.as_bytes()));
        }
    }

    /// The group id in Group mode.
    pub(crate) fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// This node's peer id.
    pub(crate) fn peer_id(&self) -> String {
        self.swarm.local_peer_id().to_string()
    }

    /// The peers it is connected to, with the address of the connection and their class.
    pub(crate) fn peer_list(&self) -> Vec<(String, String, &'static str)> {
        let mut listed: Vec<_> = self
            .peers
            .iter()
            .map(|(p, known)| {
                let class = match known.class {
                    PeerClass::Lan => "lan",
                    PeerClass::Group => "group",
                    PeerClass::Internet => "internet",
                };
                (p.to_string(), known.addr.to_string(), class)
            })
            .collect();
        listed.sort();
        listed
    }

    /// The engine banned a peer: its connections are closed, it is not dialed again, and
    /// its connections are refused for the node's lifetime (a new connection would make it a
    /// new peer to the engine, without the ban).
    pub(crate) fn ban(&mut self, peer: PeerId) {
        if let Some(&target) = self.by_engine.get(&peer) {
            warn!(peer = %target, "peer sent bytes that failed verification: banned");
            if self.banned.insert(target) {
                self.counters.peers_banned.fetch_add(1, Ordering::Relaxed);
            }
            self.banned_shared.lock().expect("banned").insert(target);
            // Its lane stops (what it had not answered fails); one being opened is settled
            // when the connection closes.
            if let Some(Lane::Up { .. }) = self.lanes.get(&target) {
                self.lanes.remove(&target);
            }
            self.dialer.expired(&target);
            let _ = self.swarm.disconnect_peer_id(target);
        }
    }

    /// Starts the lane server (when data lanes are on): peers that ask get a ticket for it.
    /// A node whose lane port cannot be bound offers none and says so; its peers then ask it
    /// over libp2p.
    pub(crate) fn serve_lanes(&mut self, store: &Arc<Store>) {
        if !self.lanes_on {
            return;
        }
        let serving = lane::Serving {
            store: Arc::clone(store),
            active: Arc::clone(&self.active),
            slots: Arc::clone(&self.slots),
            slot_freed: Arc::clone(&self.slot_freed),
            shaper: self.shaper.clone(),
            counters: Arc::clone(&self.counters),
            lanes: Arc::clone(&self.lane_counters),
            banned: Arc::clone(&self.banned_shared),
            tickets: Arc::clone(&self.tickets),
        };
        match lane::Server::start(self.lane_listen, serving) {
            Ok(server) => {
                info!(port = server.port, "data lanes served");
                self.lane_server = Some(server);
            }
            Err(e) => warn!(addr = %self.lane_listen, error = %e, "no data lanes: cannot listen"),
        }
    }

    /// The next thing to handle. Cancel-safe.
    pub(crate) async fn next(&mut self) -> P2pEvent {
        tokio::select! {
            event = self.swarm.select_next_some() => P2pEvent::Swarm(Box::new(event)),
            Some(answer) = self.answers_rx.recv() => P2pEvent::Answer(answer),
            Some(event) = self.lane_rx.recv() => P2pEvent::Lane(event),
            () = self.slot_freed.notified() => P2pEvent::SlotFree,
            _ = self.tick.tick() => P2pEvent::Tick,
        }
    }

    /// The origin could not be reached for a download whose content id is trusted: asks every
    /// peer for the file's manifest. False when there is no peer to ask.
    pub(crate) fn stat_from_peers(
        &mut self,
        download: DownloadId,
        request: RequestId,
        content: ContentId,
        failure: Failure,
    ) -> bool {
        let peers: Vec<libp2p::PeerId> = self.peers.keys().copied().collect();
        if peers.is_empty() {
            return false;
        }
        for peer in &peers {
            self.ask(
                peer,
                Request::Manifest {
                    content: *content.as_bytes(),
                },
                Pending::Manifest { download },
            );
        }
        info!(
            download = download.0,
            "origin unreachable: asking peers for the file"
        );
        self.peer_stats.insert(
            download,
            PeerStat {
                request,
                content,
                failure,
                asked: peers.len(),
            },
        );
        true
    }

    /// Group mode: asks every member for the content id of the stat's file (`url` in the
    /// version of `validators`, `len` bytes). Gives `found` back when there is nobody to ask.
    pub(crate) fn claim(
        &mut self,
        download: DownloadId,
        request: RequestId,
        claim: (&str, u64, &Validators),
        found: Box<Found>,
    ) -> Result<(), Box<Found>> {
        let (url, len, validators) = claim;
        let peers: Vec<libp2p::PeerId> = self.peers.keys().copied().collect();
        if self.class != PeerClass::Group || peers.is_empty() || validators.is_empty() {
            return Err(found);
        }
        for peer in &peers {
            self.ask(
                peer,
                Request::Claim {
                    url: url.to_owned(),
                    len,
                    etag: validators.etag.clone(),
                    last_modified: validators.last_modified.clone(),
                },
                Pending::Claim { download },
            );
        }
        debug!(download = download.0, "asking the group for the content id");
        self.claims.insert(
            download,
            Claiming {
                request,
                found,
                asked: peers.len(),
            },
        );
        Ok(())
    }

    /// A download learned its file: exchange it with peers. `fetching` when the whole file is
    /// wanted (it then splits the origin's work with peers fetching it too).
    pub(crate) fn join(&mut self, ctx: &mut Ctx<'_>, download: DownloadId, swarming: Join) {
        let Join {
            content,
            entry,
            len,
            fetching,
            manifest,
        } = swarming;
        self.active.lock().expect("active map").insert(
            content,
            Active {
                entry,
                len,
                fetching,
            },
        );
        self.swarms.insert(
            download,
            Swarming {
                content,
                entry,
                len,
                hashes: vec![None; block_count(len) as usize],
                manifest: manifest.clone(),
                unchecked: BTreeMap::new(),
                writes: Arc::default(),
                polling: HashSet::new(),
                polled: Polled::new(self.poll_peers),
                hashing: HashSet::new(),
                co_fetchers: HashSet::new(),
                asking_co: HashSet::new(),
                asking_near: HashSet::new(),
            },
        );
        if manifest.is_some() {
            ctx.engine.handle_input(
                ctx.now,
                Input::ManifestTrusted {
                    id: download,
                    refuted: RangeSet::new(),
                    lost: RangeSet::new(),
                },
            );
        } else {
            self.refresh_own_hashes(ctx, download);
        }
        // Beyond the LAN: the node says it holds (or fetches) the file, and looks for others.
        self.provide(content);
        self.find_providers(content);
        self.poll_peers(download);
    }

    /// A download stopped wanting its file (transferred, paused, aborted).
    pub(crate) fn leave(&mut self, download: DownloadId) {
        if let Some(s) = self.swarms.remove(&download) {
            let still = self.swarms.values().any(|o| o.content == s.content);
            if !still {
                self.active.lock().expect("active map").remove(&s.content);
            }
        }
    }

    /// True when the download is exchanged with peers.
    pub(crate) fn is_swarming(&self, download: DownloadId) -> bool {
        self.swarms.contains_key(&download)
    }

    /// Carries out the engine's `RequestBlocks`.
    pub(crate) fn request_blocks(
        &mut self,
        ctx: &mut Ctx<'_>,
        request: RequestId,
        download: DownloadId,
        peer: PeerId,
        blocks: std::ops::Range<u64>,
    ) {
        let target = self.by_engine.get(&peer).copied();
        let content = self.swarms.get(&download).map(|s| s.content);
        let (Some(target), Some(content)) = (target, content) else {
            let _ = ctx.io_tx.try_send(IoEvent::FetchEnded {
                request,
                result: Err(Failure::Transient(DO_E_PEER_REQUEST_FAILED)),
            });
            return;
        };
        let pending = Pending::Blocks {
            request,
            download,
            first: blocks.start,
            count: blocks.end - blocks.start,
        };
        self.ensure_lane(target, ctx.now);
        let pending = match self.lanes.get_mut(&target) {
            Some(Lane::Up { jobs, .. }) => {
                let job = lane::Job {
                    request: lane_request(content, &pending),
                    pending,
                };
                match jobs.try_send(job) {
                    Ok(()) => return,
                    // The lane is full, or just ended (its end is on its way to the actor):
                    // libp2p.
                    Err(
                        mpsc::error::TrySendError::Full(job)
                        | mpsc::error::TrySendError::Closed(job),
                    ) => job.pending,
                }
            }
            Some(Lane::Opening { since, waiting }) if ctx.now < *since + LANE_WAIT => {
                waiting.push(pending);
                return;
            }
            _ => pending,
        };
        self.send_blocks_request(ctx, target, pending);
    }

    /// Sends a block request over libp2p (the download gone: the request fails).
    fn send_blocks_request(&mut self, ctx: &mut Ctx<'_>, target: libp2p::PeerId, pending: Pending) {
        let Pending::Blocks {
            request,
            download,
            first,
            count,
        } = pending
        else {
            return;
        };
        let Some(content) = self.swarms.get(&download).map(|s| s.content) else {
            fail_request(ctx, request);
            return;
        };
        self.ask(
            &target,
            Request::Blocks {
                content: *content.as_bytes(),
                first,
                count: count as u32,
            },
            pending,
        );
    }

    /// Block requests that waited for `peer`'s lane, or were sent on one that went down
    /// unanswered, go over libp2p while the peer is connected; else they fail.
    fn resend(&mut self, ctx: &mut Ctx<'_>, peer: libp2p::PeerId, requests: Vec<Pending>) {
        let connected = self.peers.contains_key(&peer) && !self.banned.contains(&peer);
        for pending in requests {
            match pending {
                Pending::Blocks { .. } if connected => self.send_blocks_request(ctx, peer, pending),
                Pending::Blocks { request, .. } => fail_request(ctx, request),
                _ => {}
            }
        }
    }

    /// Asks `peer` for a data lane unless lanes are off, it has one or is opening one, or its
    /// last one failed a short while ago.
    fn ensure_lane(&mut self, peer: libp2p::PeerId, now: Instant) {
        let due = match self.lanes.get(&peer) {
            None => true,
            Some(Lane::Off { until }) => *until <= now,
            Some(Lane::Opening { .. } | Lane::Up { .. }) => false,
        };
        if self.lanes_on && due {
            self.open_lane(peer, now);
        }
    }

    /// `peer` has no lane for a while: 30 s after a first failure, twice as long after each
    /// one in a row, up to [`LANE_BACKOFF_STEPS`] doublings.
    fn lane_failed(&mut self, peer: libp2p::PeerId, now: Instant) {
        let failures = self.lane_failures.entry(peer).or_default();
        let until = now + lane_wait(*failures);
        *failures += 1;
        self.lanes.insert(peer, Lane::Off { until });
    }

    /// Answers a peer's libp2p request (a peer that went away meanwhile gets nothing).
    fn respond(&mut self, channel: ResponseChannel<Response>, response: Response) {
        let _ = self
            .swarm
            .behaviour_mut()
            .blocks
            .send_response(channel, response);
    }

    /// Sends `request` to `peer` over libp2p; its answer is handled as `pending` says.
    fn ask(&mut self, peer: &libp2p::PeerId, request: Request, pending: Pending) {
        let sent = self
            .swarm
            .behaviour_mut()
            .blocks
            .send_request(peer, request);
        self.pending.insert(sent, pending);
    }

    /// Asks `peer` for a data lane: a fresh secret, over libp2p.
    fn open_lane(&mut self, peer: libp2p::PeerId, now: Instant) {
        let cipher = if self.lane_aes.contains(&peer) {
            Cipher::Aes256Gcm
        } else {
            Cipher::Aegis128L
        };
        self.ask_lane(peer, cipher);
        self.lanes.insert(
            peer,
            Lane::Opening {
                since: now,
                waiting: Vec::new(),
            },
        );
    }

    /// Sends `peer` a lane request for `cipher`, with a fresh secret.
    fn ask_lane(&mut self, peer: libp2p::PeerId, cipher: Cipher) {
        let secret: [u8; do_p2p::lane::SECRET_LEN] = rand::random();
        self.ask(
            &peer,
            Request::lane(cipher, secret),
            Pending::Lane { secret, cipher },
        );
    }

    /// A peer answered a lane request: the lane is opened to its address at the port it
    /// named; without a ticket, or without an IP address to reach it at, it has none.
    fn on_lane(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: libp2p::PeerId,
        (secret, cipher): ([u8; 32], Cipher),
        response: Response,
    ) {
        let waiting = match self.lanes.remove(&from) {
            Some(Lane::Opening { waiting, .. }) => waiting,
            // Not asked (or the peer is gone): nothing to open.
            other => {
                if let Some(lane) = other {
                    self.lanes.insert(from, lane);
                }
                return;
            }
        };
        let ip = self.peers.get(&from).and_then(|k| {
            k.addr.iter().find_map(|p| match p {
                Protocol::Ip4(ip) => Some(std::net::IpAddr::V4(ip)),
                Protocol::Ip6(ip) => Some(std::net::IpAddr::V6(ip)),
                _ => None,
            })
        });
        match (response, ip) {
            (Response::Lane { port, ticket }, Some(ip)) if !self.banned.contains(&from) => {
                let id = self.next_lane;
                self.next_lane += 1;
                let addr = std::net::SocketAddr::new(ip, port);
                let dial = lane::Dial {
                    addr,
                    cipher,
                    secret,
                    ticket,
                    idle: lane::LANE_IDLE,
                };
                let (jobs, _task) = lane::open(
                    from,
                    id,
                    dial,
                    self.lane_tx.clone(),
                    Arc::clone(&self.lane_counters),
                );
                let mut unsent = Vec::new();
                for pending in waiting {
                    let Pending::Blocks { download, .. } = &pending else {
                        continue;
                    };
                    match self.swarms.get(download).map(|s| s.content) {
                        Some(content) => {
                            let request = lane_request(content, &pending);
                            if let Err(
                                mpsc::error::TrySendError::Full(job)
                                | mpsc::error::TrySendError::Closed(job),
                            ) = jobs.try_send(lane::Job { request, pending })
                            {
                                unsent.push(job.pending);
                            }
                        }
                        None => unsent.push(pending),
                    }
                }
                self.lanes.insert(from, Lane::Up { id, jobs });
                self.resend(ctx, from, unsent);
            }
            _ => {
                debug!(peer = %from, "no data lane to this peer");
                if self.peers.contains_key(&from) {
                    self.lane_failed(from, ctx.now);
                }
                self.resend(ctx, from, waiting);
            }
        }
    }

    /// Block requests that waited too long for a lane being opened go over libp2p.
    fn lanes_waited_out(&mut self, ctx: &mut Ctx<'_>) {
        let late: Vec<(libp2p::PeerId, Vec<Pending>)> = self
            .lanes
            .iter_mut()
            .filter_map(|(peer, lane)| match lane {
                Lane::Opening { since, waiting }
                    if ctx.now >= *since + LANE_WAIT && !waiting.is_empty() =>
                {
                    Some((*peer, std::mem::take(waiting)))
                }
                _ => None,
            })
            .collect();
        for (peer, waiting) in late {
            self.resend(ctx, peer, waiting);
        }
    }

    /// Handles one event.
    pub(crate) fn handle(&mut self, event: P2pEvent, ctx: &mut Ctx<'_>) -> Option<Outcome> {
        match event {
            P2pEvent::Tick => {
                self.dial_due(ctx.now);
                self.polls += 1;
                let ask_dht = self.polls.is_multiple_of(PROVIDER_QUERY_POLLS);
                if ask_dht {
                    self.withdraw_gone(ctx.store);
                }
                let ids: Vec<DownloadId> = self.swarms.keys().copied().collect();
                for id in ids {
                    if self.swarms[&id].manifest.is_none() {
                        self.refresh_own_hashes(ctx, id);
                    }
                    if ask_dht {
                        self.find_providers(self.swarms[&id].content);
                    }
                    self.poll_peers(id);
                }
                self.serve_queued(ctx);
                self.lanes_waited_out(ctx);
                None
            }
            P2pEvent::SlotFree => {
                self.serve_queued(ctx);
                None
            }
            P2pEvent::Lane(LaneEvent::Answer {
                peer,
                pending,
                response,
            }) => {
                self.lane_failures.remove(&peer);
                self.on_response(peer, pending, response, ctx)
            }
            P2pEvent::Lane(LaneEvent::Down {
                peer,
                lane,
                lost,
                idle,
            }) => {
                if let Some(Lane::Up { id, .. }) = self.lanes.get(&peer)
                    && *id == lane
                {
                    if idle {
                        // Closed for want of work: the next request opens another at once.
                        self.lanes.remove(&peer);
                    } else {
                        self.lane_failed(peer, ctx.now);
                    }
                }
                self.resend(ctx, peer, lost);
                None
            }
            P2pEvent::Answer((channel, response, class, permit)) => {
                drop(permit);
                if let Response::Blocks { data, .. } = &response {
                    self.counters
                        .served_to(class)
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                self.respond(channel, response);
                self.serve_queued(ctx);
                None
            }
            P2pEvent::Swarm(event) => self.on_swarm(*event, ctx),
        }
    }

    fn on_swarm(
        &mut self,
        event: SwarmEvent<BehaviourEvent>,
        ctx: &mut Ctx<'_>,
    ) -> Option<Outcome> {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                let mut by_peer: HashMap<libp2p::PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in found {
                    by_peer.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in by_peer {
                    if self.banned.contains(&peer) {
                        continue;
                    }
                    let connected = self.swarm.is_connected(&peer);
                    self.dialer.found(ctx.now, peer, addrs, connected);
                    // A peer that dialed in before this node's mDNS saw it was counted as beyond
                    // the LAN: it is a LAN peer from now on.
                    if let Some(known) = self
                        .peers
                        .get_mut(&peer)
                        .filter(|k| k.class != PeerClass::Lan)
                    {
                        known.class = PeerClass::Lan;
                        info!(%peer, "peer found on the LAN");
                        ctx.engine.handle_input(
                            ctx.now,
                            Input::PeerAdded {
                                peer: known.id,
                                class: PeerClass::Lan,
                            },
                        );
                    }
                }
                self.dial_due(ctx.now);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Expired(gone))) => {
                for (peer, _) in gone {
                    if !self
                        .swarm
                        .behaviour()
                        .mdns
                        .as_ref()
                        .is_some_and(|m| m.discovered_nodes().any(|p| *p == peer))
                    {
                        debug!(%peer, "no longer on the LAN");
                        self.dialer.expired(&peer);
                        let _ = self.swarm.disconnect_peer_id(peer);
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                debug!(%peer, %error, "dial failed");
                if !self.swarm.is_connected(&peer) {
                    self.dialer.failed(ctx.now, &peer);
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                if self.banned.contains(&peer_id) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return None;
                }
                self.dialer.connected(&peer_id);
                if self.peers.contains_key(&peer_id) {
                    return None;
                }
                let id = PeerId(self.next_peer);
                self.next_peer += 1;
                let addr = endpoint.get_remote_address().clone();
                let on_lan = self
                    .swarm
                    .behaviour()
                    .mdns
                    .as_ref()
                    .is_some_and(|m| m.discovered_nodes().any(|p| *p == peer_id));
                // As DO counts them: a peer on the LAN is a LAN peer in every mode; beyond it, a
                // group member or an Internet peer.
                let class = match (on_lan, self.class, self.internet) {
                    (false, PeerClass::Group, _) => PeerClass::Group,
                    (false, _, true) => PeerClass::Internet,
                    _ => PeerClass::Lan,
                };
                let key = do_p2p::rank_key(&peer_id);
                self.peers.insert(
                    peer_id,
                    Known {
                        id,
                        addr,
                        class,
                        key,
                    },
                );
                self.by_engine.insert(id, peer_id);
                info!(peer = %peer_id, ?class, "peer connected");
                ctx.engine
                    .handle_input(ctx.now, Input::PeerAdded { peer: id, class });
                let ids: Vec<DownloadId> = self.swarms.keys().copied().collect();
                for download in ids {
                    self.poll_peers(download);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.dialer.disconnected(ctx.now, &peer_id);
                let lane = self.lanes.remove(&peer_id);
                self.lane_failures.remove(&peer_id);
                self.lane_aes.remove(&peer_id);
                if let Some(Known { id, .. }) = self.peers.remove(&peer_id) {
                    info!(peer = %peer_id, "peer gone");
                    self.by_engine.remove(&id);
                    for s in self.swarms.values_mut() {
                        s.polling.remove(&peer_id);
                        s.hashing.remove(&peer_id);
                        s.asking_co.remove(&peer_id);
                        s.asking_near.remove(&peer_id);
                        s.co_fetchers.remove(&peer_id);
                    }
                    ctx.engine
                        .handle_input(ctx.now, Input::PeerRemoved { peer: id });
                }
                // Its lane, if any, stops (what it had not answered fails), and requests that
                // waited for one being opened fail.
                if let Some(Lane::Opening { waiting, .. }) = lane {
                    self.resend(ctx, peer_id, waiting);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Blocks(event)) => {
                return self.on_blocks(event, ctx);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                self.learn_protocols(peer_id, &info.protocols, ctx);
                self.learn_addresses(peer_id, info.listen_addrs);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result:
                    kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                        providers,
                        ..
                    })),
                ..
            })) => {
                for peer in providers {
                    self.found_provider(ctx.now, peer);
                }
                self.dial_due(ctx.now);
            }
            _ => {}
        }
        None
    }

    /// A peer told the protocols it speaks: one whose block protocol is the first version is
    /// asked for no more blocks at once than that version takes.
    fn learn_protocols(
        &mut self,
        peer: libp2p::PeerId,
        protocols: &[libp2p::StreamProtocol],
        ctx: &mut Ctx<'_>,
    ) {
        let speaks = |name: &str| protocols.iter().any(|p| p.as_ref() == name);
        let Some(known) = self.peers.get(&peer) else {
            return;
        };
        if speaks(wire::PROTOCOL_V1) && !speaks(wire::PROTOCOL) {
            info!(%peer, "the peer speaks the first version of the block protocol");
            ctx.engine.handle_input(
                ctx.now,
                Input::PeerRequestLimit {
                    peer: known.id,
                    blocks: u64::from(wire::MAX_BLOCKS_PER_REQUEST_V1),
                },
            );
        }
    }

    /// A peer told the addresses it listens on: the DHT can route to it (a peer that dialed
    /// this node is otherwise known by its ephemeral port only). Loopback addresses are kept
    /// only from a peer on this host.
    fn learn_addresses(&mut self, peer: libp2p::PeerId, addrs: Vec<Multiaddr>) {
        let local_peer = self.peers.get(&peer).is_some_and(|k| is_loopback(&k.addr));
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        for addr in addrs {
            if local_peer || !is_loopback(&addr) {
                kad.add_address(&peer, addr);
            }
        }
    }

    /// The DHT named `peer` as a holder of a file this node wants: it is dialed (by the
    /// dialer's rules, at the addresses the DHT knows), unless connected already.
    fn found_provider(&mut self, now: Instant, peer: libp2p::PeerId) {
        if peer == *self.swarm.local_peer_id()
            || self.banned.contains(&peer)
            || self.swarm.is_connected(&peer)
        {
            return;
        }
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        // The DHT's addresses of the peer: its routing table's and those its queries heard.
        let addrs = kad
            .handle_pending_outbound_connection(
                ConnectionId::new_unchecked(0),
                Some(peer),
                &[],
                libp2p::core::Endpoint::Dialer,
            )
            .unwrap_or_default();
        if addrs.is_empty() {
            debug!(%peer, "a holder without a known address");
            return;
        }
        debug!(%peer, "found in the DHT");
        self.dialer.found(now, peer, addrs, false);
    }

    fn on_blocks(
        &mut self,
        event: request_response::Event<Request, Response>,
        ctx: &mut Ctx<'_>,
    ) -> Option<Outcome> {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                // A lane is offered at once: a ticket for the asker's secret.
                if let Some((secret, cipher)) = request.as_lane() {
                    let response = match (&self.lane_server, self.peers.get(&peer)) {
                        (Some(server), Some(known)) if !self.banned.contains(&peer) => {
                            let ticket = self.tickets.issue(secret, cipher, peer, known.class);
                            Response::Lane {
                                port: server.port,
                                ticket,
                            }
                        }
                        _ => Response::NotHere,
                    };
                    self.respond(channel, response);
                    return None;
                }
                // A peer that asks what this node holds of a file it downloads too is polled
                // in turn (on a LAN larger than the polled set, it comes first).
                if let Request::Status { content } = &request {
                    let content = ContentId::from_bytes(*content);
                    for s in self.swarms.values_mut().filter(|s| s.content == content) {
                        s.polled.asked_by(peer);
                    }
                }
                // What a download in progress collected is in memory: answered here, at once.
                if let Some(response) = self.answer_swarming(ctx.engine, &peer, &request) {
                    self.respond(channel, response);
                    return None;
                }
                if self.queue.len() >= UPLOAD_QUEUE {
                    self.respond(channel, Response::Busy);
                    return None;
                }
                self.queue.push_back((peer, request, channel));
                self.serve_queued(ctx);
            }
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(pending) = self.pending.remove(&request_id) {
                    return self.on_response(peer, pending, response, ctx);
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                debug!(%peer, %error, "peer request failed");
                let pending = self.pending.remove(&request_id);
                if let Some(Pending::Lane {
                    cipher: Cipher::Aegis128L,
                    ..
                }) = pending
                    && matches!(self.lanes.get(&peer), Some(Lane::Opening { .. }))
                {
                    // A peer that predates AEGIS-128L lanes fails the request: it is asked
                    // for the lane it knows (while the blocks waiting for the lane wait on).
                    debug!(%peer, "asking for an AES-256-GCM lane instead");
                    self.lane_aes.insert(peer);
                    self.ask_lane(peer, Cipher::Aes256Gcm);
                    return None;
                }
                if let Some(pending) = pending {
                    return self.on_response(peer, pending, Response::NotHere, ctx);
                }
            }
            _ => {}
        }
        None
    }

    /// Answers a `Hashes` or `Manifest` request for a file this node is downloading: the
    /// hashes it verified and the ones it collected from peers (every one, once it trusts a
    /// manifest), or its trusted manifest. Hashes so travel beyond one hop: in a crowd where
    /// each node sees part of the swarm, a node learns what its peers' peers verified, and,
    /// as always, trusts the set only once it merges to the content id. `None`: not such a
    /// request, or no such download (the cache answers). A `CoFetchers` request is answered
    /// here too, from the engine ([`Engine::co_fetchers_for`] the asker), and a `Near` one
    /// ([`Engine::held_by_peers`]): "none" when this node does not download the file.
    fn answer_swarming(
        &self,
        engine: &mut Engine,
        peer: &libp2p::PeerId,
        request: &Request,
    ) -> Option<Response> {
        let (Request::Hashes { content, .. }
        | Request::Manifest { content }
        | Request::CoFetchers { content }
        | Request::Near { content }) = request
        else {
            return None;
        };
        let content = ContentId::from_bytes(*content);
        let found = self.swarms.iter().find(|(_, s)| s.content == content);
        if let Request::Near { .. } = request {
            let near =
                found.map_or_else(RangeSet::new, |(&id, _)| engine.held_by_peers(id).to_set());
            return Some(Response::Near(
                near.runs().map(|r| (r.start, r.end)).collect(),
            ));
        }
        if let Request::CoFetchers { .. } = request {
            let keys = found.map_or_else(Vec::new, |(&id, _)| {
                engine.co_fetchers_for(id, do_p2p::rank_key(peer))
            });
            return Some(Response::CoFetchers(keys));
        }
        let s = found?.1;
        Some(match (request, &s.manifest) {
            (Request::Manifest { .. }, Some(m)) => Response::Manifest(m.encode()),
            (Request::Manifest { .. }, None) => Response::NotHere,
            (Request::Hashes { first, .. }, Some(m)) => Response::Hashes {
                len: s.len,
                blocks: (*first..)
                    .zip(m.blocks().iter().skip(*first as usize))
                    .take(MAX_HASHES)
                    .map(|(b, h)| (b, h.0))
                    .collect(),
            },
            (Request::Hashes { first, .. }, None) => Response::Hashes {
                len: s.len,
                blocks: (*first..)
                    .zip(s.hashes.iter().skip(*first as usize))
                    .filter_map(|(b, h)| h.map(|h| (b, h.0)))
                    .take(MAX_HASHES)
                    .collect(),
            },
            _ => unreachable!("matched above"),
        })
    }

    /// Dials the peers found whose turn it is (see [`Dialer`]).
    fn dial_due(&mut self, now: Instant) {
        for (peer, mut addrs) in self.dialer.due(now) {
            debug!(%peer, "dialing");
            // The preferred transport first, one address at a time (the swarm would race them
            // all, and the first to connect would win whatever its transport).
            addrs.sort_by_key(|a| crate::Transport::of(a) != self.dial_first);
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .override_dial_concurrency_factor(std::num::NonZeroU8::MIN)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                debug!(%peer, error = %e, "dial failed");
                self.dialer.failed(now, &peer);
            }
        }
    }

    /// Sends `peer` a request about `download` unless one like it is unanswered (`asking`
    /// picks the download's set of peers asked).
    fn ask_once(
        &mut self,
        download: DownloadId,
        peer: libp2p::PeerId,
        (request, pending): (Request, Pending),
        asking: fn(&mut Swarming) -> &mut HashSet<libp2p::PeerId>,
    ) {
        if self
            .swarms
            .get_mut(&download)
            .is_some_and(|s| asking(s).insert(peer))
        {
            self.ask(&peer, request, pending);
        }
    }

    /// Starts answering queued requests while upload slots are free.
    fn serve_queued(&mut self, ctx: &mut Ctx<'_>) {
        while !self.queue.is_empty() {
            let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
                return;
            };
            let Some((peer, request, channel)) = self.queue.pop_front() else {
                return;
            };
            debug!(%peer, ?request, "peer request");
            let class = self.peers.get(&peer).map_or(self.class, |k| k.class);
            let (store, tx, active, shaper) = (
                Arc::clone(ctx.store),
                self.answers_tx.clone(),
                Arc::clone(&self.active),
                self.shaper.clone(),
            );
            // Claims go to the group's members only; in LAN mode anyone may ask.
            let claims = self.class == PeerClass::Group;
            ctx.tasks.spawn(async move {
                let response =
                    tokio::task::spawn_blocking(move || answer(&store, &active, request, claims))
                        .await
                        .unwrap_or(Response::NotHere);
                if let (Some(shaper), Response::Blocks { data, .. }) = (&shaper, &response) {
                    let wait = shaper
                        .lock()
                        .expect("shaper")
                        .delay(Instant::now(), data.len() as u64);
                    tokio::time::sleep(wait).await;
                }
                let _ = tx.send((channel, response, class, permit)).await;
            });
        }
    }

    fn on_response(
        &mut self,
        from: libp2p::PeerId,
        pending: Pending,
        response: Response,
        ctx: &mut Ctx<'_>,
    ) -> Option<Outcome> {
        match pending {
            Pending::Manifest { download } => return self.on_manifest(download, response),
            Pending::Claim { download } => return self.on_claim(download, response),
            Pending::Lane { secret, cipher } => {
                self.on_lane(ctx, from, (secret, cipher), response);
                return None;
            }
            _ => {}
        }
        let Some((peer, class)) = self.peers.get(&from).map(|k| (k.id, k.class)) else {
            if let Pending::Blocks { request, .. } = pending {
                fail_request(ctx, request);
            }
            return None;
        };
        match pending {
            Pending::Manifest { .. } | Pending::Claim { .. } | Pending::Lane { .. } => {
                unreachable!("handled above")
            }
            Pending::Status { download } => {
                let s = self.swarms.get_mut(&download)?;
                s.polling.remove(&from);
                let Response::Status { have, fetching } = response else {
                    return None;
                };
                let blocks = runs_to_set(&have, block_count(s.len));
                // A peer that may serve this download gets a lane before it is asked for blocks.
                let source = fetching || !have.is_empty();
                s.polled.answered(from, source);
                // Until the manifest is trusted, every peer is asked for the hashes it can
                // tell: of what it verified, and of what it collected from its own peers.
                let first_lacking = s
                    .manifest
                    .is_none()
                    .then(|| s.hashes.iter().position(Option::is_none))
                    .flatten();
                let new_co = fetching && s.co_fetchers.insert(from);
                let content = s.content;
                if new_co {
                    debug!(peer = %from, download = download.0, "peer fetches this file too");
                    ctx.engine.handle_input(
                        ctx.now,
                        Input::PeerFetching {
                            id: download,
                            peer,
                            key: do_p2p::rank_key(&from),
                        },
                    );
                }
                ctx.engine.handle_input(
                    ctx.now,
                    Input::PeerHas {
                        id: download,
                        peer,
                        blocks,
                    },
                );
                if source {
                    self.ensure_lane(from, ctx.now);
                }
                if let Some(first) = first_lacking
                    && !self.swarms[&download].hashing.contains(&from)
                {
                    self.ask_hashes(download, from, content, first as u64);
                }
                // A co-fetcher tells whom it splits the origin's work with (a node that sees
                // part of a crowd so cuts the work as a wider view would), and what its own
                // peers hold, which can come through it.
                if fetching {
                    let content = *content.as_bytes();
                    let co = (
                        Request::CoFetchers { content },
                        Pending::CoFetchers { download },
                    );
                    self.ask_once(download, from, co, |s| &mut s.asking_co);
                    let near = (Request::Near { content }, Pending::Near { download });
                    self.ask_once(download, from, near, |s| &mut s.asking_near);
                }
            }
            Pending::Hashes { download } => {
                let s = self.swarms.get_mut(&download)?;
                s.hashing.remove(&from);
                let Response::Hashes { len, blocks } = response else {
                    return None;
                };
                if len != s.len || s.manifest.is_some() {
                    return None;
                }
                let full = blocks.len() >= MAX_HASHES;
                let last = blocks.last().map(|&(b, _)| b);
                for (b, hash) in blocks {
                    if let Some(slot) = s.hashes.get_mut(b as usize)
                        && slot.is_none()
                    {
                        *slot = Some(BlockHash(hash));
                    }
                }
                let content = s.content;
                self.check_manifest(ctx, download);
                if let (true, Some(last), false) = (full, last, self.is_trusted(download)) {
                    self.ask_hashes(download, from, content, last + 1);
                }
            }
            Pending::CoFetchers { download } => {
                let s = self.swarms.get_mut(&download)?;
                s.asking_co.remove(&from);
                if let Response::CoFetchers(keys) = response {
                    let co = Input::PeerCoFetchers {
                        id: download,
                        peer,
                        keys,
                    };
                    ctx.engine.handle_input(ctx.now, co);
                }
            }
            Pending::Near { download } => {
                let s = self.swarms.get_mut(&download)?;
                s.asking_near.remove(&from);
                if let Response::Near(runs) = response {
                    let blocks = BlockBits::from_set(&runs_to_set(&runs, block_count(s.len)));
                    let near = Input::PeerNear {
                        id: download,
                        peer,
                        blocks,
                    };
                    ctx.engine.handle_input(ctx.now, near);
                }
            }
            Pending::Blocks {
                request,
                download,
                first,
                count,
            } => {
                let Response::Blocks { first: got, data } = response else {
                    fail_request(ctx, request);
                    return None;
                };
                let Some(s) = self.swarms.get(&download) else {
                    fail_request(ctx, request);
                    return None;
                };
                let (store, io_tx, entry, len) =
                    (Arc::clone(ctx.store), ctx.io_tx.clone(), s.entry, s.len);
                let counters = Arc::clone(&self.counters);
                let manifest = s.manifest.clone();
                let writes = Arc::clone(&s.writes);
                ctx.tasks.spawn(async move {
                    let outcome = tokio::task::spawn_blocking(move || {
                        let blocks = first..first + count;
                        match manifest {
                            Some(manifest) => {
                                let to = Target {
                                    store: &store,
                                    entry,
                                    writes: &writes,
                                };
                                write_peer_blocks(&to, &manifest, blocks, got, &data)
                                    .into_events(request, &counters, class)
                            }
                            None => {
                                hash_unchecked(request, download, len, blocks, got, data, class)
                            }
                        }
                    })
                    .await;
                    let events = outcome.unwrap_or_else(|_| {
                        vec![IoEvent::FetchEnded {
                            request,
                            result: Err(Failure::Transient(DO_E_PEER_REQUEST_FAILED)),
                        }]
                    });
                    for event in events {
                        let _ = io_tx.send(event).await;
                    }
                });
            }
        }
        None
    }

    /// A member's answer to a claim request: the first content id claimed wins.
    fn on_claim(&mut self, download: DownloadId, response: Response) -> Option<Outcome> {
        let claiming = self.claims.get_mut(&download)?;
        claiming.asked -= 1;
        let content = match response {
            Response::Claimed { content } => Some(ContentId::from_bytes(content)),
            _ => None,
        };
        if content.is_none() && claiming.asked > 0 {
            return None;
        }
        let Claiming { request, found, .. } = self.claims.remove(&download)?;
        if let Some(content) = &content {
            info!(download = download.0, %content, "a group member claims the content id");
        }
        Some(Outcome::Claimed {
            download,
            request,
            found,
            content,
        })
    }

    /// A peer's answer to a manifest request made because the origin was unreachable.
    fn on_manifest(&mut self, download: DownloadId, response: Response) -> Option<Outcome> {
        let stat = self.peer_stats.get_mut(&download)?;
        stat.asked -= 1;
        let manifest = match response {
            Response::Manifest(bytes) => Manifest::decode(&bytes)
                .ok()
                .filter(|m| m.root() == stat.content),
            _ => None,
        };
        match manifest {
            Some(manifest) => {
                let stat = self.peer_stats.remove(&download)?;
                info!(
                    download = download.0,
                    "a peer has the file: going on without the origin"
                );
                Some(Outcome::PeerStat {
                    download,
                    request: stat.request,
                    manifest: Arc::new(manifest),
                })
            }
            None if stat.asked == 0 => {
                let stat = self.peer_stats.remove(&download)?;
                Some(Outcome::NoPeerStat {
                    request: stat.request,
                    failure: stat.failure,
                })
            }
            None => None,
        }
    }

    /// Writes a peer's answer that came before the manifest was trusted into the data file.
    /// While the manifest is still unknown, the blocks stay unrecorded and their hashes wait
    /// for the check. If it came meanwhile, they are checked against it at once, and the good
    /// ones are recorded (a block whose answer raced the manifest is not fetched twice). The
    /// caller made sure the request is live.
    pub(crate) fn write_unchecked(
        &mut self,
        store: &Store,
        download: DownloadId,
        offset: u64,
        data: &[u8],
        blocks: &[(u64, u64, BlockHash)],
        class: PeerClass,
    ) -> UncheckedWrite {
        let Some(s) = self.swarms.get_mut(&download) else {
            return UncheckedWrite::Failed;
        };
        let received = self.counters.received_from(class);
        let Some(manifest) = &s.manifest else {
            let written = store.writer(s.entry).and_then(|w| {
                let _one = s.writes.lock().unwrap_or_else(PoisonError::into_inner);
                w.write_at(offset, data)
            });
            if let Err(e) = written {
                warn!(download = download.0, error = %e, "writing peer blocks failed");
                return UncheckedWrite::Failed;
            }
            for &(b, _, hash) in blocks {
                s.unchecked.insert(b, hash);
            }
            received.fetch_add(data.len() as u64, Ordering::Relaxed);
            return UncheckedWrite::Unchecked;
        };
        // The good blocks up to the first bad one are kept, as for a checked answer.
        let good = blocks
            .iter()
            .take_while(|&&(b, _, hash)| manifest.blocks().get(b as usize) == Some(&hash))
            .count();
        let corrupt = blocks.get(good).map(|&(b, _, _)| BlockIndex(b));
        let kept: u64 = blocks[..good].iter().map(|&(_, n, _)| n).sum();
        let record: Vec<(BlockIndex, BlockHash)> = blocks[..good]
            .iter()
            .map(|&(b, _, hash)| (BlockIndex(b), hash))
            .collect();
        let done = store
            .writer(s.entry)
            .and_then(|w| w.write_at(offset, &data[..kept as usize]))
            .and_then(|()| store.commit_blocks(s.entry, &record));
        if let Err(e) = done {
            warn!(download = download.0, error = %e, "writing peer blocks failed");
            return UncheckedWrite::Failed;
        }
        received.fetch_add(kept, Ordering::Relaxed);
        UncheckedWrite::Checked {
            good: blocks[..good].iter().map(|&(b, n, _)| (b, n)).collect(),
            corrupt,
        }
    }

    fn is_trusted(&self, download: DownloadId) -> bool {
        self.swarms
            .get(&download)
            .is_some_and(|s| s.manifest.is_some())
    }

    fn ask_hashes(
        &mut self,
        download: DownloadId,
        peer: libp2p::PeerId,
        content: ContentId,
        first: u64,
    ) {
        self.ask(
            &peer,
            Request::Hashes {
                content: *content.as_bytes(),
                first,
            },
            Pending::Hashes { download },
        );
        if let Some(s) = self.swarms.get_mut(&download) {
            s.hashing.insert(peer);
        }
    }

    /// Asks the download's polled peers (every connected peer, up to its bound: see
    /// [`Polled`]) not already asked what they hold of its file.
    fn poll_peers(&mut self, download: DownloadId) {
        let connected: HashSet<libp2p::PeerId> = self.peers.keys().copied().collect();
        let rotate = self.polls.is_multiple_of(crate::POLL_ROTATION);
        let Some(s) = self.swarms.get_mut(&download) else {
            return;
        };
        let content = *s.content.as_bytes();
        let ring =
            if self.ring_peers > 0 && self.poll_peers > 0 && connected.len() > self.poll_peers {
                ring_neighbours(&self.peers, self.key, s.len, self.ring_peers)
            } else {
                Vec::new()
            };
        let targets: Vec<libp2p::PeerId> = s
            .polled
            .choose(&connected, &ring, rotate, &mut rand::rng())
            .into_iter()
            .filter(|p| !s.polling.contains(p))
            .collect();
        for peer in targets {
            self.ask(
                &peer,
                Request::Status { content },
                Pending::Status { download },
            );
            self.swarms
                .get_mut(&download)
                .expect("checked above")
                .polling
                .insert(peer);
        }
    }

    /// Adds the hashes of the download's own verified blocks, then checks the manifest.
    fn refresh_own_hashes(&mut self, ctx: &mut Ctx<'_>, download: DownloadId) {
        let Some(s) = self.swarms.get_mut(&download) else {
            return;
        };
        match ctx.store.blocks(s.entry) {
            Ok(blocks) => {
                for (b, hash) in blocks {
                    if let Some(slot) = s.hashes.get_mut(b.0 as usize) {
                        // Own blocks are the truth for this node: they override claims.
                        *slot = Some(hash);
                    }
                }
            }
            Err(e) => warn!(error = %e, "reading own block hashes failed"),
        }
        self.check_manifest(ctx, download);
    }

    /// Once every block has a hash, checks that they merge to the content id: then the
    /// manifest is trusted and peers may be asked for blocks. If they do not, some peer lied:
    /// every claim is dropped and collected again.
    fn check_manifest(&mut self, ctx: &mut Ctx<'_>, download: DownloadId) {
        let Some(s) = self.swarms.get_mut(&download) else {
            return;
        };
        if s.manifest.is_some() || s.hashes.iter().any(Option::is_none) {
            return;
        }
        let hashes: Vec<BlockHash> = s.hashes.iter().map(|h| h.expect("all present")).collect();
        match Manifest::new(s.len, hashes) {
            Ok(m) if m.root() == s.content => {
                info!(
                    download = download.0,
                    "manifest trusted: peers' blocks can be verified"
                );
                let unchecked = std::mem::take(&mut s.unchecked);
                let (mut good, mut refuted) = (Vec::new(), RangeSet::new());
                for (b, hash) in unchecked {
                    if m.blocks().get(b as usize) == Some(&hash) {
                        good.push((BlockIndex(b), hash));
                    } else {
                        refuted.insert(b, b + 1);
                    }
                }
                s.manifest = Some(Arc::new(m));
                if !refuted.is_empty() {
                    warn!(
                        download = download.0,
                        good = good.len(),
                        refuted = refuted.count(),
                        "blocks peers sent before the manifest was trusted fail it"
                    );
                } else if !good.is_empty() {
                    info!(
                        download = download.0,
                        good = good.len(),
                        refuted = refuted.count(),
                        "blocks from peers that came before the manifest checked"
                    );
                }
                // The good ones are recorded: their bytes are in place since they came. If
                // that fails, they are lost and fetched again.
                let lost = match ctx.store.commit_blocks(s.entry, &good) {
                    Ok(()) => RangeSet::new(),
                    Err(e) => {
                        warn!(download = download.0, error = %e, "recording checked blocks failed");
                        good.iter().map(|(b, _)| b.0..b.0 + 1).collect()
                    }
                };
                let trusted = Input::ManifestTrusted {
                    id: download,
                    refuted,
                    lost,
                };
                ctx.engine.handle_input(ctx.now, trusted);
            }
            _ => {
                warn!(
                    download = download.0,
                    "block hashes from peers do not merge to the content id; collecting again"
                );
                s.hashes.iter_mut().for_each(|h| *h = None);
            }
        }
    }
}

/// What a download needs to join the swarm of its file.
pub(crate) struct Join {
    pub(crate) content: ContentId,
    pub(crate) entry: EntryId,
    pub(crate) len: u64,
    pub(crate) fetching: bool,
    /// A manifest already trusted (from a peer, checked against the content id).
    pub(crate) manifest: Option<Arc<Manifest>>,
}

/// True for an address on the loopback interface.
fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// How long a peer goes without a lane after `failures` lanes to it failed in a row and one
/// more did.
fn lane_wait(failures: u32) -> Duration {
    LANE_RETRY * 2u32.pow(failures.min(LANE_BACKOFF_STEPS))
}

/// The lane request for a block request about `content`.
fn lane_request(content: ContentId, pending: &Pending) -> do_p2p::lane::LaneRequest {
    let (first, count) = match pending {
        Pending::Blocks { first, count, .. } => (*first, *count),
        _ => (0, 0),
    };
    do_p2p::lane::LaneRequest {
        content: *content.as_bytes(),
        first,
        count: count as u32,
    }
}

fn fail_request(ctx: &mut Ctx<'_>, request: RequestId) {
    let _ = ctx.io_tx.try_send(IoEvent::FetchEnded {
        request,
        result: Err(Failure::Transient(DO_E_PEER_REQUEST_FAILED)),
    });
}

fn runs_to_set(runs: &[(u64, u64)], blocks: u64) -> RangeSet {
    let mut set = RangeSet::new();
    for &(start, end) in runs {
        let end = end.min(blocks);
        if start < end {
            set.insert(start, end);
        }
    }
    set
}

/// What [`P2p::write_unchecked`] did with a peer's answer that came before the manifest.
pub(crate) enum UncheckedWrite {
    /// Written, unrecorded, waiting for the manifest.
    Unchecked,
    /// The manifest came meanwhile: these blocks (index, size) passed it and are recorded;
    /// `corrupt` is the first that failed it, if any.
    Checked {
        good: Vec<(u64, u64)>,
        corrupt: Option<BlockIndex>,
    },
    /// Nothing kept (the write failed, or the download is gone): the blocks stay owed.
    Failed,
}

/// What became of a peer's answer to a block request.
struct Written {
    /// Blocks verified, written and recorded, with their sizes.
    good: Vec<(u64, u64)>,
    /// The first block that failed verification (the peer is banned).
    corrupt: Option<u64>,
    /// Writing or recording failed.
    failed: Option<u32>,
}

impl Written {
    fn into_events(
        self,
        request: RequestId,
        counters: &Counters,
        class: PeerClass,
    ) -> Vec<IoEvent> {
        let mut events: Vec<IoEvent> = self
            .good
            .iter()
            .map(|&(block, bytes)| {
                counters
                    .received_from(class)
                    .fetch_add(bytes, Ordering::Relaxed);
                IoEvent::PeerBlock {
                    request,
                    block: BlockIndex(block),
                    bytes,
                    class,
                }
            })
            .collect();
        if let Some(block) = self.corrupt {
            events.push(IoEvent::PeerCorrupt {
                request,
                block: BlockIndex(block),
            });
        }
        let result = match self.failed {
            Some(code) => Err(Failure::Transient(code)),
            None => Ok(()),
        };
        events.push(IoEvent::FetchEnded { request, result });
        events
    }
}

/// The files among `providing` that are neither being fetched (`fetching`) nor held complete
/// in `store`. A store that cannot be read withdraws nothing.
fn withdrawn(
    providing: &HashSet<ContentId>,
    fetching: &HashSet<ContentId>,
    store: &Store,
) -> Vec<ContentId> {
    providing
        .iter()
        .filter(|c| !fetching.contains(c))
        .filter(|c| match store.lookup_content(c) {
            Ok(Some((_, meta))) => !meta.complete,
            Ok(None) => true,
            Err(_) => false,
        })
        .copied()
        .collect()
}

/// Verifies each block of a peer's answer against the trusted manifest, writes the good ones
/// at their offsets and records them; stops at the first bad one. An answer for other blocks
/// than asked, or of the wrong size, is bad.
/// Where a download's blocks go: its cache entry, and the lock its writes take.
struct Target<'a> {
    store: &'a Store,
    entry: EntryId,
    writes: &'a Mutex<()>,
}

/// The LAN peers among `peers` that are ring neighbours of the node of rank key `own` on the
/// split ring of a file of `len` bytes: for each of its points, the first `per_point` peers
/// whose points follow it.
fn ring_neighbours(
    peers: &HashMap<libp2p::PeerId, Known>,
    own: u64,
    len: u64,
    per_point: usize,
) -> Vec<libp2p::PeerId> {
    let lan: HashMap<u64, libp2p::PeerId> = peers
        .iter()
        .filter(|(_, k)| k.class == PeerClass::Lan)
        .map(|(p, k)| (k.key, *p))
        .collect();
    let keys: Vec<u64> = lan.keys().copied().collect();
    SplitRing::new(&keys, block_count(len))
        .successors(own, per_point)
        .into_iter()
        .map(|k| lan[&k])
        .collect()
}

fn write_peer_blocks(
    to: &Target<'_>,
    manifest: &Manifest,
    blocks: std::ops::Range<u64>,
    first: u64,
    data: &[u8],
) -> Written {
    let mut written = Written {
        good: Vec::new(),
        corrupt: None,
        failed: None,
    };
    if first != blocks.start {
        written.corrupt = Some(blocks.start);
        return written;
    }
    let Target {
        store,
        entry,
        writes,
    } = *to;
    let writer = match store.writer(entry) {
        Ok(w) => w,
        Err(e) => {
            written.failed = Some(e.hresult());
            return written;
        }
    };
    let len = manifest.len();
    let mut at = 0usize;
    let mut record = Vec::new();
    for b in blocks.clone() {
        let r = block_range(len, BlockIndex(b));
        let bytes = data.get(at..at + r.len() as usize);
        if bytes.is_none_or(|bytes| manifest.verify_block(BlockIndex(b), bytes).is_err()) {
            written.corrupt = Some(b);
            break;
        }
        record.push((BlockIndex(b), manifest.blocks()[b as usize]));
        written.good.push((b, r.len()));
        at += r.len() as usize;
    }
    if written.corrupt.is_none() && at != data.len() {
        // Extra bytes after the last block: the peer does not follow the protocol.
        written.corrupt = Some(blocks.end - 1);
    }
    // The good blocks are contiguous: one write for all of them (a write per block took the
    // file's lock once per 64 KiB, and writers of other answers spun on it meanwhile).
    let written_ok = match record.first() {
        Some(&(b, _)) => {
            let _one = writes.lock().unwrap_or_else(PoisonError::into_inner);
            writer.write_at(block_range(len, b).start, &data[..at])
        }
        None => Ok(()),
    };
    if let Err(e) = written_ok.and_then(|()| store.commit_blocks(entry, &record)) {
        written.good.clear();
        written.failed = Some(e.hresult());
    }
    written
}

/// Hashes the blocks of a peer's answer that came before any manifest was trusted, for the
/// actor to write (see [`P2p::write_unchecked`]). An answer for other blocks than asked, or of
/// the wrong size, is bad: the peer is banned.
fn hash_unchecked(
    request: RequestId,
    download: DownloadId,
    len: u64,
    blocks: std::ops::Range<u64>,
    first: u64,
    data: Vec<u8>,
    class: PeerClass,
) -> Vec<IoEvent> {
    let span = |b: u64| block_range(len, BlockIndex(b));
    let inside: Vec<u64> = blocks.clone().filter(|&b| b < block_count(len)).collect();
    let expected: u64 = inside.iter().map(|&b| span(b).len()).sum();
    let end = IoEvent::FetchEnded {
        request,
        result: Ok(()),
    };
    if first != blocks.start || data.len() as u64 != expected || expected == 0 {
        let block = BlockIndex(blocks.start);
        return vec![IoEvent::PeerCorrupt { request, block }, end];
    }
    let offset = span(blocks.start).start;
    let hashed = inside
        .into_iter()
        .map(|b| {
            let r = span(b);
            let bytes = &data[(r.start - offset) as usize..(r.end - offset) as usize];
            (b, r.len(), hash_block(len, BlockIndex(b), bytes))
        })
        .collect();
    vec![
        IoEvent::PeerBlocksUnchecked {
            request,
            download,
            offset,
            data,
            blocks: hashed,
            class,
        },
        end,
    ]
}

/// Answers one request from the cache: verified bytes only, of complete files or of downloads
/// in progress.
pub(crate) fn answer(
    store: &Store,
    active: &ActiveMap,
    request: Request,
    claims: bool,
) -> Response {
    let content = match &request {
        Request::Manifest { content }
        | Request::Have { content }
        | Request::Blocks { content, .. }
        | Request::Status { content }
        | Request::Hashes { content, .. }
        | Request::CoFetchers { content }
        | Request::Near { content } => ContentId::from_bytes(*content),
        // (The actor answers lane requests at once.)
        Request::Lane { .. } | Request::AegisLane { .. } => return Response::NotHere,
        Request::Claim { .. } if !claims => return Response::NotHere,
        Request::Claim {
            url,
            len,
            etag,
            last_modified,
        } => return claim(store, url, *len, etag.as_deref(), last_modified.as_deref()),
    };
    let in_progress = active.lock().expect("active map").get(&content).copied();
    let (id, len, fetching, complete) = match in_progress {
        Some(a) => (a.entry, a.len, a.fetching, false),
        None => match store.lookup_content(&content) {
            Ok(Some((id, meta))) if meta.complete => (id, meta.len, false, true),
            Ok(_) => return Response::NotHere,
            Err(e) => {
                warn!(error = %e, "cache lookup for a peer failed");
                return Response::NotHere;
            }
        },
    };
    let runs = |set: RangeSet| set.runs().map(|r| (r.start, r.end)).collect::<Vec<_>>();
    let result = match request {
        Request::Manifest { .. } if complete => store.blocks(id).map(|blocks| {
            let hashes: Vec<_> = blocks.into_iter().map(|(_, h)| h).collect();
            match Manifest::new(len, hashes) {
                Ok(m) if m.root() == content => Response::Manifest(m.encode()),
                _ => Response::NotHere,
            }
        }),
        // (The actor answers `CoFetchers` and `Near` for downloads in progress: none here.)
        Request::Manifest { .. }
        | Request::Claim { .. }
        | Request::CoFetchers { .. }
        | Request::Near { .. }
        | Request::Lane { .. }
        | Request::AegisLane { .. } => Ok(Response::NotHere),
        Request::Have { .. } => store.verified(id).map(|set| Response::Have(runs(set))),
        Request::Status { .. } => store.verified(id).map(|set| Response::Status {
            have: runs(set),
            fetching,
        }),
        Request::Hashes { first, .. } => store.blocks(id).map(|blocks| Response::Hashes {
            len,
            blocks: blocks
                .into_iter()
                .filter(|(b, _)| b.0 >= first)
                .take(MAX_HASHES)
                .map(|(b, h)| (b.0, h.0))
                .collect(),
        }),
        Request::Blocks { first, count, .. } => {
            let count = u64::from(count).min(block_count(len).saturating_sub(first));
            store
                .read_verified(id, first, count)
                .map(|data| match data {
                    Some(data) => Response::Blocks { first, data },
                    None => Response::NotHere,
                })
        }
    };
    result.unwrap_or_else(|e| {
        warn!(error = %e, "answering a peer failed");
        Response::NotHere
    })
}

/// The content id of this node's complete copy of `url` in the version described (at least
/// one validator must match: a length alone does not identify a version).
fn claim(
    store: &Store,
    url: &str,
    len: u64,
    etag: Option<&str>,
    last_modified: Option<&str>,
) -> Response {
    let content = match store.lookup_url(url) {
        Ok(Some((_, meta))) if meta.complete && meta.same_version(len, etag, last_modified) => meta
            .content_id
            .as_deref()
            .and_then(|hex| hex.parse::<ContentId>().ok()),
        Ok(_) => None,
        Err(e) => {
            warn!(error = %e, "cache lookup for a claim failed");
            None
        }
    };
    match content {
        Some(content) => Response::Claimed {
            content: *content.as_bytes(),
        },
        None => Response::NotHere,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use do_content::{BLOCK_SIZE, BlockIndex, Manifest};
    use do_store::EntryMeta;

    use super::*;

    /// Where blocks of `entry` are written, with a lock of its own.
    fn target(store: &Store, entry: EntryId) -> Target<'_> {
        static WRITES: Mutex<()> = Mutex::new(());
        Target {
            store,
            entry,
            writes: &WRITES,
        }
    }

    /// A cache entry for `url` holding `data`, complete if `finish`; its content id.
    pub(crate) fn entry(
        store: &Store,
        url: &str,
        data: &[u8],
        finish: bool,
    ) -> (EntryId, ContentId) {
        let meta = EntryMeta::new(url, data.len() as u64, None, None);
        let id = store.create_entry(meta).unwrap();
        let manifest = Manifest::from_bytes(data);
        store.writer(id).unwrap().write_at(0, data).unwrap();
        let blocks: Vec<_> = manifest
            .blocks()
            .iter()
            .enumerate()
            .map(|(i, h)| (BlockIndex(i as u64), *h))
            .collect();
        store.commit_blocks(id, &blocks).unwrap();
        if finish {
            store.finish(id, &manifest).unwrap();
        }
        (id, manifest.root())
    }

    #[test]
    fn a_peer_whose_lanes_keep_failing_waits_longer_for_the_next_one() {
        let waits: Vec<u64> = [0, 1, 2, 3, 4, 5, 40]
            .into_iter()
            .map(|f| lane_wait(f).as_secs())
            .collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 480, 480]);
    }

    #[test]
    fn files_no_longer_held_nor_fetched_are_withdrawn_from_the_dht() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), do_store::Config::default()).unwrap();
        let (_, held) = entry(&store, "http://o/held", b"held", true);
        let (evicted_id, evicted) = entry(&store, "http://o/evicted", b"evicted", true);
        let (_, partial) = entry(&store, "http://o/partial", b"partial", false);
        let (_, fetching) = entry(&store, "http://o/fetching", b"fetching", false);
        store.delete(evicted_id).unwrap();
        let providing: HashSet<ContentId> = [held, evicted, partial, fetching].into();
        let mut gone = withdrawn(&providing, &[fetching].into(), &store);
        gone.sort_by_key(|c| c.to_string());
        let mut expected = vec![evicted, partial];
        expected.sort_by_key(|c| c.to_string());
        assert_eq!(gone, expected);
    }

    /// A file of four whole blocks and a short fifth one, its manifest, and a store with an
    /// empty entry for it.
    fn setup() -> (tempfile::TempDir, Store, EntryId, Vec<u8>, Manifest) {
        let len = 4 * BLOCK_SIZE + 1000;
        let file: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let manifest = Manifest::from_bytes(&file);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), do_store::Config::default()).unwrap();
        let entry = store
            .create_entry(EntryMeta::new("http://o/f", len, None, None))
            .unwrap();
        (dir, store, entry, file, manifest)
    }

    fn bytes(file: &[u8], blocks: std::ops::Range<u64>) -> Vec<u8> {
        let len = file.len() as u64;
        let start = block_range(len, BlockIndex(blocks.start)).start as usize;
        let end = block_range(len, BlockIndex(blocks.end - 1)).end as usize;
        file[start..end].to_vec()
    }

    fn on_disk(store: &Store, entry: EntryId) -> Vec<u8> {
        std::fs::read(store.data_path(entry)).unwrap()
    }

    #[test]
    fn good_blocks_are_written_and_recorded() {
        let (_dir, store, entry, file, manifest) = setup();
        let w = write_peer_blocks(
            &target(&store, entry),
            &manifest,
            1..5,
            1,
            &bytes(&file, 1..5),
        );
        assert_eq!((w.corrupt, w.failed), (None, None));
        let sizes = [BLOCK_SIZE, BLOCK_SIZE, BLOCK_SIZE, 1000];
        assert_eq!(w.good, (1..5).zip(sizes).collect::<Vec<_>>());
        assert_eq!(
            store.verified(entry).unwrap(),
            std::iter::once(1..5).collect()
        );
        assert_eq!(
            on_disk(&store, entry)[BLOCK_SIZE as usize..],
            file[BLOCK_SIZE as usize..]
        );
    }

    #[test]
    fn a_bad_block_stops_the_answer_there_and_is_never_written() {
        let (_dir, store, entry, file, manifest) = setup();
        let mut data = bytes(&file, 0..4);
        data[2 * BLOCK_SIZE as usize + 7] ^= 1;
        let w = write_peer_blocks(&target(&store, entry), &manifest, 0..4, 0, &data);
        assert_eq!((w.corrupt, w.failed), (Some(2), None));
        assert_eq!(w.good, vec![(0, BLOCK_SIZE), (1, BLOCK_SIZE)]);
        assert_eq!(
            store.verified(entry).unwrap(),
            std::iter::once(0..2).collect()
        );
        // Only the good blocks before the bad one reached the file.
        assert_eq!(on_disk(&store, entry), bytes(&file, 0..2));
    }

    #[test]
    fn an_answer_of_the_wrong_shape_is_corrupt() {
        let (_dir, store, entry, file, manifest) = setup();
        // Other blocks than asked: nothing is written.
        let w = write_peer_blocks(
            &target(&store, entry),
            &manifest,
            0..2,
            1,
            &bytes(&file, 1..3),
        );
        assert_eq!((w.corrupt, w.good.len()), (Some(0), 0));
        // Too short: the blocks it holds whole are kept, the first cut one is bad.
        let data = bytes(&file, 0..2);
        let w = write_peer_blocks(
            &target(&store, entry),
            &manifest,
            0..2,
            0,
            &data[..data.len() - 1],
        );
        assert_eq!((w.corrupt, w.good), (Some(1), vec![(0, BLOCK_SIZE)]));
        // Bytes after the last block: the blocks are good, the answer is not.
        let mut data = bytes(&file, 2..3);
        data.push(0);
        let w = write_peer_blocks(&target(&store, entry), &manifest, 2..3, 2, &data);
        assert_eq!((w.corrupt, w.good), (Some(2), vec![(2, BLOCK_SIZE)]));
        assert_eq!(
            store.verified(entry).unwrap(),
            [0..1, 2..3].into_iter().collect()
        );
        assert!(on_disk(&store, entry).len() <= 3 * BLOCK_SIZE as usize);
    }
}
