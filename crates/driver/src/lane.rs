//! Data lanes (see [`do_p2p::lane`]): block requests and their answers on a direct TCP
//! connection beside libp2p, sealed with AEGIS-128L (or AES-256-GCM). The server side accepts
//! lanes opened by tickets it issued over libp2p and answers their requests from the cache,
//! sharing the node's upload slots and rate cap with the libp2p path; the asker's side carries
//! the engine's block requests to one peer and hands each answer back to the actor, which
//! verifies it like any other peer answer.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use do_engine::PeerClass;
use do_p2p::{
    lane::{
        Cipher, Direction, HEADER_LEN, LaneAnswer, LaneError, LaneRequest, Opener, SECRET_LEN,
        Sealer, TICKET_LEN, frame_len,
    },
    wire::{Request, Response},
};
use do_store::Store;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Notify, Semaphore, mpsc},
    task::{JoinHandle, JoinSet},
};
use tracing::{debug, warn};

use crate::{
    p2p::{ActiveMap, Counters, Pending, answer},
    shaper::Shaper,
};

/// How long a ticket waits for its lane.
const TICKET_LIFETIME: Duration = Duration::from_secs(30);
/// How long a lane's connection and its ticket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A lane idle this long is closed ([`Dial::idle`]): a node that took a file from hundreds of
/// peers keeps no connection to each of them.
pub(crate) const LANE_IDLE: Duration = Duration::from_secs(60);
/// Answers a lane computes ahead of the one being sent.
const READ_AHEAD: usize = 1;
/// Block requests a lane holds before they are written (the engine keeps fewer than this in
/// flight to one peer; beyond it, requests go over libp2p).
pub(crate) const LANE_QUEUE: usize = 64;

/// A lane's secret and who it was issued to.
struct Ticket {
    secret: [u8; SECRET_LEN],
    cipher: Cipher,
    peer: libp2p::PeerId,
    class: PeerClass,
    issued: Instant,
}

/// Tickets issued and not yet used.
#[derive(Default)]
pub(crate) struct Tickets(Mutex<HashMap<[u8; TICKET_LEN], Ticket>>);

impl Tickets {
    /// Issues a ticket for `peer`'s secret, for a lane sealed with `cipher` (tickets older
    /// than their lifetime are dropped).
    pub(crate) fn issue(
        &self,
        secret: [u8; SECRET_LEN],
        cipher: Cipher,
        peer: libp2p::PeerId,
        class: PeerClass,
    ) -> [u8; TICKET_LEN] {
        let ticket: [u8; TICKET_LEN] = rand::random();
        let now = Instant::now();
        let mut map = self.0.lock().expect("tickets");
        map.retain(|_, t| now.duration_since(t.issued) < TICKET_LIFETIME);
        map.insert(
            ticket,
            Ticket {
                secret,
                cipher,
                peer,
                class,
                issued: now,
            },
        );
        ticket
    }

    /// Takes a ticket (once), if it is known and fresh.
    fn take(&self, ticket: &[u8; TICKET_LEN]) -> Option<Ticket> {
        let t = self.0.lock().expect("tickets").remove(ticket)?;
        (t.issued.elapsed() < TICKET_LIFETIME).then_some(t)
    }
}

/// Lane counters, node-wide.
#[derive(Debug, Default)]
pub(crate) struct LaneCounters {
    /// Lanes this node opened to peers.
    pub(crate) opened: AtomicU64,
    /// Block bytes received over lanes (before verification).
    pub(crate) bytes_in: AtomicU64,
    /// Block bytes served over lanes.
    pub(crate) bytes_out: AtomicU64,
}

