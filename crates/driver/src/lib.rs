//! The tokio driver of donode: it owns the engine, the cache, the origin client and every
//! task, feeds the engine what happened and carries out what it decides.
//!
//! [`Node`] is the clonable handle; [`Node::start`] spawns the actor that owns everything.
//! The actor's loop waits for an API command, an I/O outcome or the engine's next timer, feeds
//! the engine, then drains its actions (spawning stat, fetch and assemble tasks) and its events
//! (publishing each download's [`Progress`] on a watch channel).
//!
//! How a byte travels: a fetch task streams an origin response, writes each chunk at its
//! offset in the cache entry's data file, hashes it into its 64 KiB block, and once a block is
//! complete records it (in batches) in the cache index and tells the engine. When every block
//! is there, an assemble task merges the block hashes into the root, checks it against the
//! caller's content id, and makes the output visible at once (a hard link, or a copy).
#![warn(missing_docs)]

mod actor;
mod dialer;
mod fetch;
mod lane;
mod p2p;
mod polled;
mod shaper;

use std::{path::PathBuf, time::Duration};

use do_content::{ByteRange, ContentId};
use do_engine::{CommandError, DownloadId, State, Status};
use tokio::sync::{mpsc, oneshot, watch};

pub use do_origin::Headers;
pub use do_p2p::Group;
pub use do_store::Layout;

/// Driver configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cache directory (index and data files).
    pub cache_dir: PathBuf,
    /// Cache quotas.
    pub store: do_store::Config,
    /// Scheduling, retries and timeouts.
    pub engine: do_engine::Config,
    /// The HTTP client.
    pub origin: do_origin::Config,
    /// Verified blocks are recorded in the index in batches of about this many bytes.
    /// Default 16 MiB: a crash loses at most this much per connection; smaller batches cost
    /// more index commits.
    pub checkpoint_bytes: u64,
    /// ... or at least this often while blocks are pending. Default 1 s: a crash of a slow
    /// download loses at most about a second of it.
    pub checkpoint_interval: Duration,
    /// While a foreground download transfers, each connection of a background download reads
    /// at most this many bytes per second, leaving the rest of the bandwidth to the foreground
    /// (DO's `ForegroundPriority`). Default 256 KiB/s: background downloads keep moving (and
    /// never hit their no-progress timeout) but take little.
    pub background_yield_rate: u64,
    /// Exchange files with LAN peers over the p2p layer (DO's LAN download mode): downloads
    /// take verified blocks from peers and the cache is served to them. `None` (the default)
    /// is HTTP only.
    pub p2p: Option<P2pConfig>,
}

/// The p2p side of a node.
#[derive(Debug, Clone)]
pub struct P2pConfig {
    /// Discovery and protocol settings.
    pub layer: do_p2p::Config,
    /// Where to listen. Default all IPv4 addresses, a free TCP port.
    pub listen: libp2p::Multiaddr,
    /// Where to listen for QUIC (when the layer carries it: not in Group mode). Default all
    /// IPv4 addresses, a free UDP port.
    pub quic_listen: libp2p::Multiaddr,
    /// The transport tried first when dialing a peer that offers both; the other is the
    /// fallback. Default TCP (on a LAN it costs less CPU per byte than QUIC).
    pub dial_first: Transport,
    /// Peer requests answered at once; more wait in a queue (DO's upload slots). Default 4
    /// ([`UPLOAD_SLOTS`]); [`LAN_UPLOAD_SLOTS`] suits a node whose peers are all on its LAN.
    pub upload_slots: usize,
    /// Most bytes per second of block data served to peers, on average (DO's
    /// `DOMaxUploadBandwidth`). Default `None`: no cap. An answer waits for its turn while
    /// holding its upload slot; peers that get too little drop this node as slow (the
    /// engine's `peer_stall_timeout`) and fetch elsewhere.
    pub upload_max_rate: Option<u64>,
    /// While peers could supply a file, the origin waits this long after a download starts
    /// (for peers to say what they hold and who else fetches it) before fetching what they
    /// lack; the larger of this and the engine's own delay applies. Default 1 s: a download
    /// asks every peer as soon as it knows its file, and peers on a LAN answer within
    /// milliseconds.
    pub origin_fallback_delay: Duration,
    /// Internet mode: besides the LAN's peers, peers found through the bootstrap peers and the
    /// DHT (Kademlia provider records keyed by content id), counted as Internet peers and
    /// asked after the LAN's, for what the LAN's lack; the origin fallback delay is then at
    /// least [`INTERNET_FALLBACK_DELAY`]. Default false (LAN mode, or Group mode with a
    /// group).
    pub internet: bool,
    /// Peers to join the DHT through (`/ip4/…/tcp/…/p2p/<peer id>`), dialed at start; used
    /// in Internet mode and in Group mode (where they must be members). Default none.
    pub bootstrap: Vec<libp2p::Multiaddr>,
    /// Carry block requests to peers on data lanes (direct TCP connections sealed with
    /// AEGIS-128L under keys agreed over libp2p; see `do_p2p::lane`), and offer lanes to
    /// peers; libp2p carries them when a peer offers none. Default true.
    pub data_lanes: bool,
    /// Where the lane server listens. Default all IPv4 addresses, a free TCP port (told to
    /// each peer in its ticket).
    pub data_lane_listen: std::net::SocketAddr,
    /// The most peers a download polls for what they hold (each poll, every
    /// [`POLL_ROTATION`] a few that offered nothing are swapped for others; peers that ask
    /// about the same file come first). 0: every connected peer. Default [`POLL_PEERS`].
    pub poll_peers: usize,
    /// Ring neighbours a download polls on top of `poll_peers`: for each of this node's points
    /// on the file's split ring, the first this many LAN peers whose points follow it
    /// (`do_engine::SplitRing`). They bound the arcs of the origin's work this node takes, so
    /// with them a node sees where its arcs end however few of the crowd it polls. 0: none.
    /// Default [`RING_PEERS`].
    pub ring_peers: usize,
}

