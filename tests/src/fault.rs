//! A tiny threaded HTTP/1.1 server serving one in-memory body, with faults
//! nginx cannot produce.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

/// The default ETag of a [`FaultServer`] body (sent verbatim, quotes
/// included).
pub const DEFAULT_ETAG: &str = "\"v1\"";

/// Fault injected by a [`FaultServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Behave correctly.
    None,
    /// Send the headers (with the full `Content-Length`), then only `n` body
    /// bytes, then close normally (FIN).
    TruncateAfter(u64),
    /// Send `n` body bytes, then close with `SO_LINGER` 0 so the peer sees a
    /// RST.
    ResetAfter(u64),
    /// Answer the first `count` requests (HEAD or GET, counted from when this
    /// fault was set) with `status` and an empty body, then behave normally.
    FailFirst {
        /// How many requests fail.
        count: u32,
        /// The status they get (e.g. 503).
        status: u16,
    },
    /// Ignore `Range`: always `200` with the full body and no
    /// `Accept-Ranges` header.
    IgnoreRange,
    /// Send `n` body bytes, then keep the connection open and silent until
    /// the peer closes it or the server is dropped.
    StallAfter(u64),
}

#[derive(Debug)]
struct Content {
    body: Arc<Vec<u8>>,
    etag: String,
    fault: Fault,
    /// Remaining failures for [`Fault::FailFirst`].
    fail_left: u32,
}

#[derive(Debug)]
struct Shared {
    content: Mutex<Content>,
    requests: AtomicU64,
    body_bytes_sent: AtomicU64,
    shutdown: AtomicBool,
    /// Clones of open connections, shut down on drop to release them.
    conns: Mutex<HashMap<u64, TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cloneable handle to change a running [`FaultServer`] from any thread.
#[derive(Debug, Clone)]
pub struct FaultHandle {
    shared: Arc<Shared>,
}

impl FaultHandle {
    /// Replaces the fault; applies to requests arriving afterwards.
    /// ([`Fault::FailFirst`] counts from now.)
    pub fn set_fault(&self, fault: Fault) {
        let mut c = lock(&self.shared.content);
        c.fail_left = match fault {
            Fault::FailFirst { count, .. } => count,
            _ => 0,
        };
        c.fault = fault;
    }

    /// The current fault.
    pub fn fault(&self) -> Fault {
        lock(&self.shared.content).fault.clone()
    }

    /// Replaces the body and its ETag (sent verbatim, so include the quotes,
    /// e.g. `"\"v2\""`); applies to requests arriving afterwards.
    pub fn set_body(&self, body: Vec<u8>, etag: &str) {
        let mut c = lock(&self.shared.content);
        c.body = Arc::new(body);
        c.etag = etag.to_owned();
    }

    /// The current ETag.
    pub fn etag(&self) -> String {
        lock(&self.shared.content).etag.clone()
    }

    /// Number of requests received (parsed request heads, failed ones
    /// included).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Number of response body bytes handed to sockets (counted just before
    /// each write, so never behind what a client has received).
    pub fn body_bytes_sent(&self) -> u64 {
        self.shared.body_bytes_sent.load(Ordering::SeqCst)
    }
}

/// A threaded HTTP/1.1 server on `127.0.0.1:<free port>` serving one
/// in-memory body at any path, with injectable [`Fault`]s.
///
/// Supports GET and HEAD, `Range: bytes=a-b` / `bytes=a-` / `bytes=-n`
/// (`206` + `Content-Range`; unsatisfiable → `416`), `ETag`,
/// `Accept-Ranges: bytes` and `If-Range` (a mismatch with the current ETag
/// yields `200` with the full body). Every response carries
/// `Connection: close`.
///
/// Dropping it stops the accept loop, shuts down all open (including
/// stalled) connections and joins every thread.
#[derive(Debug)]
pub struct FaultServer {
    handle: FaultHandle,
    addr: SocketAddr,
    accept_thread: Option<JoinHandle<()>>,
}

impl FaultServer {
    /// Starts serving `body` (ETag [`DEFAULT_ETAG`]) without faults.
    pub fn start(body: Vec<u8>) -> anyhow::Result<Self> {
        Self::start_with(body, Fault::None)
    }

