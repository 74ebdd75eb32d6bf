//! The sans-IO download engine of donode.
//!
//! The [`Engine`] holds every download's state in DO's vocabulary (Created, Transferring,
//! Transferred, Finalized, Aborted, Paused) and decides what to fetch next, when to retry and
//! when to give up. It does no I/O, never reads the clock and never spawns a task: the real
//! node's tokio driver and the simulator both drive the very same engine.
//!
//! # Driving contract
//!
//! 1. Feed it what happened: [`Engine::handle_command`] for API calls, [`Engine::handle_input`]
//!    for outcomes of earlier actions (a stat answered, a block written and hashed, a fetch
//!    ended or failed, a file assembled), and [`Engine::handle_timeout`] when the instant from
//!    [`Engine::poll_timeout`] has come.
//! 2. Then drain [`Engine::poll_action`] and carry out every action. Each action that expects
//!    an answer carries a [`RequestId`]; the matching [`Input`] echoes it. Inputs for requests
//!    the engine has cancelled are ignored, so a driver never has to race a cancellation.
//! 3. Then drain [`Engine::poll_event`] (state changes and progress, for subscribers).
//! 4. Re-arm the timer from [`Engine::poll_timeout`].
//!
//! Inputs are *outcomes*, not bytes: the driver hashes blocks with `do-content`, so a simulator
//! can model a fleet without hashing gigabytes.
//!
//! # What it does not do
//!
//! No sockets, files or HTTP; no verification arithmetic (that is `do-content`); no storage
//! policy (that is `do-store`).
#![warn(missing_docs)]

mod download;
pub mod hresult;
mod peers;
mod rng;

pub use crate::peers::SplitRing;

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    time::{Duration, Instant},
};

use do_content::{BlockBits, BlockIndex, ByteRange, ContentId, RangeSet};
use tracing::{debug, info};

use crate::{download::Download, peers::Affects, rng::SplitMix64};

/// The window over which a download's rate is held against [`Config::min_background_qos`].
pub const QOS_WINDOW: Duration = Duration::from_secs(10);

/// Engine configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Parallel origin connections per download. Default 4: enough to hide per-connection
    /// stalls on a fast LAN origin; more only adds load on the origin.
    pub origin_connections: usize,
    /// Smallest span asked of the origin in one request, in blocks. Default 16 (1 MiB):
    /// smaller spans cost a round trip each.
    pub min_span_blocks: u64,
    /// Largest span asked of the origin in one request, in blocks. Default 1024 (64 MiB):
    /// larger spans lose more work when a connection drops.
    pub max_span_blocks: u64,
    /// First retry delay after a transient failure. Default 500 ms; doubles per failure.
    pub retry_base: Duration,
    /// Longest retry delay. Default 30 s.
    pub retry_max: Duration,
    /// Default no-progress timeout (DO's `NoProgressTimeoutSeconds`). Default 120 s.
    pub no_progress_timeout: Duration,
    /// How often the origin's file may change under a download before it fails. Default 3.
    pub max_restarts: u32,
    /// Requests in flight to one peer at a time (all downloads together). Default 4.
    pub peer_slots: usize,
    /// Blocks asked of a LAN peer in one request while no peer beyond the LAN is known.
    /// Default 64 (4 MiB): every request is a stream and a round trip, and a 1 GiB file
    /// between two nodes took 15 % longer in 1 MiB requests (`fleet-bench --pair-only`). A
    /// peer that takes fewer at once is asked for at most that many
    /// ([`Input::PeerRequestLimit`]).
    pub peer_request_blocks: u64,
    /// Blocks asked of a LAN peer in one request while peers beyond the LAN (Group, Internet)
    /// are known too. Default 16 (1 MiB): the LAN peers' upload slots then serve far peers
    /// too, whose small requests wait behind the LAN's answers (the `sites-group` simulation:
    /// 171 s and 1.23 origin copies with 16, 185 s and 1.33 with 64).
    pub mixed_request_blocks: u64,
    /// Blocks asked of a peer beyond the LAN (Group, Internet) in one request. Default 1
    /// (64 KiB): a request makes progress only when its answer arrives, and across a site's
    /// shared uplink an answer of 1 MiB outlasts the stall timeout (found with the simulator:
    /// 5 sites behind 20 Mbit/s uplinks took 3.7 origin copies, 1.2 with 64 KiB requests).
    pub far_request_blocks: u64,
    /// Requests in flight to peers for one download, all peers together. Default 16 (up to
    /// 64 MiB from LAN peers): enough to fill a fast link; more only lengthens every server's
    /// queue, and a request that waits in one past [`Config::peer_stall_timeout`] drops its
    /// peer.
    pub download_peer_requests: usize,
    /// A peer request that delivers nothing for this long is cancelled and its blocks asked
    /// elsewhere; the peer is no longer asked for this file (what it says it holds of it is
    /// ignored) until it reconnects. Default 10 s.
    pub peer_stall_timeout: Duration,
    /// Endgame: once every missing block is asked for, a peer request that has brought nothing
    /// for this long is asked once more of another peer that holds its blocks (the nearest,
    /// least busy one); whichever answers first wins and the other is cancelled. One copy per
    /// request at most, so that the end of a download never floods the swarm with duplicates.
    /// Default 2 s (a 4 MiB answer takes 0.34 s at 100 Mbit/s).
    pub endgame_after: Duration,
    /// DO's `DOMinBackgroundQoS`, in bytes per second (0: off): while peers supply a download
    /// and it ran slower than this over the last [`QOS_WINDOW`], the origin is asked too for
    /// what is missing (peers' blocks and other co-fetchers' shares included, without the
    /// fallback delay), one [`Config::min_span_blocks`] span per connection at a time, until a
    /// window is fast enough again. A window of top-up in which the origin brought less than
    /// half the minimum (it shares the peers' bottleneck, a site's WAN link say) pauses the
    /// rule for 1, 2, 4 ... 32 windows. Default 0, off (DO's default is 500 KB/s): the top-up
    /// spends origin bytes for time, and behind WAN links it spends many (the `sites-group`
    /// simulation: 4.5 origin copies at 500,000 instead of 1.2, for a makespan of 135 s
    /// instead of 171 s).
    pub min_background_qos: u64,
    /// Blocks the peers' own peers hold ([`Input::PeerNear`]) are left to come through the
    /// peers instead of the origin while peers keep bringing blocks: until this long after the
    /// last block a peer brought or the last news of such blocks, whichever is later. A node
    /// that sees part of a crowd so waits for the blocks a co-fetcher two hops away took from
    /// the origin before it came, instead of taking them again. Default 3 s.
    pub near_wait: Duration,
    /// While peers offer a file, wait this long after a start before asking the origin for
    /// what they lack (DO's `DODelay{Background,Foreground}DownloadFromHttp`). Default 0.
    pub origin_fallback_delay: Duration,
    /// This node's rank among nodes fetching the same file at once ([`Input::PeerFetching`]):
    /// the origin's work is split between them in the order of their keys. Any value unique
    /// in the swarm; the driver derives it from the node's identity. Default 0.
    pub node_key: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            origin_connections: 4,
            min_span_blocks: 16,
            max_span_blocks: 1024,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            no_progress_timeout: Duration::from_secs(120),
            max_restarts: 3,
            peer_slots: 4,
            peer_request_blocks: 64,
            mixed_request_blocks: 16,
            far_request_blocks: 1,
            download_peer_requests: 16,
            peer_stall_timeout: Duration::from_secs(10),
            endgame_after: Duration::from_secs(2),
            min_background_qos: 0,
            near_wait: Duration::from_secs(3),
            origin_fallback_delay: Duration::ZERO,
            node_key: 0,
        }
    }
}

