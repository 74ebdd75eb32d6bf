//! The loopback listener, the port file and the connection loop.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use do_driver::Node;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    Config, hresult,
    jobs::Jobs,
    manager::Manager,
    ops,
    v1::{self, Events, Reply},
    wire::{self, MAX_HEAD, Status},
};

/// Most connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// A connection idle this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest request body read.
const MAX_BODY: usize = 64 * 1024;
/// How often jobs look at their files' downloads.
const JOB_TICK: Duration = Duration::from_millis(100);
/// How often an event stream looks whether its download has started.
const START_POLL: Duration = Duration::from_millis(50);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No port of the range could be bound.
    #[error("no free port in {0:?} on 127.0.0.1")]
    NoFreePort(std::ops::RangeInclusive<u16>),
    /// The run dir or the port file could not be written.
    #[error("{}: {source}", path.display())]
    PortFile {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// A running agent listener.
pub struct Server {
    listener: TcpListener,
    port_file: PathBuf,
    config: Config,
    services: Arc<Services>,
}

/// The node's download mode as `DOSwarmStats` numbers it (0 HTTP only, 1 LAN, 2 Group,
/// 3 Internet); the mode is fixed for the node's lifetime.
async fn download_mode(node: &Node) -> u32 {
    match node.stats().await.ok().and_then(|s| s.mode) {
        Some("lan") => 1,
        Some("group") => 2,
        Some("internet") => 3,
        _ => 0,
    }
}

/// Everything the two API surfaces serve from.
struct Services {
    manager: Manager,
    jobs: Jobs,
}

impl Server {
    /// Restores the non-volatile downloads, binds the first free port of the range on
    /// 127.0.0.1, removes stale `restport*` files from the run dir and writes
    /// `restport.<pid>` (mode 0444) with the port.
    pub async fn bind(config: Config, node: Node) -> Result<Self, Error> {
        let db = config.state_path.as_deref().and_then(crate::state::open);
        let services = Arc::new(Services {
            manager: Manager::new(node.clone(), db.clone()),
            jobs: Jobs::new(node.clone(), db, download_mode(&node).await),
        });
        services.manager.restore().await;
        services.jobs.restore().await;
        let mut listener = None;
        for port in config.ports.clone() {
            if let Ok(l) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
                listener = Some(l);
                break;
            }
        }
        let listener = listener.ok_or_else(|| Error::NoFreePort(config.ports.clone()))?;
        let port = listener
            .local_addr()
            .map_err(|e| port_file_error(&config.run_dir, e))?
            .port();
        let port_file = write_port_file(&config.run_dir, port)?;
        info!(port, file = %port_file.display(), "agent REST API listening");
        Ok(Self {
            listener,
            port_file,
            config,
            services,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` fires, then removes the port file and waits for open
    /// connections to finish their current request.
    pub async fn run(self, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut connections = JoinSet::new();
        let ticker = {
            let (services, stop) = (Arc::clone(&self.services), shutdown.clone());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(JOB_TICK);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = every.tick() => services.jobs.tick().await,
                    }
                }
            })
        };
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                p = Arc::clone(&slots).acquire_owned() => p.expect("semaphore never closed"),
            };
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                a = self.listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    continue;
                }
            };
            let services = Arc::clone(&self.services);
            let validate = Arc::clone(&self.config.validate_remote_addr);
            let stop = shutdown.clone();
            connections.spawn(async move {
                let _permit = permit;
                let validate = validate.load(Ordering::Relaxed);
                if let Err(e) = serve_connection(stream, peer, validate, &services, stop).await {
                    debug!(error = %e, %peer, "connection ended");
                }
            });
            while connections.try_join_next().is_some() {}
        }
        if let Err(e) = std::fs::remove_file(&self.port_file) {
            warn!(error = %e, "could not remove the port file");
        }
        while connections.join_next().await.is_some() {}
        let _ = ticker.await;
    }
}

/// Serves requests on one connection (keep-alive) until it closes, errs, idles or shutdown.
async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    validate_remote_addr: bool,
    services: &Services,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(2048);
    loop {
        let head_len = loop {
            if let Some(n) = wire::head_len(&buf) {
                break n;
            }
            if buf.len() > MAX_HEAD {
                let body = wire::error_body(hresult::E_INVALIDARG);
                stream
                    .write_all(&wire::response(Status::BadRequest, &body))
                    .await?;
                return Ok(());
            }
            let mut chunk = [0u8; 2048];
            let n = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                r = tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut chunk)) => r.map_err(|_| io::ErrorKind::TimedOut)??,
            };
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let parsed = wire::parse_head(&buf[..head_len]);
        buf.drain(..head_len);
        let request = match parsed {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "bad request");
                let body = wire::error_body(hresult::E_INVALIDARG);
                stream
                    .write_all(&wire::response(Status::BadRequest, &body))
                    .await?;
                return Ok(());
            }
        };
        if request.content_length > MAX_BODY {
            let body = wire::error_body(hresult::E_INVALIDARG);
            stream
                .write_all(&wire::response(Status::BadRequest, &body))
                .await?;
            return Ok(());
        }
        while buf.len() < request.content_length {
            let mut chunk = [0u8; 2048];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = buf.drain(..request.content_length).collect();
        let reply = if validate_remote_addr && !peer.ip().is_loopback() {
            Reply::Full(Status::BadRequest, wire::error_body(hresult::E_INVALIDARG))
        } else {
            route(services, &request, &body).await
        };
        match reply {
            Reply::Full(status, body) => {
                stream.write_all(&wire::response(status, &body)).await?;
                if request.close {
                    return Ok(());
                }
            }
            Reply::Events(events) => {
                return stream_events(stream, &services.manager, events, shutdown).await;
            }
            Reply::JobEvents(events, first) => {
                return stream_job_events(stream, events, first, shutdown).await;
            }
        }
    }
}

/// Sends a request to its surface: `/download/<op>` (the agent's) or `/v1/...`.
async fn route(services: &Services, request: &wire::Request, body: &[u8]) -> Reply {
    match request.segments.split_first() {
        Some((first, [op])) if first == "download" => {
            let (status, body) = ops::handle(&services.manager, op, request).await;
            Reply::Full(status, body)
        }
        Some((first, rest)) if first == "v1" => {
            v1::handle(&services.manager, &services.jobs, rest, request, body).await
        }
        _ => Reply::Full(Status::BadRequest, wire::error_body(hresult::E_UNSUPPORTED)),
    }
}

/// Writes a Server-Sent Events stream of `DO_DOWNLOAD_STATUS` records: one at once, then one
/// on every change of state or error, and progress at most every `every` (or whenever it
/// moved `percent` percent). Ends when the download goes away or the client leaves.
async fn stream_events(
    mut stream: TcpStream,
    manager: &Manager,
    events: Events,
    shutdown: CancellationToken,
) -> io::Result<()> {
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n")
        .await?;
    let mut last = events.first;
    send_event(&mut stream, &last).await?;
    let mut rx = loop {
        match manager.progress(&events.id) {
            Ok(Some(rx)) => break rx,
            Ok(None) => {}
            Err(_) => return Ok(()),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(START_POLL) => {}
        }
    };
    // The node's first status may already be past the one sent above.
    rx.mark_changed();
    let mut last_sent = tokio::time::Instant::now();
    let mut pending = false;
    loop {
        let deadline = last_sent + events.every;
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            changed = rx.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let now = v1::do_status(&rx.borrow_and_update());
                let moved = now.bytes_transferred.saturating_sub(last.bytes_transferred);
                let percent_due = events.percent > 0
                    && now.bytes_total > 0
                    && moved.saturating_mul(100) >= events.percent.saturating_mul(now.bytes_total);
                let changed_state = (now.state, now.error, now.extended_error) != (last.state, last.error, last.extended_error);
                if changed_state || percent_due || tokio::time::Instant::now() >= deadline {
                    send_event(&mut stream, &now).await?;
                    last = now;
                    last_sent = tokio::time::Instant::now();
                    pending = false;
                } else if now != last {
                    pending = true;
                }
            }
            () = tokio::time::sleep_until(deadline), if pending => {
                let now = v1::do_status(&rx.borrow());
                send_event(&mut stream, &now).await?;
                last = now;
                last_sent = tokio::time::Instant::now();
                pending = false;
            }
        }
    }
}

/// Writes a job's notifications as Server-Sent Events (`event: JobTransferred` and so on,
/// `data:` the job or file JSON), starting with a `JobModification` carrying the job as it
/// is. Ends when the job is completed or cancelled, or when the client leaves.
async fn stream_job_events(
    mut stream: TcpStream,
    mut events: tokio::sync::broadcast::Receiver<(&'static str, String)>,
    first: serde_json::Value,
    shutdown: CancellationToken,
) -> io::Result<()> {
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n")
        .await?;
    stream
        .write_all(format!("event: JobModification\ndata: {first}\n\n").as_bytes())
        .await?;
    loop {
        let (kind, data) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            e = events.recv() => match e {
                Ok(e) => e,
                // A slow reader missed some: it re-reads the job, as BITS clients do.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            },
        };
        if kind == crate::jobs::END_OF_EVENTS {
            return Ok(());
        }
        stream
            .write_all(format!("event: {kind}\ndata: {data}\n\n").as_bytes())
            .await?;
    }
}

async fn send_event(stream: &mut TcpStream, status: &do_api::Status) -> io::Result<()> {
    let json = serde_json::to_string(status).expect("status serialises");
    stream
        .write_all(format!("event: status\ndata: {json}\n\n").as_bytes())
        .await
}

fn write_port_file(run_dir: &std::path::Path, port: u16) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(run_dir).map_err(|e| port_file_error(run_dir, e))?;
    let entries = std::fs::read_dir(run_dir).map_err(|e| port_file_error(run_dir, e))?;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().contains("restport") {
            debug!(file = %entry.path().display(), "removing a stale port file");
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let path = run_dir.join(format!("restport.{}", std::process::id()));
    std::fs::write(&path, format!("{port}\n")).map_err(|e| port_file_error(&path, e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444))
        .map_err(|e| port_file_error(&path, e))?;
    Ok(path)
}

fn port_file_error(path: &std::path::Path, source: io::Error) -> Error {
    Error::PortFile {
        path: path.to_path_buf(),
        source,
    }
}