/// The default bound on the peers a download polls: on a LAN of hundreds of nodes, polling
/// every peer every half second cost each node a request per peer per poll, N² across the
/// fleet. 64 is what the simulator's flash crowd of 1,000 nodes gives each node
/// (`peers_per_node`), where the crowd finishes within 0.93 of its bound.
pub const POLL_PEERS: usize = 64;

/// The default count of ring neighbours per point a download polls (see
/// [`P2pConfig::ring_peers`]): up to 8 peers more than [`POLL_PEERS`].
pub const RING_PEERS: usize = 2;

/// How often a download's polled set lets peers that offered nothing go: every 10 polls (5 s).
pub const POLL_ROTATION: u64 = 10;

/// The least origin fallback delay in Internet mode: a download asks the DHT who holds its
/// file, dials them (the node with the higher peer id waits 2 s for the other's dial) and asks
/// what they hold before the origin sends what they could.
pub const INTERNET_FALLBACK_DELAY: Duration = Duration::from_secs(5);

/// A transport peers are reached over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// TCP with noise and yamux.
    #[default]
    Tcp,
    /// QUIC (TLS 1.3 inside).
    Quic,
}

impl Transport {
    /// The transport an address is for.
    pub fn of(addr: &libp2p::Multiaddr) -> Self {
        if addr
            .iter()
            .any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1))
        {
            Self::Quic
        } else {
            Self::Tcp
        }
    }
}

/// Upload slots for a node with peers beyond the LAN (Group and Internet mode): more answers
/// at once share a site's thin uplink, and each then outlasts the peers' stall timeout (the
/// simulated sites in Group mode: 171 s and 1.23 origin copies with 4, 211 s and 1.38 with 8).
pub const UPLOAD_SLOTS: usize = 4;

/// Upload slots for a node whose peers are all on its LAN: there a server's answers are
/// limited by their receivers' downlinks (each shares its own among its 16 requests), and 4 at
/// once left most of an uplink idle (the simulated 200-node crowd: efficiency 0.86 with 4, 0.96
/// with 8).
pub const LAN_UPLOAD_SLOTS: usize = 8;

impl Default for P2pConfig {
    fn default() -> Self {
        Self {
            layer: do_p2p::Config::default(),
            listen: "/ip4/0.0.0.0/tcp/0".parse().expect("a valid multiaddr"),
            quic_listen: "/ip4/0.0.0.0/udp/0/quic-v1"
                .parse()
                .expect("a valid multiaddr"),
            dial_first: Transport::Tcp,
            upload_slots: UPLOAD_SLOTS,
            upload_max_rate: None,
            origin_fallback_delay: Duration::from_secs(1),
            internet: false,
            bootstrap: Vec::new(),
            data_lanes: true,
            data_lane_listen: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            poll_peers: POLL_PEERS,
            ring_peers: RING_PEERS,
        }
    }
}