/// What the server's tasks share with the actor.
pub(crate) struct Serving {
    pub(crate) store: Arc<Store>,
    pub(crate) active: ActiveMap,
    /// The node's upload slots (libp2p answers take them too).
    pub(crate) slots: Arc<Semaphore>,
    /// Told when a lane frees a slot, so that the actor serves its queue.
    pub(crate) slot_freed: Arc<Notify>,
    pub(crate) shaper: Option<Arc<Mutex<Shaper>>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) lanes: Arc<LaneCounters>,
    /// Peers this node banned: their lanes are served no more.
    pub(crate) banned: Arc<Mutex<HashSet<libp2p::PeerId>>>,
    pub(crate) tickets: Arc<Tickets>,
}

/// The lane server: its port, and the task accepting lanes (and serving them), stopped when
/// this is dropped.
pub(crate) struct Server {
    pub(crate) port: u16,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Listens on `addr` and serves the lanes that come with a ticket.
    pub(crate) fn start(addr: SocketAddr, serving: Serving) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let listener = TcpListener::from_std(listener)?;
        let serving = Arc::new(serving);
        let task = tokio::spawn(async move {
            // Dropped with the accepting task: every lane's task stops with it.
            let mut lanes = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, from)) => {
                            let serving = Arc::clone(&serving);
                            lanes.spawn(async move {
                                if let Err(e) = serve(&serving, stream).await {
                                    debug!(%from, error = %e, "data lane closed");
                                }
                            });
                        }
                        Err(e) => {
                            warn!(error = %e, "accepting a data lane failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                    Some(_) = lanes.join_next() => {}
                }
            }
        });
        Ok(Self { port, task })
    }
}

