//! The actor that owns the engine, the cache and every task.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Instant,
};

use do_content::{BlockHash, BlockIndex, ContentId, Manifest, RangeSet, block_count};
use do_engine::{
    Action, DownloadId, Engine, Event, Failure, FileInfo, Input, PeerClass, RequestId, Spec,
};
use do_origin::{Client, Validators};
use do_store::{EntryId, EntryMeta, Pin, Store};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use crate::{
    Config, Download, Error, Progress, Request,
    fetch::{self, FetchTask},
    p2p::{Ctx, Join, Outcome, P2p, P2pEvent, UncheckedWrite},
};

/// DO_E_FILE_SIZE_UNKNOWN_HTTP_200: the origin did not say how long the file is.
const DO_E_FILE_SIZE_UNKNOWN: u32 = 0x80D0_201A;
/// DO_E_INTEGRITYCHECKINFO_UNAVAILABLE: a content id was given but the block hashes needed to
/// check it are not available (only some ranges of the file were fetched).
const DO_E_INTEGRITYCHECKINFO_UNAVAILABLE: u32 = 0x80D0_2017;
/// How long shutdown waits for tasks to wind down before aborting them.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// DO_E_FATAL_CORE_ERROR.
const DO_E_FATAL_CORE_ERROR: u32 = 0x80D0_6802;