    /// Starts serving `body` (ETag [`DEFAULT_ETAG`]) with `fault`.
    pub fn start_with(body: Vec<u8>, fault: Fault) -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding fault server")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            content: Mutex::new(Content {
                body: Arc::new(body),
                etag: DEFAULT_ETAG.to_owned(),
                fault: Fault::None,
                fail_left: 0,
            }),
            requests: AtomicU64::new(0),
            body_bytes_sent: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
        });
        let handle = FaultHandle { shared };
        handle.set_fault(fault);
        let accept_shared = Arc::clone(&handle.shared);
        let accept_thread = std::thread::Builder::new()
            .name(format!("fault-accept-{}", addr.port()))
            .spawn(move || accept_loop(&listener, &accept_shared))
            .context("spawning accept thread")?;
        Ok(Self {
            handle,
            addr,
            accept_thread: Some(accept_thread),
        })
    }

    /// A handle for changing the server from other threads.
    pub fn handle(&self) -> FaultHandle {
        self.handle.clone()
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The listening address (127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/file.bin`.
    pub fn url(&self) -> String {
        self.url_path("/file.bin")
    }

    /// `http://127.0.0.1:PORT{path}` (any path serves the same body).
    pub fn url_path(&self, path: &str) -> String {
        let slash = if path.starts_with('/') { "" } else { "/" };
        format!("http://127.0.0.1:{}{slash}{path}", self.addr.port())
    }

    /// See [`FaultHandle::set_fault`].
    pub fn set_fault(&self, fault: Fault) {
        self.handle.set_fault(fault);
    }

    /// See [`FaultHandle::set_body`].
    pub fn set_body(&self, body: Vec<u8>, etag: &str) {
        self.handle.set_body(body, etag);
    }

    /// The current ETag.
    pub fn etag(&self) -> String {
        self.handle.etag()
    }

    /// See [`FaultHandle::requests`].
    pub fn requests(&self) -> u64 {
        self.handle.requests()
    }

    /// See [`FaultHandle::body_bytes_sent`].
    pub fn body_bytes_sent(&self) -> u64 {
        self.handle.body_bytes_sent()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        let shared = &self.handle.shared;
        shared.shutdown.store(true, Ordering::SeqCst);
        // Wake the blocking accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
        // All connection threads are registered now; release them.
        for conn in lock(&shared.conns).values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        let threads = std::mem::take(&mut *lock(&shared.threads));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut next_id = 0u64;
    for stream in listener.incoming() {
        if shared.shutdown.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else {
            // Transient accept errors (e.g. EMFILE): back off briefly.
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let id = next_id;
        next_id += 1;
        if let Ok(clone) = stream.try_clone() {
            lock(&shared.conns).insert(id, clone);
        }
        let conn_shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name(format!("fault-conn-{id}"))
            .spawn(move || {
                let _ = serve(stream, &conn_shared);
                lock(&conn_shared.conns).remove(&id);
            });
        let mut threads = lock(&shared.threads);
        threads.retain(|t| !t.is_finished());
        match spawned {
            Ok(t) => threads.push(t),
            Err(_) => {
                lock(&shared.conns).remove(&id);
            }
        }
    }
}

/// A parsed request head.
struct Request {
    method: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(stream: &mut TcpStream) -> io::Result<Option<Request>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return Ok(None);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let Some(method) = request_line.split(' ').next().filter(|m| !m.is_empty()) else {
        return Ok(None);
    };
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Some(Request {
        method: method.to_owned(),
        headers,
    }))
}

/// Parses a single-range `bytes=` spec against `len`.
///
/// `None`: no usable range (absent, malformed or multi-range → full body).
/// `Some(Err(()))`: unsatisfiable. `Some(Ok((start, end)))`: inclusive range.
fn parse_range(spec: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = spec.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix range: last n bytes.
        let n: u64 = b.parse().ok()?;
        if n == 0 || len == 0 {
            return Some(Err(()));
        }
        return Some(Ok((len.saturating_sub(n), len - 1)));
    }
    let start: u64 = a.parse().ok()?;
    let end: u64 = if b.is_empty() {
        u64::MAX
    } else {
        b.parse().ok()?
    };
    if end < start {
        return None;
    }
    if start >= len {
        return Some(Err(()));
    }
    Some(Ok((start, end.min(len - 1))))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// How the connection ends after the body part was written.
enum Ending {
    Normal,
    Reset,
    Stall,
}

fn serve(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let Some(req) = read_request(&mut stream)? else {
        return Ok(());
    };
    shared.requests.fetch_add(1, Ordering::SeqCst);

    let (body, etag, fault, fail) = {
        let mut c = lock(&shared.content);
        let fail = match c.fault {
            Fault::FailFirst { status, .. } if c.fail_left > 0 => {
                c.fail_left -= 1;
                Some(status)
            }
            _ => None,
        };
        (Arc::clone(&c.body), c.etag.clone(), c.fault.clone(), fail)
    };

    let is_head = req.method.eq_ignore_ascii_case("HEAD");
    if let Some(status) = fail {
        write_simple(&mut stream, status, &etag)?;
        return finish(stream);
    }
    if !is_head && !req.method.eq_ignore_ascii_case("GET") {
        write_simple(&mut stream, 405, &etag)?;
        return finish(stream);
    }

    let len = body.len() as u64;
    let ignore_range = fault == Fault::IgnoreRange;
    let range = if ignore_range {
        None
    } else {
        let if_range_ok = req.header("if-range").is_none_or(|v| v == etag);
        req.header("range")
            .filter(|_| if_range_ok)
            .and_then(|r| parse_range(r, len))
    };

    let mut head = String::new();
    let (start, end_excl) = match range {
        Some(Err(())) => {
            head.push_str(&format!(
                "HTTP/1.1 416 {}\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\n",
                reason(416)
            ));
            (0, 0)
        }
        Some(Ok((a, b))) => {
            head.push_str(&format!(
                "HTTP/1.1 206 {}\r\nContent-Range: bytes {a}-{b}/{len}\r\nContent-Length: {}\r\n",
                reason(206),
                b - a + 1
            ));
            (a, b + 1)
        }
        None => {
            head.push_str(&format!(
                "HTTP/1.1 200 {}\r\nContent-Length: {len}\r\n",
                reason(200)
            ));
            (0, len)
        }
    };
    head.push_str(&format!(
        "Content-Type: application/octet-stream\r\nETag: {etag}\r\nConnection: close\r\n"
    ));
    if !ignore_range {
        head.push_str("Accept-Ranges: bytes\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;

    if is_head {
        return finish(stream);
    }
    let full = end_excl - start;
    let (send, ending) = match fault {
        Fault::TruncateAfter(n) => (full.min(n), Ending::Normal),
        Fault::ResetAfter(n) => (full.min(n), Ending::Reset),
        Fault::StallAfter(n) => (full.min(n), Ending::Stall),
        _ => (full, Ending::Normal),
    };
    let from = usize::try_from(start).expect("offset fits usize");
    let to = usize::try_from(start + send).expect("offset fits usize");
    write_counted(&mut stream, &body[from..to], &shared.body_bytes_sent)?;
    stream.flush()?;

    match ending {
        Ending::Normal => finish(stream),
        Ending::Reset => {
            // Give the bytes a moment to reach the peer's receive queue, then
            // abort the connection.
            std::thread::sleep(Duration::from_millis(20));
            set_linger_zero(&stream);
            drop(stream);
            Ok(())
        }
        Ending::Stall => {
            stall(&mut stream, shared);
            Ok(())
        }
    }
}

/// Writes `data`, counting bytes in `counter` *before* they are handed to
/// the kernel (so a client that has received them never sees a stale count);
/// bytes that fail to be written are subtracted again.
fn write_counted(stream: &mut TcpStream, data: &[u8], counter: &AtomicU64) -> io::Result<()> {
    for chunk in data.chunks(64 * 1024) {
        counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        let mut rest = chunk;
        while !rest.is_empty() {
            match stream.write(rest) {
                Ok(0) => {
                    counter.fetch_sub(rest.len() as u64, Ordering::SeqCst);
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    counter.fetch_sub(rest.len() as u64, Ordering::SeqCst);
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

fn write_simple(stream: &mut TcpStream, status: u16, etag: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: 0\r\nETag: {etag}\r\nConnection: close\r\n\r\n",
        reason(status)
    );
    stream.write_all(head.as_bytes())
}

/// Closes the connection normally: FIN, then wait (briefly) for the peer to
/// close so unread request bytes do not turn our close into a RST.
fn finish(mut stream: TcpStream) -> io::Result<()> {
    stream.flush()?;
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut sink = [0u8; 4096];
    while let Ok(n) = stream.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
    Ok(())
}

/// Keeps the connection open and silent until the peer closes it or the
/// server shuts down (which shuts this socket down, ending the read).
fn stall(stream: &mut TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut sink = [0u8; 4096];
    while !shared.shutdown.load(Ordering::SeqCst) {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt(2) on a valid socket fd with a correctly sized
    // `linger` value that lives across the call.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            libc::socklen_t::try_from(size_of::<libc::linger>()).expect("small size"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=90-200", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
