//! A minimal HTTP/1.1 client over a raw [`TcpStream`], for checking servers
//! in tests without an HTTP client dependency.
//!
//! Each request uses a fresh connection with `Connection: close`; the body is
//! read until EOF (or until `Content-Length` bytes were read). Read errors
//! after the headers (resets, timeouts) are reported in
//! [`Response::read_error`] together with whatever body arrived.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};

/// Default timeout for connecting and for each read.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A response read by [`request`].
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Body bytes received (possibly incomplete, see `read_error`).
    pub body: Vec<u8>,
    /// The error that ended reading the body early, if any (e.g.
    /// `ConnectionReset`, or `WouldBlock`/`TimedOut` after a stall).
    pub read_error: Option<io::Error>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `Content-Length` header, parsed.
    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")?.trim().parse().ok()
    }

    /// Whether the full body arrived: no read error and, if a
    /// `Content-Length` was given, exactly that many bytes.
    pub fn complete(&self) -> bool {
        self.read_error.is_none()
            && self
                .content_length()
                .is_none_or(|len| len == self.body.len() as u64)
    }
}

/// Splits `http://host:port/path` into a socket address, `Host` value and
/// request target.
fn parse_url(url: &str) -> anyhow::Result<(SocketAddr, String, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("only http:// URLs are supported: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("no address for {authority}"))?;
    Ok((addr, authority.to_owned(), path.to_owned()))
}

/// `GET url` with [`DEFAULT_TIMEOUT`].
pub fn get(url: &str) -> anyhow::Result<Response> {
    request("GET", url, &[], DEFAULT_TIMEOUT)
}

/// `GET url` with one `Range` header value (e.g. `bytes=0-99`).
pub fn get_range(url: &str, range: &str) -> anyhow::Result<Response> {
    request("GET", url, &[("Range", range)], DEFAULT_TIMEOUT)
}

/// `HEAD url` with [`DEFAULT_TIMEOUT`].
pub fn head(url: &str) -> anyhow::Result<Response> {
    request("HEAD", url, &[], DEFAULT_TIMEOUT)
}

/// Sends `method url` with extra `headers` over a fresh connection and reads
/// the response. `timeout` applies to connecting and to each read.
///
/// Errors if connecting, sending or reading the status line and headers
/// fails; errors while reading the body land in [`Response::read_error`].
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> anyhow::Result<Response> {
    let (addr, host, target) = parse_url(url)?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;

    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .context("sending request")?;

    // Read the head.
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            bail!("response head too large");
        }
        let n = stream.read(&mut chunk).context("reading response head")?;
        if n == 0 {
            bail!(
                "connection closed before end of response head ({} bytes: {:?})",
                buf.len(),
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("bad status line {status_line:?}");
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut resp = Response {
        status,
        headers,
        body: buf[head_end + 4..].to_vec(),
        read_error: None,
    };

    let no_body = method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304;
    if no_body {
        resp.body.clear();
        return Ok(resp);
    }
    let limit = resp.content_length();
    loop {
        if limit.is_some_and(|l| resp.body.len() as u64 >= l) {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => resp.body.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                resp.read_error = Some(e);
                break;
            }
        }
    }
    Ok(resp)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