impl Config {
    /// Defaults for everything but the cache directory.
    pub fn new(cache_dir: PathBuf) -> Self {
        Self {
            cache_dir,
            store: do_store::Config::default(),
            engine: do_engine::Config::default(),
            origin: do_origin::Config::default(),
            checkpoint_bytes: 16 << 20,
            checkpoint_interval: Duration::from_secs(1),
            background_yield_rate: 256 << 10,
            p2p: None,
        }
    }
}

/// A download to perform.
#[derive(Debug, Clone)]
pub struct Request {
    /// The origin URL.
    pub url: String,
    /// Where the finished file appears.
    pub output: PathBuf,
    /// Byte ranges, or `None` for the file.
    pub ranges: Option<Vec<ByteRange>>,
    /// Where range bytes go in the output.
    pub layout: Layout,
    /// The content id the finished bytes must hash to.
    pub content_id: Option<ContentId>,
    /// Replace an existing output file.
    pub overwrite: bool,
    /// Extra request headers for the origin.
    pub headers: Headers,
    /// Fail after this long without progress (`None`: the engine's default).
    pub no_progress_timeout: Option<Duration>,
    /// The URL this download used before (BITS' `SetRemoteName`): when the cache holds that
    /// URL's file and the new URL serves the same length and validators, the download
    /// continues from those blocks instead of starting over.
    pub previous_url: Option<String>,
    /// A foreground download takes bandwidth from background ones (DO's `ForegroundPriority`).
    pub foreground: bool,
}

/// What a download has done so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The engine's status.
    pub status: Status,
    /// Bytes received from the HTTP origin (DO's `BytesFromHttp`).
    pub bytes_from_http: u64,
    /// Verified bytes received from LAN peers (DO's `BytesFromLanPeers`).
    pub bytes_from_peers: u64,
    /// Verified bytes received from the members of the node's group (DO's
    /// `BytesFromGroupPeers`; Group mode only).
    pub bytes_from_group_peers: u64,
    /// Verified bytes received from peers beyond the LAN (DO's `BytesFromInternetPeers`;
    /// Internet mode only).
    pub bytes_from_internet_peers: u64,
    /// Requested bytes that were already verified in the local cache.
    pub bytes_from_cache: u64,
    /// The file's content id, once known.
    pub content_id: Option<ContentId>,
    /// The header block of the origin's last answer (`name: value\r\n` lines; BITS'
    /// `HTTP_RESPONSE_HEADERS`), once the origin answered.
    pub response_headers: Option<std::sync::Arc<str>>,
}

impl Progress {
    /// Counts `bytes` received from a peer of `class`.
    fn add_peer_bytes(&mut self, class: do_engine::PeerClass, bytes: u64) {
        let counter = match class {
            do_engine::PeerClass::Lan => &mut self.bytes_from_peers,
            do_engine::PeerClass::Group => &mut self.bytes_from_group_peers,
            do_engine::PeerClass::Internet => &mut self.bytes_from_internet_peers,
        };
        *counter += bytes;
    }

    /// True once the download can go no further without a command: transferred, finished,
    /// aborted, or paused by a fatal error.
    pub fn is_settled(&self) -> bool {
        matches!(
            self.status.state,
            State::Transferred | State::Finalized | State::Aborted
        ) || (self.status.state == State::Paused && self.status.error != 0)
    }
}

/// Node-wide p2p figures (DO's `Get-DeliveryOptimizationPerfSnap`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// This node's libp2p peer id, when the p2p side is on.
    pub peer_id: Option<String>,
    /// The group id in Group mode.
    pub group: Option<String>,
    /// The download mode when the p2p side is on: `lan`, `group` or `internet`.
    pub mode: Option<&'static str>,
    /// Connected peers: peer id, address, and class (`lan`, `group` or `internet`).
    pub peers: Vec<(String, String, &'static str)>,
    /// Bytes received from HTTP origins (`BytesFromHttp`).
    pub bytes_from_http: u64,
    /// Verified bytes received from LAN peers (`BytesFromLanPeers`).
    pub bytes_from_lan_peers: u64,
    /// Bytes served to LAN peers (`BytesToLanPeers`).
    pub bytes_to_lan_peers: u64,
    /// Verified bytes received from the group's members (`BytesFromGroupPeers`).
    pub bytes_from_group_peers: u64,
    /// Bytes served to the group's members (`BytesToGroupPeers`).
    pub bytes_to_group_peers: u64,
    /// Verified bytes received from peers beyond the LAN (`BytesFromInternetPeers`).
    pub bytes_from_internet_peers: u64,
    /// Bytes served to peers beyond the LAN (`BytesToInternetPeers`).
    pub bytes_to_internet_peers: u64,
    /// Peers banned for sending bytes that failed verification.
    pub peers_banned: u64,
    /// Data lanes this node opened to peers.
    pub data_lanes_opened: u64,
    /// Block bytes received over data lanes (before verification; what passed is counted in
    /// the `bytes_from_*` fields).
    pub data_lane_bytes_in: u64,
    /// Block bytes served over data lanes (counted in the `bytes_to_*` fields too).
    pub data_lane_bytes_out: u64,
}