fn invalid(e: LaneError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

/// Reads one frame into a buffer of exactly its length (not zeroed first), opens it and
/// returns its plain bytes. `Ok(None)`: the peer closed the lane between frames.
async fn read_frame<R: AsyncRead + Unpin>(
    io: &mut R,
    opener: &mut Opener,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER_LEN];
    match io.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = frame_len(header).map_err(invalid)?;
    let mut frame = Vec::with_capacity(len);
    while frame.len() < len {
        if io.read_buf(&mut frame).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    let plain = opener.open(header, &mut frame).map_err(invalid)?;
    frame.truncate(plain);
    Ok(Some(frame))
}

/// Serves one lane: its ticket, then its requests in order, each answered from the cache
/// (verified blocks only, re-checked as they are read) once an upload slot is free.
async fn serve(serving: &Serving, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut ticket = [0u8; TICKET_LEN];
    tokio::time::timeout(CONNECT_TIMEOUT, stream.read_exact(&mut ticket))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let Some(t) = serving.tickets.take(&ticket) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "unknown or stale ticket",
        ));
    };
    let (peer, class) = (t.peer, t.class);
    debug!(%peer, "data lane opened by a peer");
    let mut opener = Opener::new(t.cipher, &t.secret, &ticket, Direction::ToServer);
    let mut sealer = Sealer::new(t.cipher, &t.secret, &ticket, Direction::ToAsker);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    let banned = |peer| serving.banned.lock().expect("banned").contains(&peer);
    let reader = async move {
        while let Some(plain) = read_frame(&mut rd, &mut opener).await? {
            let request = LaneRequest::decode(&plain).map_err(invalid)?;
            if banned(peer) {
                break;
            }
            let permit = Arc::clone(&serving.slots)
                .acquire_owned()
                .await
                .map_err(|_| std::io::Error::other("upload slots closed"))?;
            let (store, active) = (Arc::clone(&serving.store), Arc::clone(&serving.active));
            let job = tokio::task::spawn_blocking(move || {
                let request = Request::Blocks {
                    content: request.content,
                    first: request.first,
                    count: request.count,
                };
                answer(&store, &active, request, false)
            });
            if tx.send((job, permit)).await.is_err() {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let writer = async {
        while let Some((job, permit)) = rx.recv().await {
            let response = job.await.unwrap_or(Response::NotHere);
            let result = match response {
                Response::Blocks { first, mut data } => {
                    if let Some(shaper) = &serving.shaper {
                        let wait = shaper
                            .lock()
                            .expect("shaper")
                            .delay(Instant::now(), data.len() as u64);
                        tokio::time::sleep(wait).await;
                    }
                    let len = data.len() as u64;
                    let sent = send_blocks(&mut wr, &mut sealer, first, &mut data).await;
                    if sent.is_ok() {
                        serving
                            .counters
                            .served_to(class)
                            .fetch_add(len, Ordering::Relaxed);
                        serving.lanes.bytes_out.fetch_add(len, Ordering::Relaxed);
                    }
                    sent
                }
                _ => {
                    let frame = sealer
                        .seal_frame(&LaneAnswer::NotHere.encode())
                        .map_err(invalid)?;
                    wr.write_all(&frame).await
                }
            };
            drop(permit);
            serving.slot_freed.notify_one();
            result?;
        }
        Ok(())
    };
    tokio::try_join!(reader, writer).map(|_| ())
}

/// Sends a blocks answer: its header frame, then its data sealed in place (the bytes are
/// written from the buffer they were read into).
async fn send_blocks<W: AsyncWrite + Unpin>(
    wr: &mut W,
    sealer: &mut Sealer,
    first: u64,
    data: &mut [u8],
) -> std::io::Result<()> {
    let header = LaneAnswer::Blocks {
        first,
        len: data.len() as u32,
    };
    let mut head = sealer.seal_frame(&header.encode()).map_err(invalid)?;
    let (prefix, tag) = sealer.seal(data).map_err(invalid)?;
    head.extend_from_slice(&prefix);
    wr.write_all(&head).await?;
    wr.write_all(data).await?;
    wr.write_all(&tag).await
}

/// A block request for a lane to carry, with what the actor needs of its answer.
pub(crate) struct Job {
    pub(crate) request: LaneRequest,
    pub(crate) pending: Pending,
}

/// What a lane tells the actor.
pub(crate) enum LaneEvent {
    /// A request's answer (`NotHere` when the peer did not have the blocks).
    Answer {
        peer: libp2p::PeerId,
        pending: Pending,
        response: Response,
    },
    /// The lane is down (it could not connect, the peer closed it, or a frame failed; or,
    /// `idle`, it carried nothing for [`Dial::idle`] and was closed): the requests it had not
    /// answered, to be asked again.
    Down {
        peer: libp2p::PeerId,
        lane: u64,
        lost: Vec<Pending>,
        idle: bool,
    },
}

/// Where and how to open a lane: the peer's lane address, and the ticket it issued for
/// `secret` and `cipher`.
pub(crate) struct Dial {
    pub(crate) addr: SocketAddr,
    pub(crate) cipher: Cipher,
    pub(crate) secret: [u8; SECRET_LEN],
    pub(crate) ticket: [u8; TICKET_LEN],
    /// A lane given no request for this long while none is in flight is closed (its
    /// connection and tasks, and the peer's, are freed; a new lane is opened when blocks are
    /// asked of the peer again).
    pub(crate) idle: Duration,
}

/// How a lane ended without failing.
enum Closed {
    /// The actor dropped it.
    Dropped,
    /// Nothing to carry for [`Dial::idle`].
    Idle,
}

/// Opens a lane to `peer` as `dial` says, and carries the jobs sent on the returned channel
/// until the channel is dropped, the lane idles out or it fails.
pub(crate) fn open(
    peer: libp2p::PeerId,
    lane: u64,
    dial: Dial,
    events: mpsc::Sender<LaneEvent>,
    counters: Arc<LaneCounters>,
) -> (mpsc::Sender<Job>, JoinHandle<()>) {
    let (tx, mut jobs) = mpsc::channel::<Job>(LANE_QUEUE);
    let task = tokio::spawn(async move {
        // Sent and not yet answered, oldest first (answers come in order).
        let asked: Mutex<VecDeque<Pending>> = Mutex::default();
        let result = carry(peer, &dial, &mut jobs, &asked, &events, &counters).await;
        let idle = matches!(result, Ok(Closed::Idle));
        match &result {
            Err(e) => debug!(%peer, addr = %dial.addr, error = %e, "data lane down"),
            Ok(Closed::Idle) => debug!(%peer, addr = %dial.addr, "idle data lane closed"),
            Ok(Closed::Dropped) => {}
        }
        jobs.close();
        let mut lost: Vec<Pending> = asked.into_inner().expect("asked").into();
        while let Ok(job) = jobs.try_recv() {
            lost.push(job.pending);
        }
        let down = LaneEvent::Down {
            peer,
            lane,
            lost,
            idle,
        };
        let _ = events.send(down).await;
    });
    (tx, task)
}

async fn carry(
    peer: libp2p::PeerId,
    dial: &Dial,
    jobs: &mut mpsc::Receiver<Job>,
    asked: &Mutex<VecDeque<Pending>>,
    events: &mpsc::Sender<LaneEvent>,
    counters: &LaneCounters,
) -> std::io::Result<Closed> {
    let Dial {
        addr,
        cipher,
        ref secret,
        ref ticket,
        idle,
    } = *dial;
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    stream.set_nodelay(true)?;
    stream.write_all(ticket).await?;
    counters.opened.fetch_add(1, Ordering::Relaxed);
    debug!(%peer, %addr, "data lane up");
    let mut sealer = Sealer::new(cipher, secret, ticket, Direction::ToServer);
    let mut opener = Opener::new(cipher, secret, ticket, Direction::ToAsker);
    let (mut rd, mut wr) = stream.into_split();
    let writer = async {
        loop {
            let job = match tokio::time::timeout(idle, jobs.recv()).await {
                Ok(Some(job)) => job,
                // The actor dropped the lane.
                Ok(None) => return Ok::<_, std::io::Error>(Closed::Dropped),
                Err(_) if asked.lock().expect("asked").is_empty() => return Ok(Closed::Idle),
                // Answers are still to come (a slow peer: the engine's stall timeout decides).
                Err(_) => continue,
            };
            asked.lock().expect("asked").push_back(job.pending);
            let frame = sealer.seal_frame(&job.request.encode()).map_err(invalid)?;
            wr.write_all(&frame).await?;
        }
    };
    let reader = async {
        loop {
            let Some(head) = read_frame(&mut rd, &mut opener).await? else {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            };
            let response = match LaneAnswer::decode(&head).map_err(invalid)? {
                LaneAnswer::NotHere => Response::NotHere,
                LaneAnswer::Blocks { first, len } => {
                    let data = read_frame(&mut rd, &mut opener)
                        .await?
                        .ok_or(std::io::ErrorKind::UnexpectedEof)?;
                    if data.len() != len as usize {
                        return Err(invalid(LaneError::Malformed("data frame length")));
                    }
                    counters.bytes_in.fetch_add(len.into(), Ordering::Relaxed);
                    Response::Blocks { first, data }
                }
            };
            let Some(pending) = asked.lock().expect("asked").pop_front() else {
                return Err(invalid(LaneError::Malformed("an answer nobody asked for")));
            };
            let answer = LaneEvent::Answer {
                peer,
                pending,
                response,
            };
            if events.send(answer).await.is_err() {
                return Ok(Closed::Dropped);
            }
        }
    };
    tokio::select! {
        r = writer => r,
        r = reader => r,
    }
}

#[cfg(test)]
mod tests {
    use do_content::{BLOCK_SIZE, ContentId};
    use do_engine::{DownloadId, RequestId};

    use super::*;

    /// A lane server on loopback, answering from a store that holds `data` complete, with 2
    /// upload slots.
    struct Lab {
        data: Vec<u8>,
        content: ContentId,
        tickets: Arc<Tickets>,
        counters: Arc<Counters>,
        banned: Arc<Mutex<HashSet<libp2p::PeerId>>>,
        addr: SocketAddr,
        _server: Server,
        _dir: tempfile::TempDir,
    }

    impl Lab {
        fn new(len: u64) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let data = file(len);
            let store = Store::open(dir.path(), do_store::Config::default()).unwrap();
            let (_, content) = crate::p2p::tests::entry(&store, "http://o/f", &data, true);
            let tickets = Arc::new(Tickets::default());
            let counters = Arc::new(Counters::default());
            let banned = Arc::default();
            let serving = Serving {
                store: Arc::new(store),
                active: ActiveMap::default(),
                slots: Arc::new(Semaphore::new(2)),
                slot_freed: Arc::default(),
                shaper: None,
                counters: Arc::clone(&counters),
                lanes: Arc::default(),
                banned: Arc::clone(&banned),
                tickets: Arc::clone(&tickets),
            };
            let server = Server::start("127.0.0.1:0".parse().unwrap(), serving).unwrap();
            Self {
                data,
                content,
                tickets,
                counters,
                banned,
                addr: SocketAddr::from(([127, 0, 0, 1], server.port)),
                _server: server,
                _dir: dir,
            }
        }
    }

    fn blocks_job(content: ContentId, n: u64, first: u64, count: u32) -> Job {
        Job {
            request: LaneRequest {
                content: *content.as_bytes(),
                first,
                count,
            },
            pending: Pending::Blocks {
                request: RequestId(n),
                download: DownloadId(1),
                first,
                count: count.into(),
            },
        }
    }

    fn request_of(pending: &Pending) -> u64 {
        match pending {
            Pending::Blocks { request, .. } => request.0,
            _ => panic!("not a block request"),
        }
    }

    fn file(len: u64) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_lane_carries_block_requests_in_order_and_counts_what_it_served() {
        carries_in_order(Cipher::Aegis128L).await;
    }

    #[tokio::test]
    async fn a_lane_sealed_with_aes_gcm_for_older_peers_carries_the_same() {
        carries_in_order(Cipher::Aes256Gcm).await;
    }

    #[tokio::test]
    async fn a_lane_whose_two_ends_use_different_ciphers_goes_down_with_nothing_handed_over() {
        let Lab {
            content,
            tickets,
            addr,
            ..
        } = &Lab::new(8 * BLOCK_SIZE);
        let (content, addr) = (*content, *addr);
        let peer = libp2p::PeerId::random();
        let secret = [42u8; SECRET_LEN];
        let ticket = tickets.issue(secret, Cipher::Aes256Gcm, peer, PeerClass::Lan);
        let (events_tx, mut events) = mpsc::channel(16);
        let counters = Arc::new(LaneCounters::default());
        let (jobs, _task) = open(
            peer,
            3,
            dial(addr, Cipher::Aegis128L, secret, ticket),
            events_tx,
            counters,
        );
        jobs.try_send(blocks_job(content, 1, 0, 8)).ok().unwrap();
        match events.recv().await {
            Some(LaneEvent::Down { lane, lost, .. }) => {
                assert_eq!(lane, 3);
                assert_eq!(lost.iter().map(request_of).collect::<Vec<_>>(), [1]);
            }
            _ => panic!("the lane is down, its request lost"),
        }
    }

    #[tokio::test]
    async fn a_lane_with_nothing_to_carry_closes_as_idle_and_takes_no_more_requests() {
        let Lab {
            content,
            tickets,
            addr,
            ..
        } = &Lab::new(4 * BLOCK_SIZE);
        let (content, addr) = (*content, *addr);
        let peer = libp2p::PeerId::random();
        let secret = [42u8; SECRET_LEN];
        let ticket = tickets.issue(secret, Cipher::Aegis128L, peer, PeerClass::Lan);
        let (events_tx, mut events) = mpsc::channel(16);
        let idle = Duration::from_millis(300);
        let dial = Dial {
            idle,
            ..dial(addr, Cipher::Aegis128L, secret, ticket)
        };
        let started = Instant::now();
        let (jobs, task) = open(peer, 5, dial, events_tx, Arc::default());
        jobs.try_send(blocks_job(content, 1, 0, 4)).ok().unwrap();
        match events.recv().await {
            Some(LaneEvent::Answer { response, .. }) => {
                assert!(matches!(response, Response::Blocks { .. }), "{response:?}");
            }
            _ => panic!("an answer"),
        }
        match events.recv().await {
            Some(LaneEvent::Down {
                lane,
                lost,
                idle: true,
                ..
            }) => {
                assert_eq!(lane, 5);
                assert!(lost.is_empty());
            }
            _ => panic!("the lane closes as idle"),
        }
        assert!(started.elapsed() >= idle);
        task.await.unwrap();
        // The lane's channel is closed: the actor's next request goes to a new lane.
        assert!(jobs.try_send(blocks_job(content, 2, 0, 1)).is_err());
    }

    /// How the tests open lanes (idle lanes close after a minute, as in the node).
    fn dial(
        addr: SocketAddr,
        cipher: Cipher,
        secret: [u8; SECRET_LEN],
        ticket: [u8; TICKET_LEN],
    ) -> Dial {
        Dial {
            addr,
            cipher,
            secret,
            ticket,
            idle: LANE_IDLE,
        }
    }

    /// A lane sealed with `cipher` carries requests in order and counts what it served.
    async fn carries_in_order(cipher: Cipher) {
        let Lab {
            data,
            content,
            tickets,
            counters,
            addr,
            ..
        } = &Lab::new(70 * BLOCK_SIZE + 123);
        let (content, addr) = (*content, *addr);
        let peer = libp2p::PeerId::random();
        let secret = [42u8; SECRET_LEN];
        let ticket = tickets.issue(secret, cipher, peer, PeerClass::Lan);
        let (events_tx, mut events) = mpsc::channel(16);
        let lane_counters = Arc::new(LaneCounters::default());
        let (jobs, _task) = open(
            peer,
            7,
            dial(addr, cipher, secret, ticket),
            events_tx,
            Arc::clone(&lane_counters),
        );
        // The whole file in three requests (the last one past its end), then one for blocks
        // the server does not have.
        jobs.try_send(blocks_job(content, 1, 0, 64)).ok().unwrap();
        jobs.try_send(blocks_job(content, 2, 64, 6)).ok().unwrap();
        jobs.try_send(blocks_job(content, 3, 70, 64)).ok().unwrap();
        jobs.try_send(blocks_job(ContentId::from_bytes([9; 32]), 4, 0, 1))
            .ok()
            .unwrap();
        let mut got = Vec::new();
        for n in 1..=4u64 {
            let Some(LaneEvent::Answer {
                pending, response, ..
            }) = events.recv().await
            else {
                panic!("an answer");
            };
            assert_eq!(request_of(&pending), n, "answers come in order");
            match response {
                Response::Blocks { first, data } => {
                    assert_eq!(first * BLOCK_SIZE, got.len() as u64);
                    got.extend_from_slice(&data);
                }
                Response::NotHere => assert_eq!(n, 4),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(&got, data);
        assert_eq!(
            counters.bytes_to_lan_peers.load(Ordering::Relaxed),
            data.len() as u64
        );
        assert_eq!(lane_counters.opened.load(Ordering::Relaxed), 1);
        assert_eq!(
            lane_counters.bytes_in.load(Ordering::Relaxed),
            data.len() as u64
        );
        // A ticket opens one lane: a second connection with it is refused, and its requests
        // come back as lost.
        let (events_tx, mut events) = mpsc::channel(16);
        let (jobs, _task) = open(
            peer,
            8,
            dial(addr, cipher, secret, ticket),
            events_tx,
            lane_counters,
        );
        jobs.try_send(blocks_job(content, 5, 0, 1)).ok().unwrap();
        match events.recv().await {
            Some(LaneEvent::Down { lane, lost, .. }) => {
                assert_eq!(lane, 8);
                assert_eq!(lost.iter().map(request_of).collect::<Vec<_>>(), [5]);
            }
            _ => panic!("the reused ticket's lane is down"),
        }
    }

    #[tokio::test]
    async fn a_byte_changed_on_the_wire_brings_the_lane_down_and_is_never_handed_over() {
        let Lab {
            content,
            tickets,
            addr,
            ..
        } = &Lab::new(8 * BLOCK_SIZE);
        let content = *content;
        // A proxy between the two that flips one bit deep in the server's data.
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let upstream = *addr;
        tokio::spawn(async move {
            let (mut client, _) = proxy.accept().await.unwrap();
            let mut server = TcpStream::connect(upstream).await.unwrap();
            let (mut cr, mut cw) = client.split();
            let (mut sr, mut sw) = server.split();
            let up = tokio::io::copy(&mut cr, &mut sw);
            let down = async {
                let mut seen = 0usize;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = sr.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                    let flip = 100_000usize;
                    if (seen..seen + n).contains(&flip) {
                        buf[flip - seen] ^= 0x10;
                    }
                    seen += n;
                    cw.write_all(&buf[..n]).await?;
                }
            };
            let _ = tokio::join!(up, down);
        });
        let peer = libp2p::PeerId::random();
        let secret = [1u8; SECRET_LEN];
        let ticket = tickets.issue(secret, Cipher::Aegis128L, peer, PeerClass::Lan);
        let (events_tx, mut events) = mpsc::channel(16);
        let (jobs, _task) = open(
            peer,
            1,
            dial(proxy_addr, Cipher::Aegis128L, secret, ticket),
            events_tx,
            Arc::default(),
        );
        jobs.try_send(blocks_job(content, 1, 0, 8)).ok().unwrap();
        match events.recv().await {
            Some(LaneEvent::Down { lost, .. }) => {
                assert_eq!(lost.iter().map(request_of).collect::<Vec<_>>(), [1]);
            }
            Some(LaneEvent::Answer { .. }) => panic!("a changed frame was handed over"),
            None => panic!("no event"),
        }
    }

    #[tokio::test]
    async fn a_banned_peer_is_served_no_more_and_an_unknown_ticket_opens_nothing() {
        let Lab {
            content,
            tickets,
            counters,
            banned,
            addr,
            ..
        } = &Lab::new(2 * BLOCK_SIZE);
        let (content, addr) = (*content, *addr);
        let peer = libp2p::PeerId::random();
        let secret = [5u8; SECRET_LEN];

        // A ticket the server never issued.
        let (events_tx, mut events) = mpsc::channel(16);
        let (jobs, _t) = open(
            peer,
            1,
            dial(addr, Cipher::Aegis128L, secret, [0; TICKET_LEN]),
            events_tx,
            Arc::default(),
        );
        jobs.try_send(blocks_job(content, 1, 0, 1)).ok().unwrap();
        assert!(matches!(events.recv().await, Some(LaneEvent::Down { .. })));

        // A lane whose peer is banned after it opened.
        let ticket = tickets.issue(secret, Cipher::Aegis128L, peer, PeerClass::Lan);
        let (events_tx, mut events) = mpsc::channel(16);
        let (jobs, _t) = open(
            peer,
            2,
            dial(addr, Cipher::Aegis128L, secret, ticket),
            events_tx,
            Arc::default(),
        );
        jobs.try_send(blocks_job(content, 2, 0, 1)).ok().unwrap();
        assert!(matches!(
            events.recv().await,
            Some(LaneEvent::Answer {
                response: Response::Blocks { .. },
                ..
            })
        ));
        banned.lock().unwrap().insert(peer);
        jobs.try_send(blocks_job(content, 3, 1, 1)).ok().unwrap();
        match events.recv().await {
            Some(LaneEvent::Down { lost, .. }) => {
                assert_eq!(lost.iter().map(request_of).collect::<Vec<_>>(), [3]);
            }
            _ => panic!("the banned peer's lane is closed"),
        }
        assert_eq!(
            counters.bytes_to_lan_peers.load(Ordering::Relaxed),
            BLOCK_SIZE
        );
    }
}