/// Identifier of a download (DO's download `Id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DownloadId(pub u64);

/// A peer, as the driver numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

/// How near a peer is, in DO's terms; nearer peers are asked first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerClass {
    /// On the same local network.
    Lan,
    /// A member of the node's group, elsewhere.
    Group,
    /// Anyone else (Internet mode).
    Internet,
}

/// Identifier of one action that expects an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// DO's download states (`DODownloadState`, same numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Created, not started.
    Created = 0,
    /// Bytes are moving.
    Transferring = 1,
    /// Every requested byte is in place; `Start` may ask for more ranges.
    Transferred = 2,
    /// Finished for good.
    Finalized = 3,
    /// Cancelled for good.
    Aborted = 4,
    /// Paused on demand, or by an error: a fatal error sets `error`, a transient one sets
    /// `extended_error` and is retried automatically.
    Paused = 5,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A snapshot of one download (DO's `DO_DOWNLOAD_STATUS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Bytes to transfer (the file, or the sum of the requested ranges); 0 while unknown.
    pub bytes_total: u64,
    /// Bytes of those already verified and in place.
    pub bytes_transferred: u64,
    /// The state.
    pub state: State,
    /// The fatal error, 0 if none.
    pub error: u32,
    /// The transient error being retried, or the detail of `error`; 0 if none.
    pub extended_error: u32,
}

/// What a download is asked to fetch, set when it is created.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The origin URL.
    pub url: String,
    /// The content id the finished bytes must hash to, if the caller knows it.
    pub content_id: Option<ContentId>,
    /// Fail after this long without progress; `None` uses the engine's default.
    pub no_progress_timeout: Option<Duration>,
}

/// A call from the API.
#[derive(Clone, Debug)]
pub enum Command {
    /// Create a download in state `Created`.
    Create {
        /// Its id (chosen by the caller, unique).
        id: DownloadId,
        /// What to fetch.
        spec: Spec,
    },
    /// Start or resume: the whole file (`ranges: None`) or the given byte ranges.
    Start {
        /// The download.
        id: DownloadId,
        /// Byte ranges (offset order, no overlaps), or `None` for the whole file.
        ranges: Option<Vec<ByteRange>>,
    },
    /// Pause; verified blocks are kept and a later `Start` continues from them.
    Pause {
        /// The download.
        id: DownloadId,
    },
    /// Change the no-progress timeout (DO's `NoProgressTimeoutSeconds`, settable any time).
    SetNoProgressTimeout {
        /// The download.
        id: DownloadId,
        /// The new timeout.
        timeout: Duration,
    },
    /// Abort for good.
    Abort {
        /// The download.
        id: DownloadId,
    },
    /// Finish for good (only once Transferred).
    Finalize {
        /// The download.
        id: DownloadId,
    },
}