/// A started download: its id and a live view of its progress.
pub struct Download {
    /// The engine's id.
    pub id: DownloadId,
    /// Updated on every status change.
    pub progress: watch::Receiver<Progress>,
}

impl Download {
    /// Waits until the download is settled (see [`Progress::is_settled`]) and returns its
    /// progress. Cancel-safe.
    pub async fn settled(&mut self) -> Result<Progress, Error> {
        let p = self
            .progress
            .wait_for(Progress::is_settled)
            .await
            .map_err(|_| Error::Stopped)?;
        Ok(p.clone())
    }
}

/// Why a driver call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cache could not be opened.
    #[error(transparent)]
    Store(#[from] do_store::Error),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Origin(#[from] do_origin::Error),
    /// The p2p layer could not start.
    #[error(transparent)]
    P2p(#[from] do_p2p::Error),
    /// The engine refused the command.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
}

/// Handle to a running node. Cheap to clone; the node stops when [`Node::shutdown`] is called.
#[derive(Clone)]
pub struct Node {
    tx: mpsc::Sender<actor::Command>,
}

impl Node {
    /// Opens the cache and spawns the node's actor on the current tokio runtime.
    pub fn start(config: Config) -> Result<(Self, tokio::task::JoinHandle<()>), Error> {
        let (tx, task) = actor::Actor::spawn(config)?;
        Ok((Self { tx }, task))
    }

    /// Creates and starts a download.
    pub async fn download(&self, request: Request) -> Result<Download, Error> {
        self.call(|reply| actor::Command::Download { request, reply })
            .await?
    }

    /// Pauses a download, keeping what it verified.
    pub async fn pause(&self, id: DownloadId) -> Result<(), Error> {
        self.call(|reply| actor::Command::Pause { id, reply })
            .await?
    }

    /// Resumes a paused download.
    pub async fn resume(&self, id: DownloadId) -> Result<(), Error> {
        self.call(|reply| actor::Command::Resume { id, reply })
            .await?
    }

    /// Starts a paused or transferred download again for these byte ranges (DO's `Start` with
    /// `DO_DOWNLOAD_RANGES_INFO`).
    pub async fn start_ranges(&self, id: DownloadId, ranges: Vec<ByteRange>) -> Result<(), Error> {
        self.call(|reply| actor::Command::StartRanges { id, ranges, reply })
            .await?
    }

    /// Changes a download's no-progress timeout.
    pub async fn set_no_progress_timeout(
        &self,
        id: DownloadId,
        timeout: Duration,
    ) -> Result<(), Error> {
        self.call(|reply| actor::Command::SetNoProgressTimeout { id, timeout, reply })
            .await?
    }

    /// Makes a download foreground or background (DO's `ForegroundPriority`, settable any time).
    pub async fn set_foreground(&self, id: DownloadId, foreground: bool) -> Result<(), Error> {
        self.call(|reply| actor::Command::SetForeground {
            id,
            foreground,
            reply,
        })
        .await?
    }

    /// Aborts a download.
    pub async fn abort(&self, id: DownloadId) -> Result<(), Error> {
        self.call(|reply| actor::Command::Abort { id, reply })
            .await?
    }

    /// Finalizes a transferred download and forgets it.
    pub async fn finalize(&self, id: DownloadId) -> Result<(), Error> {
        self.call(|reply| actor::Command::Finalize { id, reply })
            .await?
    }

    /// Node-wide p2p figures.
    pub async fn stats(&self) -> Result<NodeStats, Error> {
        self.call(|reply| actor::Command::Stats { reply }).await
    }

    /// Stops every task, recording the verified blocks they hold, and ends the actor.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.call(|reply| actor::Command::Shutdown { reply }).await
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> actor::Command,
    ) -> Result<T, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }
}
