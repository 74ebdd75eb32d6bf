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
    ops::Table,
    wire::{self, MAX_HEAD, Status},
};

/// Most connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// A connection idle this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest request body read (and ignored); the API uses none.
const MAX_BODY: usize = 64 * 1024;

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
    table: Arc<Table>,
}

impl Server {
    /// Binds the first free port of the range on 127.0.0.1, removes stale `restport*` files
    /// from the run dir and writes `restport.<pid>` (mode 0444) with the port.
    pub async fn bind(config: Config, node: Node) -> Result<Self, Error> {
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
            table: Arc::new(Table::new(node)),
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
            let table = Arc::clone(&self.table);
            let validate = Arc::clone(&self.config.validate_remote_addr);
            let stop = shutdown.clone();
            connections.spawn(async move {
                let _permit = permit;
                let validate = validate.load(Ordering::Relaxed);
                if let Err(e) = serve_connection(stream, peer, validate, &table, stop).await {
                    debug!(error = %e, %peer, "connection ended");
                }
            });
            while connections.try_join_next().is_some() {}
        }
        if let Err(e) = std::fs::remove_file(&self.port_file) {
            warn!(error = %e, "could not remove the port file");
        }
        while connections.join_next().await.is_some() {}
    }
}

/// Serves requests on one connection (keep-alive) until it closes, errs, idles or shutdown.
async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    validate_remote_addr: bool,
    table: &Table,
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
        buf.drain(..request.content_length);
        let (status, body) = if validate_remote_addr && !peer.ip().is_loopback() {
            (Status::BadRequest, wire::error_body(hresult::E_INVALIDARG))
        } else {
            table.handle(&request).await
        };
        stream.write_all(&wire::response(status, &body)).await?;
        if request.close {
            return Ok(());
        }
    }
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