/// An error answered synchronously to a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No download with this id.
    #[error("no download {}", .0.0)]
    UnknownDownload(DownloadId),
    /// A download with this id exists already.
    #[error("download {} exists already", .0.0)]
    DuplicateId(DownloadId),
    /// Not allowed in the current state (`DO_E_INVALID_STATE`).
    #[error("not allowed while the download is {0}")]
    InvalidState(State),
    /// A range is empty or ends past the end of the file (`DO_E_INVALID_RANGE`).
    #[error("invalid byte range (empty, or past the end of the file)")]
    InvalidRange,
    /// Ranges overlap (`DO_E_OVERLAPPING_RANGES`).
    #[error("byte ranges overlap")]
    OverlappingRanges,
}

impl CommandError {
    /// The DO HRESULT for this error (`E_NOT_SET`-style unknown ids use DO's `0x80070490`).
    pub fn hresult(&self) -> u32 {
        match self {
            Self::UnknownDownload(_) => 0x8007_0490,
            Self::DuplicateId(_) | Self::InvalidState(_) => hresult::DO_E_INVALID_STATE,
            Self::InvalidRange => hresult::DO_E_INVALID_RANGE,
            Self::OverlappingRanges => hresult::DO_E_OVERLAPPING_RANGES,
        }
    }
}

/// Why a fetch or stat failed, as the driver classified it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Worth retrying (network trouble, 5xx, a truncated body).
    Transient(u32),
    /// Not worth retrying (4xx, local disk errors): the download pauses with this error.
    Fatal(u32),
    /// The origin's file changed (If-Range answered with the whole new file).
    ContentChanged,
    /// The origin ignored a Range request: fetch the whole file in one request instead.
    RangeNotSupported,
    /// The assembled bytes do not hash to the content id the caller gave.
    Integrity,
}

/// What the origin said about the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// Length in bytes.
    pub len: u64,
    /// True when the origin honours Range requests.
    pub accepts_ranges: bool,
    /// Blocks of this exact version the cache already holds, verified.
    pub cached: RangeSet,
    /// The content id the origin publishes for this version (a BLAKE3 digest beside the
    /// file), trusted like the caller's; used when the caller gave none.
    pub content_id: Option<ContentId>,
}

/// An outcome reported by the driver.
#[derive(Clone, Debug)]
pub enum Input {
    /// A peer can be asked for blocks.
    PeerAdded {
        /// The peer.
        peer: PeerId,
        /// How near it is.
        class: PeerClass,
    },
    /// A peer takes at most `blocks` blocks in one request (the limit of the block protocol's
    /// version it speaks): no request to it is larger from now on. Ignored for a peer not
    /// added.
    PeerRequestLimit {
        /// The peer.
        peer: PeerId,
        /// The most blocks per request, at least 1.
        blocks: u64,
    },
    /// A peer is gone: its requests are lost.
    PeerRemoved {
        /// The peer.
        peer: PeerId,
    },
    /// What a peer holds of a download's file (replaces what it said before).
    PeerHas {
        /// The download.
        id: DownloadId,
        /// The peer.
        peer: PeerId,
        /// Its verified blocks.
        blocks: RangeSet,
    },
    /// Blocks a peer came to hold since it last said, added to what it said before: the
    /// cheap form of [`Input::PeerHas`] for a driver that knows what changed (a poll then
    /// costs what changed, not what the peer holds).
    PeerGained {
        /// The download.
        id: DownloadId,
        /// The peer.
        peer: PeerId,
        /// Verified blocks it holds now and did not before.
        blocks: RangeSet,
    },
    /// Blocks a peer's own peers hold, on its LAN and beyond (as far as it knows; replaces
    /// what it said before): they can come through it. The origin is not asked for them while
    /// peers keep bringing blocks (see [`Config::near_wait`]), so a node that sees part of a
    /// crowd does not take again from the origin what a co-fetcher it does not see took before
    /// it came, nor what another site holds; and a LAN co-fetcher that says it can bring a
    /// block across the WAN may be left to bring it (see [`Engine::held_by_peers`]). A peer
    /// that lies here delays, never corrupts: the wait ends when peers stop bringing blocks,
    /// and a co-fetcher that stops growing loses its part.
    PeerNear {
        /// The download.
        id: DownloadId,
        /// The peer.
        peer: PeerId,
        /// Blocks its peers hold (as bits: the news of a poll in a crowd is fragmented).
        blocks: BlockBits,
    },
    /// A peer is downloading this download's file too: the origin's work is split between
    /// the nodes fetching it (each takes the share its key ranks it), so that each byte
    /// leaves the origin about once. A peer whose share stops growing for
    /// [`Config::peer_stall_timeout`] loses it to the others.
    PeerFetching {
        /// The download.
        id: DownloadId,
        /// The peer.
        peer: PeerId,
        /// Its rank key (its [`Config::node_key`]).
        key: u64,
    },
    /// Rank keys a peer splits this file's origin work with (its
    /// [`Engine::co_fetchers_for`] this node), replacing what it said before. They join this
    /// node's split too, so that nodes that see only part of the swarm still cut the file
    /// alike: with 64 peers each out of 1,000 nodes, the peers' peers are nearly all of them.
    /// Their parts reach this node through the peers that serve them.
    PeerCoFetchers {
        /// The download.
        id: DownloadId,
        /// The peer that reports them.
        peer: PeerId,
        /// Their rank keys, each with its distance from the peer in hops between
        /// co-fetchers (0: the peer itself).
        keys: Vec<(u64, u8)>,
    },
    /// The driver holds a manifest whose root is a content id the download trusts: from now
    /// on blocks from peers are verified as they arrive, and the blocks that arrived before
    /// ([`Input::BlockUnchecked`]) were checked against it.
    ManifestTrusted {
        /// The download.
        id: DownloadId,
        /// The unchecked blocks that failed the check: their bytes are dropped, and the peers
        /// that sent them are banned.
        refuted: RangeSet,
        /// The unchecked blocks the driver could not check (a local I/O error): fetched
        /// again, nobody banned. Every unchecked block in neither set is now held.
        lost: RangeSet,
    },
    /// A block of a [`Action::RequestBlocks`] sent before the download trusted a manifest:
    /// its bytes are written but not checked, so it is neither held, nor served, nor in a
    /// finished file. The driver checks it (with the others) once the manifest is trusted
    /// and reports the outcome in [`Input::ManifestTrusted`]. Until then it is not fetched
    /// again.
    BlockUnchecked {
        /// The request that carried it.
        request: RequestId,
        /// The block.
        block: BlockIndex,
    },
    /// A block of a [`Action::RequestBlocks`] failed verification: its bytes were dropped and
    /// the peer is banned.
    BlockCorrupt {
        /// The request.
        request: RequestId,
        /// The block.
        block: BlockIndex,
    },
    /// Answer to [`Action::Stat`].
    Stat {
        /// The request.
        request: RequestId,
        /// The file, or why it could not be reached.
        result: Result<FileInfo, Failure>,
    },
    /// A block of a [`Action::Fetch`] was written and hashed (and is now served from cache).
    Block {
        /// The request that carried it.
        request: RequestId,
        /// The block.
        block: BlockIndex,
    },
    /// A fetch ended: every block it covered was reported, or it failed.
    FetchEnded {
        /// The request.
        request: RequestId,
        /// `Ok` when complete.
        result: Result<(), Failure>,
    },
    /// Answer to [`Action::Assemble`].
    Assembled {
        /// The request.
        request: RequestId,
        /// The root of the file (`None` when only ranges were fetched and the root is not
        /// known), or why assembly failed.
        result: Result<Option<ContentId>, Failure>,
    },
}