/// API calls to the actor.
pub(crate) enum Command {
    Download {
        request: Request,
        reply: oneshot::Sender<Result<Download, Error>>,
    },
    Pause {
        id: DownloadId,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Resume {
        id: DownloadId,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    StartRanges {
        id: DownloadId,
        ranges: Vec<do_content::ByteRange>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    SetNoProgressTimeout {
        id: DownloadId,
        timeout: std::time::Duration,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    SetForeground {
        id: DownloadId,
        foreground: bool,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Abort {
        id: DownloadId,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Finalize {
        id: DownloadId,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Stats {
        reply: oneshot::Sender<crate::NodeStats>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Outcomes reported by tasks.
pub(crate) enum IoEvent {
    Stat {
        request: RequestId,
        id: DownloadId,
        result: Result<Box<Found>, Failure>,
    },
    Block {
        request: RequestId,
        block: BlockIndex,
        bytes: u64,
    },
    /// A block from a peer, verified against the trusted manifest, written and recorded.
    PeerBlock {
        request: RequestId,
        block: BlockIndex,
        bytes: u64,
        class: PeerClass,
    },
    /// A peer's answer, before the download's manifest was trusted: the bytes of consecutive
    /// blocks from byte `offset`, each block with its size and the hash of its bytes; not
    /// written yet (the actor writes them if the request is still live).
    PeerBlocksUnchecked {
        request: RequestId,
        download: DownloadId,
        offset: u64,
        data: Vec<u8>,
        blocks: Vec<(u64, u64, BlockHash)>,
        class: PeerClass,
    },
    /// A block from a peer failed verification; its bytes were dropped.
    PeerCorrupt {
        request: RequestId,
        block: BlockIndex,
    },
    FetchEnded {
        request: RequestId,
        result: Result<(), Failure>,
    },
    Assembled {
        request: RequestId,
        result: Result<Option<ContentId>, Failure>,
    },
}

/// What a stat task found: the origin's answer and the cache entry for this version.
pub(crate) struct Found {
    entry: EntryId,
    pin: Pin,
    validators: Validators,
    info: FileInfo,
    headers: Arc<str>,
}

struct Job {
    request: Request,
    entry: Option<(EntryId, Pin)>,
    validators: Validators,
    len: u64,
    progress: watch::Sender<Progress>,
    /// The group's members were asked for the content id (once per download).
    claims_asked: bool,
}

pub(crate) struct Actor {
    engine: Engine,
    store: Arc<Store>,
    origin: Client,
    config: Config,
    jobs: HashMap<DownloadId, Job>,
    requests: HashMap<RequestId, DownloadId>,
    cancels: HashMap<RequestId, CancellationToken>,
    tasks: JoinSet<()>,
    io_tx: mpsc::Sender<IoEvent>,
    next_id: u64,
    /// Serialises cache entry resolution in stat tasks (see [`stat`]).
    resolving: Arc<Mutex<()>>,
    /// True while some foreground download transfers; background fetches then yield.
    foreground_active: watch::Sender<bool>,
    /// The p2p side, when enabled.
    p2p: Option<P2p>,
    /// Bytes received from origins since the node started.
    bytes_from_http: u64,
}

impl Actor {
    pub(crate) fn spawn(
        config: Config,
    ) -> Result<(mpsc::Sender<Command>, tokio::task::JoinHandle<()>), Error> {
        let mut config = config;
        let store = Arc::new(Store::open(&config.cache_dir, config.store.clone())?);
        let origin = Client::new(config.origin.clone())?;
        let p2p = match &config.p2p {
            Some(p2p_config) => {
                let mut p2p = P2p::start(p2p_config, &config.cache_dir)?;
                p2p.announce_cached(&store);
                p2p.serve_lanes(&store);
                config.engine.node_key = p2p.key();
                // Internet mode: long enough to ask the DHT and dial the holders it names.
                let internet = if p2p_config.internet {
                    crate::INTERNET_FALLBACK_DELAY
                } else {
                    std::time::Duration::ZERO
                };
                config.engine.origin_fallback_delay = config
                    .engine
                    .origin_fallback_delay
                    .max(p2p_config.origin_fallback_delay)
                    .max(internet);
                Some(p2p)
            }
            None => None,
        };
        let seed = seed_from_clock();
        let (tx, rx) = mpsc::channel(64);
        let (io_tx, io_rx) = mpsc::channel(1024);
        let actor = Self {
            engine: Engine::new(config.engine.clone(), seed),
            store,
            origin,
            config,
            jobs: HashMap::new(),
            requests: HashMap::new(),
            cancels: HashMap::new(),
            tasks: JoinSet::new(),
            io_tx,
            next_id: 1,
            resolving: Arc::default(),
            foreground_active: watch::Sender::new(false),
            p2p,
            bytes_from_http: 0,
        };
        let task = tokio::spawn(actor.run(rx, io_rx).instrument(info_span!("node")));
        Ok((tx, task))
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>, mut io_rx: mpsc::Receiver<IoEvent>) {
        loop {
            let timer = self.engine.poll_timeout();
            tokio::select! {
                command = rx.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        self.stop().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    None => {
                        self.stop().await;
                        return;
                    }
                },
                Some(event) = io_rx.recv() => self.on_io(event),
                () = sleep_until(timer) => self.engine.handle_timeout(Instant::now()),
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                event = next_p2p(&mut self.p2p), if self.p2p.is_some() => {
                    let outcome = match &mut self.p2p {
                        Some(p2p) => {
                            let mut ctx = Ctx {
                                now: Instant::now(),
                                engine: &mut self.engine,
                                store: &self.store,
                                tasks: &mut self.tasks,
                                io_tx: &self.io_tx,
                            };
                            p2p.handle(event, &mut ctx)
                        }
                        None => None,
                    };
                    if let Some(outcome) = outcome {
                        self.on_p2p_outcome(outcome);
                    }
                }
            }
            self.drain();
        }
    }

    fn on_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Download { request, reply } => {
                let _ = reply.send(self.create(now, request));
            }
            Command::Pause { id, reply } => {
                let r = self
                    .engine
                    .handle_command(now, do_engine::Command::Pause { id });
                let _ = reply.send(r.map_err(Error::from));
            }
            Command::Resume { id, reply } => {
                let ranges = self.jobs.get(&id).and_then(|j| j.request.ranges.clone());
                let r = self
                    .engine
                    .handle_command(now, do_engine::Command::Start { id, ranges });
                let _ = reply.send(r.map_err(Error::from));
            }
            Command::StartRanges { id, ranges, reply } => {
                let r = self.engine.handle_command(
                    now,
                    do_engine::Command::Start {
                        id,
                        ranges: Some(ranges),
                    },
                );
                let _ = reply.send(r.map_err(Error::from));
            }
            Command::SetNoProgressTimeout { id, timeout, reply } => {
                let r = self.engine.handle_command(
                    now,
                    do_engine::Command::SetNoProgressTimeout { id, timeout },
                );
                let _ = reply.send(r.map_err(Error::from));
            }
            Command::SetForeground {
                id,
                foreground,
                reply,
            } => {
                let r = match self.jobs.get_mut(&id) {
                    Some(job) => {
                        job.request.foreground = foreground;
                        Ok(())
                    }
                    None => Err(Error::Command(do_engine::CommandError::UnknownDownload(id))),
                };
                self.update_foreground();
                let _ = reply.send(r);
            }
            Command::Abort { id, reply } => {
                let r = self
                    .engine
                    .handle_command(now, do_engine::Command::Abort { id });
                let _ = reply.send(r.map_err(Error::from));
            }
            Command::Finalize { id, reply } => {
                let r = self
                    .engine
                    .handle_command(now, do_engine::Command::Finalize { id });
                let _ = reply.send(r.map_err(Error::from));
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Command::Shutdown { .. } => unreachable!("handled in run"),
        }
    }

    fn create(&mut self, now: Instant, request: Request) -> Result<Download, Error> {
        let id = DownloadId(self.next_id);
        self.next_id += 1;
        let spec = Spec {
            url: request.url.clone(),
            content_id: request.content_id,
            no_progress_timeout: request.no_progress_timeout,
        };
        self.engine
            .handle_command(now, do_engine::Command::Create { id, spec })?;
        let status = self.engine.status(id).expect("just created");
        let (progress, rx) = watch::channel(Progress {
            status,
            bytes_from_http: 0,
            bytes_from_peers: 0,
            bytes_from_group_peers: 0,
            bytes_from_internet_peers: 0,
            bytes_from_cache: 0,
            content_id: None,
            response_headers: None,
        });
        let ranges = request.ranges.clone();
        self.jobs.insert(
            id,
            Job {
                request,
                entry: None,
                validators: Validators::default(),
                len: 0,
                progress,
                claims_asked: false,
            },
        );
        if let Err(e) = self
            .engine
            .handle_command(now, do_engine::Command::Start { id, ranges })
        {
            self.jobs.remove(&id);
            return Err(e.into());
        }
        Ok(Download { id, progress: rx })
    }

    fn on_io(&mut self, event: IoEvent) {
        let now = Instant::now();
        // An unreachable origin (not one that refused) can be stood in for by peers.
        if let IoEvent::Stat {
            request,
            id,
            result: Err(failure @ Failure::Transient(_)),
        } = &event
            && self.stat_from_peers(*id, *request, *failure)
        {
            return;
        }
        // In Group mode, a download without a content id asks the group's members for one.
        let event = match event {
            IoEvent::Stat {
                request,
                id,
                result: Ok(found),
            } if found.info.content_id.is_none() => {
                match self.claim_from_members(id, request, found) {
                    Some(found) => IoEvent::Stat {
                        request,
                        id,
                        result: Ok(found),
                    },
                    None => return,
                }
            }
            event => event,
        };
        let input = match event {
            IoEvent::Stat {
                request,
                id,
                result,
            } => {
                let result = result.map(|found| {
                    let Found {
                        entry,
                        pin,
                        validators,
                        info,
                        headers,
                    } = *found;
                    if let Some(job) = self.jobs.get_mut(&id) {
                        job.entry = Some((entry, pin));
                        job.validators = validators;
                        job.len = info.len;
                        job.progress
                            .send_modify(|p| p.response_headers = Some(headers));
                    }
                    info
                });
                Input::Stat { request, result }
            }
            IoEvent::Block {
                request,
                block,
                bytes,
            } => {
                if let Some(job) = self.requests.get(&request).and_then(|id| self.jobs.get(id)) {
                    job.progress.send_modify(|p| p.bytes_from_http += bytes);
                }
                self.bytes_from_http += bytes;
                Input::Block { request, block }
            }
            IoEvent::PeerBlock {
                request,
                block,
                bytes,
                class,
            } => {
                if let Some(job) = self.requests.get(&request).and_then(|id| self.jobs.get(id)) {
                    job.progress.send_modify(|p| p.add_peer_bytes(class, bytes));
                }
                Input::Block { request, block }
            }
            IoEvent::PeerBlocksUnchecked {
                request,
                download,
                offset,
                data,
                blocks,
                class,
            } => {
                // Only for a live request: the engine then holds none of these blocks and
                // fetches them from nowhere else, so the write cannot land on verified bytes.
                if !self.requests.contains_key(&request) {
                    return;
                }
                let (Some(p2p), Some(job)) = (&mut self.p2p, self.jobs.get(&download)) else {
                    return;
                };
                let write =
                    p2p.write_unchecked(&self.store, download, offset, &data, &blocks, class);
                let unchecked = matches!(write, UncheckedWrite::Unchecked);
                let (kept, corrupt): (Vec<(u64, u64)>, _) = match write {
                    // The write failed: the blocks stay owed and are fetched again when the
                    // request ends.
                    UncheckedWrite::Failed => return,
                    UncheckedWrite::Unchecked => {
                        (blocks.iter().map(|&(b, n, _)| (b, n)).collect(), None)
                    }
                    UncheckedWrite::Checked { good, corrupt } => (good, corrupt),
                };
                let bytes: u64 = kept.iter().map(|&(_, n)| n).sum();
                job.progress.send_modify(|p| p.add_peer_bytes(class, bytes));
                for (block, _) in kept {
                    let block = BlockIndex(block);
                    let input = if unchecked {
                        Input::BlockUnchecked { request, block }
                    } else {
                        Input::Block { request, block }
                    };
                    self.engine.handle_input(now, input);
                }
                if let Some(block) = corrupt {
                    self.engine
                        .handle_input(now, Input::BlockCorrupt { request, block });
                }
                return;
            }
            IoEvent::PeerCorrupt { request, block } => Input::BlockCorrupt { request, block },
            IoEvent::FetchEnded { request, result } => {
                self.forget_request(request);
                Input::FetchEnded { request, result }
            }
            IoEvent::Assembled { request, result } => {
                self.forget_request(request);
                Input::Assembled { request, result }
            }
        };
        let joined = match &input {
            Input::Stat { request, .. } => self.requests.get(request).copied(),
            _ => None,
        };
        self.engine.handle_input(now, input);
        if let Some(id) = joined {
            self.join_swarm(id);
        }
    }

    /// A download's stat found no content id: in Group mode the members are asked for theirs
    /// (once) and the stat waits for their answers. `found` comes back when nobody was asked.
    fn claim_from_members(
        &mut self,
        id: DownloadId,
        request: RequestId,
        found: Box<Found>,
    ) -> Option<Box<Found>> {
        let (Some(p2p), Some(job)) = (&mut self.p2p, self.jobs.get_mut(&id)) else {
            return Some(found);
        };
        if job.request.content_id.is_some() || job.claims_asked {
            return Some(found);
        }
        job.claims_asked = true;
        let (len, validators) = (found.info.len, found.validators.clone());
        p2p.claim(id, request, (&job.request.url, len, &validators), found)
            .err()
    }

    /// The origin failed a download's stat: when the caller gave the content id, peers that
    /// hold the file can stand in for the origin. True when peers were asked.
    fn stat_from_peers(&mut self, id: DownloadId, request: RequestId, failure: Failure) -> bool {
        let Some(p2p) = &mut self.p2p else {
            return false;
        };
        let Some(job) = self.jobs.get(&id) else {
            return false;
        };
        match (job.request.content_id, &job.request.ranges) {
            (Some(content), None) => p2p.stat_from_peers(id, request, content, failure),
            _ => false,
        }
    }

    /// Finishes what the p2p side started.
    fn on_p2p_outcome(&mut self, outcome: Outcome) {
        let now = Instant::now();
        match outcome {
            Outcome::Claimed {
                download,
                request,
                mut found,
                content,
            } => {
                found.info.content_id = content;
                self.on_io(IoEvent::Stat {
                    request,
                    id: download,
                    result: Ok(found),
                });
            }
            Outcome::NoPeerStat { request, failure } => {
                self.engine.handle_input(
                    now,
                    Input::Stat {
                        request,
                        result: Err(failure),
                    },
                );
            }
            Outcome::PeerStat {
                download,
                request,
                manifest,
            } => {
                let Some(job) = self.jobs.get_mut(&download) else {
                    return;
                };
                let found = {
                    let _resolving = self.resolving.lock().expect("entry resolution lock");
                    peer_entry(&self.store, &job.request.url, &manifest)
                };
                let result = match found {
                    Ok((entry, cached)) => {
                        job.entry = Some((entry, self.store.pin(entry)));
                        job.validators = Validators::default();
                        job.len = manifest.len();
                        Ok(FileInfo {
                            len: manifest.len(),
                            accepts_ranges: true,
                            cached,
                            content_id: None,
                        })
                    }
                    Err(e) => Err(Failure::Fatal(e.hresult())),
                };
                let ok = result.is_ok();
                self.engine
                    .handle_input(now, Input::Stat { request, result });
                if ok {
                    self.join_swarm_with(download, Some(manifest));
                }
            }
        }
    }

    /// Once a download knows its file's length, cache entry and content id, it exchanges the
    /// file with peers.
    fn join_swarm(&mut self, id: DownloadId) {
        self.join_swarm_with(id, None);
    }

    fn join_swarm_with(&mut self, id: DownloadId, manifest: Option<Arc<Manifest>>) {
        let Some(p2p) = &mut self.p2p else { return };
        let (Some(job), Some(content)) = (self.jobs.get(&id), self.engine.content_id(id)) else {
            return;
        };
        let Some((entry, _)) = job.entry else { return };
        if p2p.is_swarming(id) {
            return;
        }
        let join = Join {
            content,
            entry,
            len: job.len,
            fetching: job.request.ranges.is_none(),
            manifest,
        };
        let mut ctx = Ctx {
            now: Instant::now(),
            engine: &mut self.engine,
            store: &self.store,
            tasks: &mut self.tasks,
            io_tx: &self.io_tx,
        };
        p2p.join(&mut ctx, id, join);
    }

    /// Node-wide counters.
    fn stats(&self) -> crate::NodeStats {
        let mut stats = crate::NodeStats {
            bytes_from_http: self.bytes_from_http,
            ..crate::NodeStats::default()
        };
        if let Some(p2p) = &self.p2p {
            let c = &p2p.counters;
            stats.peer_id = Some(p2p.peer_id());
            stats.group = p2p.group().map(str::to_owned);
            stats.peers = p2p.peer_list();
            stats.bytes_from_lan_peers = c.bytes_from_lan_peers.load(Ordering::Relaxed);
            stats.bytes_to_lan_peers = c.bytes_to_lan_peers.load(Ordering::Relaxed);
            stats.bytes_from_group_peers = c.bytes_from_group_peers.load(Ordering::Relaxed);
            stats.bytes_to_group_peers = c.bytes_to_group_peers.load(Ordering::Relaxed);
            stats.bytes_from_internet_peers = c.bytes_from_internet_peers.load(Ordering::Relaxed);
            stats.bytes_to_internet_peers = c.bytes_to_internet_peers.load(Ordering::Relaxed);
            stats.mode = Some(p2p.mode());
            stats.peers_banned = c.peers_banned.load(Ordering::Relaxed);
            let lanes = &p2p.lane_counters;
            stats.data_lanes_opened = lanes.opened.load(Ordering::Relaxed);
            stats.data_lane_bytes_in = lanes.bytes_in.load(Ordering::Relaxed);
            stats.data_lane_bytes_out = lanes.bytes_out.load(Ordering::Relaxed);
        }
        stats
    }

    /// Carries out the engine's actions and publishes its events.
    fn drain(&mut self) {
        while let Some(action) = self.engine.poll_action() {
            self.perform(action);
        }
        while let Some(event) = self.engine.poll_event() {
            let (id, status) = match event {
                Event::Status { id, status } => (id, status),
                Event::PeerBanned { peer } => {
                    if let Some(p2p) = &mut self.p2p {
                        p2p.ban(peer);
                    }
                    continue;
                }
            };
            if matches!(
                status.state,
                do_engine::State::Transferred
                    | do_engine::State::Finalized
                    | do_engine::State::Aborted
            ) && let Some(p2p) = &mut self.p2p
            {
                p2p.leave(id);
            }
            let content_id = self.engine.content_id(id);
            let Some(job) = self.jobs.get(&id) else {
                continue;
            };
            job.progress.send_modify(|p| {
                if p.status.state == do_engine::State::Transferring
                    && p.status.bytes_transferred == 0
                    && p.bytes_from_http == 0
                {
                    // Bytes already in place before any fetch came from the cache.
                    p.bytes_from_cache = status.bytes_transferred;
                }
                p.status = status;
                p.content_id = content_id;
            });
            if matches!(
                status.state,
                do_engine::State::Finalized | do_engine::State::Aborted
            ) {
                self.engine.remove(id);
                self.jobs.remove(&id);
            }
        }
        self.update_foreground();
    }

    /// Recomputes whether a foreground download is transferring.
    fn update_foreground(&self) {
        let active = self.jobs.values().any(|job| {
            job.request.foreground
                && job.progress.borrow().status.state == do_engine::State::Transferring
        });
        self.foreground_active
            .send_if_modified(|a| std::mem::replace(a, active) != active);
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::Stat { request, id, url } => {
                let Some(job) = self.jobs.get(&id) else {
                    return;
                };
                self.requests.insert(request, id);
                let (origin, store, io_tx) = (
                    self.origin.clone(),
                    Arc::clone(&self.store),
                    self.io_tx.clone(),
                );
                let headers = job.request.headers.clone();
                let previous = job.request.previous_url.clone();
                let entries = Arc::clone(&self.resolving);
                // Peers can help only against a trusted content id: without the caller's,
                // look for the one the origin publishes.
                let published = self.p2p.is_some() && job.request.content_id.is_none();
                self.tasks.spawn(
                    async move {
                        let urls = Urls {
                            url: &url,
                            previous: previous.as_deref(),
                        };
                        let mut result = stat(&origin, &store, &entries, urls, &headers).await;
                        if let (true, Ok(found)) = (published, &mut result) {
                            found.info.content_id =
                                published_content_id(&origin, &url, &headers).await;
                        }
                        let _ = io_tx
                            .send(IoEvent::Stat {
                                request,
                                id,
                                result,
                            })
                            .await;
                    }
                    .instrument(info_span!("stat", download = id.0)),
                );
            }
            Action::Fetch {
                request,
                id,
                range,
                whole,
            } => {
                let Some(job) = self.jobs.get(&id) else {
                    return;
                };
                let Some((entry, _)) = &job.entry else {
                    warn!(download = id.0, "fetch without a cache entry");
                    return;
                };
                let writer = match self.store.writer(*entry) {
                    Ok(w) => w,
                    Err(e) => {
                        let failure = Failure::Fatal(e.hresult());
                        let _ = self.io_tx.try_send(IoEvent::FetchEnded {
                            request,
                            result: Err(failure),
                        });
                        return;
                    }
                };
                let cancel = CancellationToken::new();
                self.cancels.insert(request, cancel.clone());
                self.requests.insert(request, id);
                let task = FetchTask {
                    request,
                    origin: self.origin.clone(),
                    url: job.request.url.clone(),
                    headers: job.request.headers.clone(),
                    range,
                    whole,
                    if_range: job.validators.clone(),
                    file_len: job.len,
                    writer,
                    store: Arc::clone(&self.store),
                    entry: *entry,
                    io_tx: self.io_tx.clone(),
                    cancel,
                    checkpoint_bytes: self.config.checkpoint_bytes,
                    checkpoint_interval: self.config.checkpoint_interval,
                    // Foreground fetches never yield; background ones watch for foreground work.
                    yield_to: (!job.request.foreground).then(|| {
                        (
                            self.foreground_active.subscribe(),
                            self.config.background_yield_rate,
                        )
                    }),
                };
                self.tasks.spawn(
                    fetch::run(task).instrument(info_span!("fetch", download = id.0, %range)),
                );
            }
            Action::RequestBlocks {
                request,
                id,
                peer,
                blocks,
            } => {
                self.requests.insert(request, id);
                match &mut self.p2p {
                    Some(p2p) => {
                        let mut ctx = Ctx {
                            now: Instant::now(),
                            engine: &mut self.engine,
                            store: &self.store,
                            tasks: &mut self.tasks,
                            io_tx: &self.io_tx,
                        };
                        p2p.request_blocks(&mut ctx, request, id, peer, blocks);
                    }
                    None => {
                        warn!(peer = peer.0, "peer request without a peer layer");
                        let result = Err(Failure::Transient(DO_E_FATAL_CORE_ERROR));
                        let _ = self.io_tx.try_send(IoEvent::FetchEnded { request, result });
                    }
                }
            }
            Action::Cancel { request } => {
                if let Some(cancel) = self.cancels.remove(&request) {
                    cancel.cancel();
                }
                self.requests.remove(&request);
            }
            Action::Assemble {
                request,
                id,
                ranges,
                content_id,
            } => {
                let Some(job) = self.jobs.get(&id) else {
                    return;
                };
                let Some((entry, _)) = &job.entry else { return };
                self.requests.insert(request, id);
                let (store, io_tx, entry, len) =
                    (Arc::clone(&self.store), self.io_tx.clone(), *entry, job.len);
                let (output, overwrite, layout) = (
                    job.request.output.clone(),
                    job.request.overwrite,
                    job.request.layout,
                );
                self.tasks.spawn(async move {
                    let result = tokio::task::spawn_blocking(move || {
                        let place = Placement {
                            output: &output,
                            layout,
                            overwrite,
                        };
                        assemble(&store, entry, len, ranges.as_deref(), content_id, &place)
                    })
                    .await
                    .unwrap_or(Err(Failure::Fatal(DO_E_FATAL_CORE_ERROR)));
                    let _ = io_tx.send(IoEvent::Assembled { request, result }).await;
                });
            }
            Action::Restart { id } => {
                let Some(job) = self.jobs.get_mut(&id) else {
                    return;
                };
                if let Some((entry, pin)) = job.entry.take() {
                    drop(pin);
                    let store = Arc::clone(&self.store);
                    self.tasks.spawn_blocking(move || {
                        if let Err(e) = store.delete(entry) {
                            warn!(error = %e, "could not delete the outdated cache entry");
                        }
                    });
                }
                job.progress.send_modify(|p| p.bytes_from_cache = 0);
            }
        }
    }

    fn forget_request(&mut self, request: RequestId) {
        self.cancels.remove(&request);
        self.requests.remove(&request);
    }

    /// Cancels every task (fetches record their finished blocks first) and waits for them;
    /// tasks still waiting on the network after a grace period (a stat in a slow handshake)
    /// are aborted, which loses nothing: they hold no verified bytes.
    async fn stop(&mut self) {
        for cancel in self.cancels.values() {
            cancel.cancel();
        }
        let drained = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
            warn!("aborting tasks still running after the shutdown grace period");
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}

/// A download's URL and the one it had before, if any.
struct Urls<'a> {
    url: &'a str,
    previous: Option<&'a str>,
}

/// Longest published digest file read.
const PUBLISHED_MAX: usize = 4096;

/// The content id the origin publishes beside the file: `URL.b3`, in `b3sum` format (the
/// hex digest first). `None` when there is none or it does not parse.
async fn published_content_id(
    origin: &Client,
    url: &str,
    headers: &do_origin::Headers,
) -> Option<ContentId> {
    let digest_url = format!("{url}.b3");
    let mut body = origin.get(&digest_url, headers, None, None).await.ok()?;
    let mut text = Vec::new();
    while let Ok(Some(chunk)) = body.chunk().await {
        text.extend_from_slice(&chunk);
        if text.len() > PUBLISHED_MAX {
            return None;
        }
    }
    let text = std::str::from_utf8(&text).ok()?;
    let id = text.split_whitespace().next()?.parse().ok();
    tracing::debug!(url = %digest_url, ?id, "published content id");
    id
}

/// Asks the origin about the file and finds or creates the cache entry for that version.
async fn stat(
    origin: &Client,
    store: &Arc<Store>,
    entries: &Arc<Mutex<()>>,
    urls: Urls<'_>,
    headers: &do_origin::Headers,
) -> Result<Box<Found>, Failure> {
    let stat = origin
        .stat(urls.url, headers)
        .await
        .map_err(fetch::failure)?;
    let len = stat.len.ok_or(Failure::Fatal(DO_E_FILE_SIZE_UNKNOWN))?;
    let (store, entries) = (Arc::clone(store), Arc::clone(entries));
    let url = urls.url.to_owned();
    let previous = urls.previous.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        // Finding (or replacing) an entry and pinning it is one step: otherwise a concurrent
        // download of the same URL could delete the entry between the two.
        let _resolving = entries.lock().expect("entry resolution lock");
        let v = &stat.validators;
        if let Some(previous) = &previous {
            adopt_previous(&store, &url, previous, len, v)
                .map_err(|e| Failure::Fatal(e.hresult()))?;
        }
        let (entry, cached) =
            find_entry(&store, &url, len, v).map_err(|e| Failure::Fatal(e.hresult()))?;
        let pin = store.pin(entry);
        Ok(Box::new(Found {
            entry,
            pin,
            headers: stat.response_headers.clone().into(),
            validators: stat.validators.clone(),
            info: FileInfo {
                len,
                accepts_ranges: stat.accepts_ranges,
                cached,
                content_id: None,
            },
        }))
    })
    .await
    .unwrap_or(Err(Failure::Fatal(DO_E_FATAL_CORE_ERROR)))
}

/// A download moved from `previous` to `url` (BITS' `SetRemoteName`): when the cache holds
/// `previous`'s file and `url` serves the same length and validators, the entry now answers for
/// `url` too, so the download continues from its blocks.
fn adopt_previous(
    store: &Store,
    url: &str,
    previous: &str,
    len: u64,
    v: &Validators,
) -> Result<(), do_store::Error> {
    if store.lookup_url(url)?.is_some() {
        return Ok(());
    }
    if let Some((id, meta)) = store.lookup_url(previous)?
        && meta.same_version(len, v.etag.as_deref(), v.last_modified.as_deref())
    {
        store.rebind_url(id, url)?;
    }
    Ok(())
}

/// The cache entry for this exact version of `url`, with its verified blocks re-checked; a new
/// entry when there is none, or when the old one failed its re-check (its bytes may have been
/// changed through a hard-linked output, so it is never written into again).
fn find_entry(
    store: &Store,
    url: &str,
    len: u64,
    v: &Validators,
) -> Result<(EntryId, RangeSet), do_store::Error> {
    if let Some((id, meta)) = store.lookup_url(url)? {
        if meta.same_version(len, v.etag.as_deref(), v.last_modified.as_deref()) {
            let recheck = store.recheck(id)?;
            if recheck.forgotten == 0 {
                store.touch(id)?;
                return Ok((id, recheck.good));
            }
            warn!(
                entry = id.0,
                blocks = recheck.forgotten,
                "cached bytes changed on disk; fetching afresh"
            );
        }
        // Superseded: drop it unless another download still uses it.
        if !store.is_pinned(id) {
            store.delete(id)?;
        }
    }
    store.evict(len)?;
    let meta = EntryMeta::new(url, len, v.etag.clone(), v.last_modified.clone());
    let id = store.create_entry(meta)?;
    store.writer(id)?.set_len(len)?;
    Ok((id, RangeSet::new()))
}

/// The cache entry for `url` when its file comes from peers (the origin is unreachable): the
/// existing one when its length and every recorded block hash agree with the trusted
/// manifest (a download resumed), else a new one.
fn peer_entry(
    store: &Store,
    url: &str,
    manifest: &Manifest,
) -> Result<(EntryId, RangeSet), do_store::Error> {
    if let Some((id, meta)) = store.lookup_url(url)? {
        let agrees = meta.len == manifest.len()
            && store
                .blocks(id)?
                .iter()
                .all(|(b, h)| manifest.blocks().get(b.0 as usize) == Some(h));
        if agrees {
            let recheck = store.recheck(id)?;
            store.touch(id)?;
            return Ok((id, recheck.good));
        }
        if !store.is_pinned(id) {
            store.delete(id)?;
        }
    }
    store.evict(manifest.len())?;
    let id = store.create_entry(EntryMeta::new(url, manifest.len(), None, None))?;
    store.writer(id)?.set_len(manifest.len())?;
    Ok((id, RangeSet::new()))
}

/// Where and how an assembled download appears.
struct Placement<'a> {
    output: &'a std::path::Path,
    layout: do_store::Layout,
    overwrite: bool,
}

/// Checks the root and makes the output visible.
fn assemble(
    store: &Store,
    entry: EntryId,
    len: u64,
    ranges: Option<&[do_content::ByteRange]>,
    content_id: Option<ContentId>,
    place: &Placement<'_>,
) -> Result<Option<ContentId>, Failure> {
    let fatal = |e: do_store::Error| Failure::Fatal(e.hresult());
    let blocks = store.blocks(entry).map_err(fatal)?;
    let manifest = if blocks.len() as u64 == block_count(len) || len == 0 {
        let hashes = if len == 0 {
            Manifest::from_bytes(&[]).blocks().to_vec()
        } else {
            blocks.into_iter().map(|(_, h)| h).collect()
        };
        Some(Manifest::new(len, hashes).map_err(|_| Failure::Fatal(DO_E_FATAL_CORE_ERROR))?)
    } else {
        None
    };
    let root = manifest.as_ref().map(Manifest::root);
    match (content_id, root) {
        (Some(expected), Some(root)) if expected != root => {
            warn!(%expected, actual = %root, "content id mismatch");
            return Err(Failure::Integrity);
        }
        (Some(_), None) => return Err(Failure::Fatal(DO_E_INTEGRITYCHECKINFO_UNAVAILABLE)),
        _ => {}
    }
    if let Some(manifest) = &manifest {
        store.finish(entry, manifest).map_err(fatal)?;
    }
    store
        .export(entry, place.output, ranges, place.layout, place.overwrite)
        .map_err(fatal)?;
    Ok(root)
}

/// The next p2p event (only polled when the p2p side is on).
async fn next_p2p(p2p: &mut Option<P2p>) -> P2pEvent {
    match p2p {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// The engine's seed: only retry jitter depends on it, so the clock is good enough here.
fn seed_from_clock() -> [u8; 32] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(&nanos.to_le_bytes());
    seed[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    seed
}