impl Input {
    /// Inputs about peers and what they hold, rather than about one request.
    fn is_peer(&self) -> bool {
        matches!(
            self,
            Self::PeerAdded { .. }
                | Self::PeerRequestLimit { .. }
                | Self::PeerRemoved { .. }
                | Self::PeerHas { .. }
                | Self::PeerGained { .. }
                | Self::PeerNear { .. }
                | Self::PeerFetching { .. }
                | Self::PeerCoFetchers { .. }
                | Self::ManifestTrusted { .. }
        )
    }
}

/// Something the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Ask the origin for the file's size and validators, and the cache for what it holds.
    Stat {
        /// Echo in [`Input::Stat`].
        request: RequestId,
        /// The download.
        id: DownloadId,
        /// The URL.
        url: String,
    },
    /// Fetch `range` (block aligned) from the origin, reporting each block; `whole` means the
    /// origin does not do ranges: GET the whole file without a Range header.
    Fetch {
        /// Echo in [`Input::Block`] and [`Input::FetchEnded`].
        request: RequestId,
        /// The download.
        id: DownloadId,
        /// Bytes to fetch.
        range: ByteRange,
        /// GET without a Range header.
        whole: bool,
    },
    /// Ask a peer for blocks `blocks` of a download's file; each arrives as [`Input::Block`]
    /// (verified against the trusted manifest) or [`Input::BlockCorrupt`], or, while no
    /// manifest is trusted, as [`Input::BlockUnchecked`]; then [`Input::FetchEnded`].
    RequestBlocks {
        /// Echo in the answers.
        request: RequestId,
        /// The download.
        id: DownloadId,
        /// The peer.
        peer: PeerId,
        /// Block indices `[start, end)`.
        blocks: std::ops::Range<u64>,
    },
    /// Stop a fetch; its later inputs are ignored.
    Cancel {
        /// The fetch.
        request: RequestId,
    },
    /// Every requested block is in the cache: check the root (against `content_id` if given)
    /// and make the output visible.
    Assemble {
        /// Echo in [`Input::Assembled`].
        request: RequestId,
        /// The download.
        id: DownloadId,
        /// The ranges asked for, `None` for the whole file.
        ranges: Option<Vec<ByteRange>>,
        /// The content id the bytes must hash to.
        content_id: Option<ContentId>,
    },
    /// The origin's file changed: forget every block of the old version.
    Restart {
        /// The download.
        id: DownloadId,
    },
}

/// A change subscribers may want to know about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A peer sent bytes that failed verification (`DO_E_BAD_PIECE_HASH`): it is never asked
    /// again (`DO_E_PEER_BANNED`); the driver should disconnect it.
    PeerBanned {
        /// The peer.
        peer: PeerId,
    },
    /// The status changed (state, error, or progress).
    Status {
        /// The download.
        id: DownloadId,
        /// Its new status.
        status: Status,
    },
}

/// The engine. See the crate documentation for the driving contract.
pub struct Engine {
    config: Config,
    rng: SplitMix64,
    downloads: BTreeMap<DownloadId, Download>,
    /// Known peers: their class, and whether they are banned.
    peers: BTreeMap<PeerId, peers::Peer>,
    /// Which download each outstanding request belongs to.
    requests: BTreeMap<RequestId, DownloadId>,
    next_request: u64,
    /// Counts the changes of what splits tell (see [`Engine::split_version`]).
    splits_made: u64,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
}

impl Engine {
    /// A new engine; all randomness (retry jitter) comes from `rng_seed`.
    pub fn new(config: Config, rng_seed: [u8; 32]) -> Self {
        Self {
            config,
            rng: SplitMix64::from_seed(rng_seed),
            downloads: BTreeMap::new(),
            peers: BTreeMap::new(),
            requests: BTreeMap::new(),
            next_request: 1,
            splits_made: 0,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Applies an API call. Errors leave the engine unchanged.
    pub fn handle_command(&mut self, now: Instant, command: Command) -> Result<(), CommandError> {
        match command {
            Command::Create { id, spec } => {
                if self.downloads.contains_key(&id) {
                    return Err(CommandError::DuplicateId(id));
                }
                let timeout = spec
                    .no_progress_timeout
                    .unwrap_or(self.config.no_progress_timeout);
                info!(download = id.0, url = %spec.url, "download created");
                self.downloads.insert(id, Download::new(spec, timeout, now));
            }
            Command::Start { id, ranges } => self.start(now, id, ranges)?,
            Command::Pause { id } => {
                let d = self.download_mut(id)?;
                match d.state {
                    State::Transferring | State::Paused => {
                        d.user_paused = true;
                        d.retry_at = None;
                        self.cancel_all(id);
                        self.set_state(id, State::Paused);
                    }
                    state => return Err(CommandError::InvalidState(state)),
                }
            }
            Command::SetNoProgressTimeout { id, timeout } => {
                self.download_mut(id)?.no_progress_timeout = timeout;
            }
            Command::Abort { id } => {
                let state = self.download_mut(id)?.state;
                if matches!(state, State::Finalized | State::Aborted) {
                    return Err(CommandError::InvalidState(state));
                }
                self.cancel_all(id);
                self.set_state(id, State::Aborted);
            }
            Command::Finalize { id } => {
                let state = self.download_mut(id)?.state;
                if state != State::Transferred {
                    return Err(CommandError::InvalidState(state));
                }
                self.set_state(id, State::Finalized);
            }
        }
        Ok(())
    }

    /// Applies an outcome reported by the driver.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        if input.is_peer() {
            self.on_peer_input(now, input);
            return;
        }
        let request = match &input {
            Input::Stat { request, .. }
            | Input::Block { request, .. }
            | Input::BlockUnchecked { request, .. }
            | Input::FetchEnded { request, .. }
            | Input::Assembled { request, .. } => *request,
            Input::BlockCorrupt { request, block } => {
                self.on_block_corrupt(now, *request, *block);
                return;
            }
            _ => unreachable!("peer inputs are handled above"),
        };
        let Some(&id) = self.requests.get(&request) else {
            debug!(request = request.0, "input for a cancelled request ignored");
            return;
        };
        match input {
            Input::Stat { result, .. } => {
                self.requests.remove(&request);
                self.on_stat(now, id, result);
            }
            Input::Block { block, .. } => {
                // A block moves from owed to held: what is missing, and every slot, stay as
                // they were, so there is nothing new to schedule unless the download resumed.
                // (This keeps a block's cost small: one per 64 KiB.)
                if !self.on_block(now, id, request, block) {
                    return;
                }
            }
            Input::BlockUnchecked { block, .. } => {
                // Like a block: it is no longer owed, and nothing new is missing.
                let d = self
                    .downloads
                    .get_mut(&id)
                    .expect("request maps to a live download");
                if !d.manifest_trusted && d.add_unchecked(request, block, now) {
                    d.last_progress = now;
                }
                return;
            }
            Input::FetchEnded { result, .. } => {
                self.requests.remove(&request);
                self.on_fetch_ended(now, id, request, result);
            }
            Input::Assembled { result, .. } => {
                self.requests.remove(&request);
                self.on_assembled(now, id, result);
            }
            _ => unreachable!("handled before the lookup"),
        }
        self.schedule(now, id);
    }

    /// Applies several outcomes at once, then schedules once: the same as calling
    /// [`Engine::handle_input`] for each, but a poll that brings many peers' holdings costs one
    /// scheduling pass instead of one per peer.
    pub fn handle_inputs(&mut self, now: Instant, inputs: impl IntoIterator<Item = Input>) {
        let mut all = false;
        let mut some: Vec<DownloadId> = Vec::new();
        for input in inputs {
            if input.is_peer() {
                match self.apply_peer_input(now, input) {
                    Affects::One(id) if !some.contains(&id) => some.push(id),
                    Affects::One(_) | Affects::Nothing => {}
                    Affects::All => all = true,
                }
            } else {
                self.handle_input(now, input);
            }
        }
        if all {
            self.schedule_affected(now, Affects::All);
        } else {
            for id in some {
                self.schedule_affected(now, Affects::One(id));
            }
        }
    }

    /// Handles timers: retries that are due, stalled peer requests, the origin fallback
    /// delay, and no-progress timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.drop_stalled_peer_requests(now);
        let ids: Vec<DownloadId> = self.downloads.keys().copied().collect();
        for id in ids {
            let d = self.downloads.get_mut(&id).expect("listed above");
            if d.is_waiting_for_progress() && now >= d.last_progress + d.no_progress_timeout {
                info!(download = id.0, "no progress within the timeout");
                d.retry_at = None;
                self.cancel_all(id);
                self.fail(id, hresult::DO_E_DOWNLOAD_NO_PROGRESS, 0);
                continue;
            }
            if d.retry_at.is_some_and(|t| now >= t) {
                d.retry_at = None;
            }
            self.check_qos(now, id);
            self.schedule(now, id);
        }
    }

    /// The next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event for subscribers, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Engine::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.downloads
            .values()
            .flat_map(|d| {
                let deadline = d
                    .is_waiting_for_progress()
                    .then(|| d.last_progress + d.no_progress_timeout);
                [
                    d.retry_at,
                    deadline,
                    self.peer_deadline(d),
                    self.qos_deadline(d),
                ]
            })
            .flatten()
            .min()
    }

    /// Whether a download knows what `peer` holds of its file (a driver that tells holdings
    /// as they grow, [`Input::PeerGained`], tells the whole of them, [`Input::PeerHas`], to a
    /// download that does not: it never had them, or forgot them when a request failed).
    pub fn knows_holdings(&self, id: DownloadId, peer: PeerId) -> bool {
        self.downloads
            .get(&id)
            .is_some_and(|d| d.haves.contains_key(&peer))
    }

    /// The status of a download.
    pub fn status(&self, id: DownloadId) -> Option<Status> {
        self.downloads.get(&id).map(Download::status)
    }

    /// The content id of a download's file, once known: the one its bytes hashed to once
    /// transferred, before that the trusted one it must hash to (the caller's, or the
    /// origin's published digest).
    pub fn content_id(&self, id: DownloadId) -> Option<ContentId> {
        self.downloads
            .get(&id)
            .and_then(|d| d.content_id.or(d.trusted_id()))
    }

    /// What this node tells the peer whose rank key is `asker` of the nodes it splits a
    /// download's origin work with ([`Input::PeerCoFetchers`]): for each of the asker's
    /// points on the split's ring, the key of the first point after it among this node, its
    /// own co-fetchers and the ones it was told of at most two hops away, with its distance
    /// from this node (keys told of from farther are not passed on, so that a node that left
    /// is not kept alive by reports going round). Those points end the asker's arcs in the
    /// view of this node, so a few keys per peer give the asker the arcs of a much wider
    /// view. Empty if this node does not split the download.
    pub fn co_fetchers_for(&mut self, id: DownloadId, asker: u64) -> Vec<(u64, u8)> {
        self.refresh_split(id);
        let Some(d) = self.downloads.get(&id) else {
            return Vec::new();
        };
        let (Some(Some(split)), Some(info)) = (&d.split, &d.info) else {
            return Vec::new();
        };
        peers::successors(&split.told, asker, do_content::block_count(info.len))
    }

    /// Which version of what a download's split tells is current: it changes whenever a split
    /// computed again tells other keys or distances (and never repeats), so what
    /// [`Engine::co_fetchers_for`] tells an asker can have changed only if this did. `None`: no
    /// such download.
    pub fn split_version(&mut self, id: DownloadId) -> Option<u64> {
        self.refresh_split(id);
        self.downloads.get(&id).map(|d| d.split_version)
    }

    /// Forgets a download in a final state (Finalized or Aborted); returns true if it did.
    pub fn remove(&mut self, id: DownloadId) -> bool {
        let removable = self
            .downloads
            .get(&id)
            .is_some_and(|d| matches!(d.state, State::Finalized | State::Aborted));
        if removable {
            self.downloads.remove(&id);
        }
        removable
    }

    fn start(
        &mut self,
        now: Instant,
        id: DownloadId,
        ranges: Option<Vec<ByteRange>>,
    ) -> Result<(), CommandError> {
        let d = self.download_mut(id)?;
        match d.state {
            State::Created | State::Paused | State::Transferred => {}
            state => return Err(CommandError::InvalidState(state)),
        }
        if let Some(ranges) = &ranges {
            download::check_ranges(ranges, d.info.as_ref().map(|i| i.len))?;
        }
        if d.state == State::Transferred && ranges.is_none() && d.ranges.is_none() {
            return Err(CommandError::InvalidState(State::Transferred));
        }
        if ranges.is_some() || d.state != State::Paused {
            d.ranges = ranges;
        }
        d.user_paused = false;
        d.error = 0;
        d.extended_error = 0;
        d.failures = 0;
        d.last_progress = now;
        d.started_at = now;
        d.fallback_passed = false;
        d.restart_qos_window(now);
        d.below_qos = false;
        if d.state == State::Transferred {
            d.refresh_needed();
        }
        self.set_state(id, State::Transferring);
        self.schedule(now, id);
        Ok(())
    }

    fn on_stat(&mut self, now: Instant, id: DownloadId, result: Result<FileInfo, Failure>) {
        let d = self
            .downloads
            .get_mut(&id)
            .expect("request maps to a live download");
        d.stat_pending = false;
        match result {
            Ok(info) => {
                if let Some(ranges) = &d.ranges
                    && download::check_ranges(ranges, Some(info.len)).is_err()
                {
                    self.fail(id, hresult::DO_E_INVALID_RANGE, 0);
                    return;
                }
                debug!(
                    download = id.0,
                    len = info.len,
                    cached = info.cached.count(),
                    "stat"
                );
                d.published = info.content_id;
                d.set_info(info);
                d.last_progress = now;
                self.emit_status(id);
            }
            Err(failure) => self.on_failure(now, id, failure),
        }
    }

    /// Records a block; true when it resumed a download paused by a transient error.
    fn on_block(
        &mut self,
        now: Instant,
        id: DownloadId,
        request: RequestId,
        block: BlockIndex,
    ) -> bool {
        let d = self
            .downloads
            .get_mut(&id)
            .expect("request maps to a live download");
        let fresh = d.add_block(request, block, now);
        // Endgame: the block's twin request no longer owes it; a twin that owes nothing is
        // cancelled, and its peer's slot is free for the next pass.
        let mut freed = false;
        // An origin fetch cut down to the share's blocks it was bringing has brought them: its
        // connection is free.
        if d.trimmed_and_done(request) {
            self.cancel_fetch(id, request);
            freed = true;
        }
        let d = self.downloads.get_mut(&id).expect("live");
        if let Some(twin) = d.strike_from_twin(request, block.0) {
            self.cancel_fetch(id, twin);
            freed = true;
        }
        let d = self.downloads.get_mut(&id).expect("live");
        if fresh {
            d.last_progress = now;
            if d.failures > 0 {
                // Bytes flow again: co-fetchers get a fresh stall clock from now.
                d.restart_co_fetcher_clocks(now);
            }
            d.failures = 0;
            if d.state == State::Paused && !d.user_paused && d.error == 0 {
                d.extended_error = 0;
                self.set_state(id, State::Transferring);
                return true;
            }
            self.emit_status(id);
        }
        freed
    }

    fn on_fetch_ended(
        &mut self,
        now: Instant,
        id: DownloadId,
        request: RequestId,
        result: Result<(), Failure>,
    ) {
        let d = self
            .downloads
            .get_mut(&id)
            .expect("request maps to a live download");
        let peer = d.peer_requests.get(&request).map(|p| p.peer);
        d.end_fetch(request);
        match (result, peer) {
            (Ok(()), _) => {}
            (Err(failure), Some(peer)) => {
                // A peer that failed a request is not asked for this file again; the download
                // itself goes on with other sources.
                debug!(
                    download = id.0,
                    peer = peer.0,
                    ?failure,
                    "peer request failed"
                );
                d.remove_have(peer);
            }
            (Err(failure), None) => self.on_failure(now, id, failure),
        }
    }

    fn on_assembled(
        &mut self,
        now: Instant,
        id: DownloadId,
        result: Result<Option<ContentId>, Failure>,
    ) {
        let d = self
            .downloads
            .get_mut(&id)
            .expect("request maps to a live download");
        d.assembling = false;
        match result {
            Ok(root) => {
                info!(download = id.0, content_id = ?root, "transferred");
                d.content_id = root;
                d.release_peers();
                self.set_state(id, State::Transferred);
            }
            Err(failure) => self.on_failure(now, id, failure),
        }
    }

    /// Reacts to a failed stat, fetch or assembly.
    fn on_failure(&mut self, now: Instant, id: DownloadId, failure: Failure) {
        let d = self
            .downloads
            .get_mut(&id)
            .expect("request maps to a live download");
        match failure {
            Failure::Fatal(code) => {
                self.cancel_all(id);
                self.fail(id, code, 0);
            }
            Failure::Transient(code) => {
                // One outage hitting several parallel fetches is one failure: while a retry is
                // scheduled, further failures neither push it back nor lengthen the backoff.
                if d.retry_at.is_none() {
                    d.failures += 1;
                    let failures = d.failures;
                    let delay = self.backoff(failures);
                    self.downloads.get_mut(&id).expect("live").retry_at = Some(now + delay);
                }
                let d = self.downloads.get_mut(&id).expect("live");
                let delay = d.retry_at.map(|t| t.saturating_duration_since(now));
                debug!(
                    download = id.0,
                    code = format_args!("{code:#x}"),
                    ?delay,
                    "transient failure; retrying"
                );
                if d.fetches.is_empty() && d.state == State::Transferring {
                    d.extended_error = code;
                    self.set_state(id, State::Paused);
                }
            }
            Failure::ContentChanged => {
                d.restarts += 1;
                if d.restarts > self.config.max_restarts {
                    self.cancel_all(id);
                    self.fail(id, hresult::HTTP_E_STATUS_PRECOND_FAILED, 0);
                    return;
                }
                info!(download = id.0, "origin file changed; restarting");
                self.cancel_all(id);
                let d = self.downloads.get_mut(&id).expect("live");
                d.forget_file();
                self.actions.push_back(Action::Restart { id });
            }
            Failure::Integrity => {
                self.cancel_all(id);
                self.fail(id, hresult::DO_E_BAD_PIECE_HASH_NO_BAN, 0);
            }
            Failure::RangeNotSupported => {
                info!(
                    download = id.0,
                    "origin ignores Range; fetching the whole file"
                );
                self.cancel_all(id);
                if let Some(info) = &mut self.downloads.get_mut(&id).expect("live").info {
                    info.accepts_ranges = false;
                }
            }
        }
    }

    /// Issues whatever the download needs next: its stat, peer requests, origin fetches, or
    /// its assembly once every needed block is in.
    fn schedule(&mut self, now: Instant, id: DownloadId) {
        let Some(d) = self.downloads.get_mut(&id) else {
            return;
        };
        if now >= d.started_at + self.config.origin_fallback_delay {
            d.fallback_passed = true;
        }
        // Set again below if the origin is still kept from the peers' peers' blocks.
        d.near_until = None;
        if d.state != State::Transferring
            && !(d.state == State::Paused && !d.user_paused && d.error == 0)
        {
            return;
        }
        if d.assembling || d.stat_pending {
            return;
        }
        let Some(info) = &d.info else {
            if d.retry_at.is_none() {
                d.stat_pending = true;
                let url = d.spec.url.clone();
                let request = self.new_request(id);
                self.actions.push_back(Action::Stat { request, id, url });
            }
            return;
        };
        let (len, accepts_ranges) = (info.len, info.accepts_ranges);
        let mut missing = d.missing();
        self.refresh_split(id);
        self.cancel_stray_origin_fetches(id, &mut missing);
        let d = self.downloads.get_mut(&id).expect("live");
        d.endgame = missing.is_empty();
        if missing.is_empty() {
            if !d.fetches.is_empty() {
                self.endgame(now, id);
                return;
            }
            // Unchecked blocks wait for the manifest: no assembly before they are held.
            if !d.has_unchecked() {
                d.assembling = true;
                let (ranges, content_id) = (d.ranges.clone(), d.trusted_id());
                let request = self.new_request(id);
                self.actions.push_back(Action::Assemble {
                    request,
                    id,
                    ranges,
                    content_id,
                });
            }
            return;
        }
        self.schedule_peers(now, id, &mut missing);
        self.downloads.get_mut(&id).expect("live").endgame = missing.is_empty();
        // The origin waits out its retry backoff; peers above do not.
        if self.downloads[&id].retry_at.is_some() {
            return;
        }
        let connections = self.config.origin_connections.max(1);
        if accepts_ranges && self.downloads[&id].origin_fetches() >= connections {
            return; // every origin connection is busy: nothing to hand out
        }
        let Some(mut origin_missing) = self.origin_candidates(now, id, &missing) else {
            return;
        };
        if !accepts_ranges {
            if self.downloads[&id].fetches.is_empty() && !origin_missing.is_empty() {
                let range = ByteRange::new(0, len);
                let request = self.new_request(id);
                let d = self.downloads.get_mut(&id).expect("live");
                d.begin_fetch(request, 0..do_content::block_count(range.end));
                self.actions.push_back(Action::Fetch {
                    request,
                    id,
                    range,
                    whole: true,
                });
            }
            return;
        }
        // A top-up for speed asks small spans: it ends as soon as a window is fast again.
        let max_span = if self.downloads[&id].below_qos {
            self.config.min_span_blocks
        } else {
            self.config.max_span_blocks
        };
        while self.downloads[&id].origin_fetches() < connections {
            let Some(span) = Download::next_span(
                &origin_missing,
                connections,
                self.config.min_span_blocks,
                max_span,
            ) else {
                break;
            };
            origin_missing.remove(span.start, span.end);
            let range = ByteRange::new(
                span.start * do_content::BLOCK_SIZE,
                (span.end * do_content::BLOCK_SIZE).min(len),
            );
            let request = self.new_request(id);
            self.downloads
                .get_mut(&id)
                .expect("live")
                .begin_fetch(request, span);
            self.actions.push_back(Action::Fetch {
                request,
                id,
                range,
                whole: false,
            });
        }
    }

    fn backoff(&mut self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(16);
        let full = self
            .config
            .retry_base
            .saturating_mul(1 << exp)
            .min(self.config.retry_max);
        // Jitter in [1/2, 1) of the full delay, from the seeded generator.
        let fraction = 0.5 + 0.5 * self.rng.next_f64();
        full.mul_f64(fraction)
    }

    fn fail(&mut self, id: DownloadId, error: u32, extended_error: u32) {
        let d = self.downloads.get_mut(&id).expect("live");
        d.error = error;
        d.extended_error = extended_error;
        d.retry_at = None;
        info!(
            download = id.0,
            error = format_args!("{error:#x}"),
            "download failed"
        );
        self.set_state(id, State::Paused);
    }

    /// Ends fetch `request` of download `id` and tells the driver to cancel it.
    fn cancel_fetch(&mut self, id: DownloadId, request: RequestId) {
        if let Some(d) = self.downloads.get_mut(&id) {
            d.end_fetch(request);
        }
        self.requests.remove(&request);
        self.actions.push_back(Action::Cancel { request });
    }

    fn cancel_all(&mut self, id: DownloadId) {
        let d = self.downloads.get_mut(&id).expect("live");
        d.stat_pending = false;
        d.assembling = false;
        let cancelled: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|&(_, &owner)| owner == id)
            .map(|(&r, _)| r)
            .collect();
        for request in cancelled {
            self.requests.remove(&request);
            let d = self.downloads.get_mut(&id).expect("live");
            if d.fetches.contains_key(&request) {
                d.end_fetch(request);
                self.actions.push_back(Action::Cancel { request });
            }
        }
    }

    fn set_state(&mut self, id: DownloadId, state: State) {
        let d = self.downloads.get_mut(&id).expect("live");
        if d.state != state {
            debug!(download = id.0, from = %d.state, to = %state, "state");
            d.state = state;
        }
        self.emit_status(id);
    }

    fn emit_status(&mut self, id: DownloadId) {
        let status = self.downloads[&id].status();
        self.events.push_back(Event::Status { id, status });
    }

    fn new_request(&mut self, id: DownloadId) -> RequestId {
        let request = RequestId(self.next_request);
        self.next_request += 1;
        self.requests.insert(request, id);
        request
    }

    fn download_mut(&mut self, id: DownloadId) -> Result<&mut Download, CommandError> {
        self.downloads
            .get_mut(&id)
            .ok_or(CommandError::UnknownDownload(id))
    }
}

#[cfg(test)]
mod tests;
