//! The HTTP client: configuration, `stat` and ranged `get`.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Url, redirect};
use tracing::{debug, trace};

use crate::{Error, Headers, Validators};

/// Settings of a [`Client`]. Build one with `Config::default()` and adjust fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Limit on name resolution plus TCP and TLS connection setup. Default 10 s.
    /// Shorter fails over to another source sooner on a dead host; longer tolerates
    /// slow or lossy links.
    pub connect_timeout: Duration,
    /// Idle timeout: the longest wait for the response headers or between two reads
    /// of body bytes (not a limit on the whole transfer). Default 30 s. Shorter
    /// detects stalled connections sooner but may abort on congested links.
    pub read_timeout: Duration,
    /// Most redirects followed for one request; one more fails with
    /// [`Error::TooManyRedirects`]. Default 10. Zero disables redirects.
    pub max_redirects: usize,
    /// Follow redirects from `https` to `http` (DO's
    /// `HttpAllowSecureToNonSecureRedirect`). Default `false`: such a redirect fails
    /// with [`Error::InsecureRedirect`]. Allowing it exposes the transfer to
    /// tampering; content hashes still protect integrity, not privacy.
    pub allow_https_to_http_redirect: bool,
    /// `User-Agent` sent with every request. Default `donode/<crate version>`.
    pub user_agent: String,
    /// Honour the `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY`/`NO_PROXY` environment
    /// variables. Default `true`. Turn off to always connect directly.
    pub use_env_proxy: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            max_redirects: 10,
            allow_https_to_http_redirect: false,
            user_agent: concat!("donode/", env!("CARGO_PKG_VERSION")).to_owned(),
            use_env_proxy: true,
        }
    }
}

/// An HTTP(S) client for origin servers. Wraps a connection-pooling
/// `reqwest::Client`; cloning is cheap and clones share the pool.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
}

/// What [`Client::stat`] learned about a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Size of the resource in bytes, if the server told.
    pub len: Option<u64>,
    /// Cache validators of the current version.
    pub validators: Validators,
    /// Whether the server honours byte-range requests (`Accept-Ranges: bytes` on
    /// HEAD, or a 206 answer to the fallback range GET).
    pub accepts_ranges: bool,
    /// URL of the last response, after redirects.
    pub final_url: String,
    /// Header block of the last response, `name: value\r\n` per header in the
    /// received order (BITS `HTTP_RESPONSE_HEADERS`). Names are lower-case; the
    /// status line is not included.
    pub response_headers: String,
}

/// A response body being received, returned by [`Client::get`].
pub struct Body {
    status: u16,
    validators: Validators,
    offset: u64,
    expected_len: Option<u64>,
    received: u64,
    final_url: String,
    stream: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send + Sync>>,
    /// Set once the body ended: `Ok` at a clean end, the error otherwise.
    end: Option<Result<(), Error>>,
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Body")
            .field("status", &self.status)
            .field("validators", &self.validators)
            .field("offset", &self.offset)
            .field("expected_len", &self.expected_len)
            .field("received", &self.received)
            .field("final_url", &self.final_url)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Build a client.
    ///
    /// # Errors
    ///
    /// [`Error::Other`] if the underlying HTTP client cannot be built (for example
    /// the TLS backend fails to initialise), [`Error::InvalidHeader`] if the user
    /// agent is not a valid header value.
    pub fn new(config: Config) -> Result<Self, Error> {
        let user_agent = HeaderValue::from_str(&config.user_agent)
            .map_err(|_| Error::InvalidHeader(format!("user agent {:?}", config.user_agent)))?;
        let max = config.max_redirects;
        let allow_insecure = config.allow_https_to_http_redirect;
        let policy = redirect::Policy::custom(move |attempt| {
            match check_redirect(attempt.url(), attempt.previous(), max, allow_insecure) {
                Ok(()) => attempt.follow(),
                Err(refusal) => attempt.error(refusal),
            }
        });
        let mut defaults = HeaderMap::new();
        // Bodies are stored byte for byte; never let a server compress them.
        defaults.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .redirect(policy)
            .user_agent(user_agent)
            .default_headers(defaults);
        if !config.use_env_proxy {
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .map_err(|e| Error::Other(format!("building HTTP client: {}", chain(&e))))?;
        Ok(Self { http })
    }

    /// Size, validators and range support of a URL.
    ///
    /// Sends HEAD first. If the server answers HEAD with 405 or 501, or a
    /// successful HEAD carries no `Content-Length`, falls back to a GET with
    /// `Range: bytes=0-0`: a 206 gives the total from `Content-Range` and proves
    /// range support; a 200 gives `Content-Length` and no range support; a 416 with
    /// `Content-Range: bytes */0` means an empty resource. The fallback body is not
    /// read.
    ///
    /// # Errors
    ///
    /// [`Error::Status`] for a non-success answer (or a success other than 200/206
    /// to the fallback GET), [`Error::BadContentRange`] for an unusable 206, and the
    /// request errors of [`Client::get`].
    pub async fn stat(&self, url: &str, headers: &Headers) -> Result<Stat, Error> {
        let resp = self.send(Method::HEAD, url, headers, None, None).await?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            let len = content_length(resp.headers())?;
            if len.is_some() {
                return Ok(Stat {
                    len,
                    validators: Validators::from_headers(resp.headers()),
                    accepts_ranges: accepts_byte_ranges(resp.headers()),
                    final_url: resp.url().to_string(),
                    response_headers: header_block(resp.headers()),
                });
            }
            debug!(
                url,
                "HEAD gave no Content-Length; falling back to a range GET"
            );
        } else if status == 405 || status == 501 {
            debug!(url, status, "HEAD refused; falling back to a range GET");
        } else {
            return Err(Error::Status { code: status });
        }

        let resp = self
            .send(Method::GET, url, headers, Some((0, 1)), None)
            .await?;
        let status = resp.status().as_u16();
        let resp_headers = resp.headers();
        let (len, accepts_ranges) = match status {
            206 => match content_range(resp_headers)? {
                ContentRange::Bytes {
                    first: 0, total, ..
                } => (total, true),
                other => return Err(Error::BadContentRange(format!("{other:?} for bytes 0-0"))),
            },
            200 => (content_length(resp_headers)?, false),
            416 => match content_range(resp_headers) {
                Ok(ContentRange::Unsatisfied { total: 0 }) => (Some(0), true),
                _ => return Err(Error::Status { code: status }),
            },
            _ => return Err(Error::Status { code: status }),
        };
        Ok(Stat {
            len,
            validators: Validators::from_headers(resp_headers),
            accepts_ranges,
            final_url: resp.url().to_string(),
            response_headers: header_block(resp_headers),
        })
        // `resp` is dropped here without reading the body; the connection is
        // closed rather than drained.
    }

    /// GET the whole resource (`range` `None`) or the byte range `[start, end)`
    /// (half-open) of it.
    ///
    /// With a range and `if_range: Some(v)`, sends `If-Range` (the ETag if strong,
    /// else `Last-Modified`; nothing if neither is usable) so that a changed file
    /// answers 200 instead of 206. `if_range` is ignored without a range.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidRange`] if `start >= end`.
    /// - [`Error::BadContentRange`] for a 206 whose `Content-Range` (or
    ///   `Content-Length`) does not match the request.
    /// - [`Error::ContentChanged`] for a 200 to a range request sent with
    ///   `If-Range` whose validators do not match `if_range`, or a 206 whose ETag
    ///   provably differs from `if_range`.
    /// - [`Error::RangeNotSupported`] for any other 200 to a range request.
    /// - [`Error::Status`] for a non-2xx answer (416 included) and for 2xx answers
    ///   other than 200 and 206.
    /// - [`Error::InvalidUrl`], [`Error::InvalidHeader`], [`Error::Connect`],
    ///   [`Error::Timeout`], [`Error::Reset`], [`Error::TooManyRedirects`],
    ///   [`Error::InsecureRedirect`] from sending the request.
    ///
    /// The response is dropped on error.
    pub async fn get(
        &self,
        url: &str,
        headers: &Headers,
        range: Option<(u64, u64)>,
        if_range: Option<&Validators>,
    ) -> Result<Body, Error> {
        let if_range = if_range.filter(|_| range.is_some());
        let if_range_value = if_range.and_then(Validators::if_range_value);
        let resp = self
            .send(Method::GET, url, headers, range, if_range_value)
            .await?;
        let status = resp.status().as_u16();
        let validators = Validators::from_headers(resp.headers());
        let (offset, expected_len) = match (status, range) {
            (206, Some((start, end))) => {
                match content_range(resp.headers())? {
                    ContentRange::Bytes { first, last, .. }
                        if first == start && last == end - 1 => {}
                    other => {
                        return Err(Error::BadContentRange(format!(
                            "requested bytes {start}-{}, got {other:?}",
                            end - 1
                        )));
                    }
                }
                if let Some(len) = content_length(resp.headers())?
                    && len != end - start
                {
                    return Err(Error::BadContentRange(format!(
                        "requested {} bytes, Content-Length is {len}",
                        end - start
                    )));
                }
                if let Some(given) = if_range
                    && provably_differs(given, &validators)
                {
                    return Err(Error::ContentChanged { new: validators });
                }
                (start, Some(end - start))
            }
            (206, None) => match content_range(resp.headers())? {
                // Tolerated: a 206 that covers the whole resource.
                ContentRange::Bytes {
                    first: 0,
                    last,
                    total: Some(total),
                } if last + 1 == total => (0, Some(total)),
                other => {
                    return Err(Error::BadContentRange(format!(
                        "partial answer {other:?} to a whole-resource request"
                    )));
                }
            },
            (200, Some(_)) => {
                if let (Some(given), Some(_)) = (if_range, if_range_value)
                    && !given.matches(&validators)
                {
                    debug!(url, ?given, new = ?validators, "content changed on the origin");
                    return Err(Error::ContentChanged { new: validators });
                }
                return Err(Error::RangeNotSupported);
            }
            (200, None) => (0, content_length(resp.headers())?),
            _ => return Err(Error::Status { code: status }),
        };
        Ok(Body {
            status,
            validators,
            offset,
            expected_len,
            received: 0,
            final_url: resp.url().to_string(),
            stream: Box::pin(resp.bytes_stream()),
            end: None,
        })
    }

    /// Send one request and wait for the response headers.
    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &Headers,
        range: Option<(u64, u64)>,
        if_range: Option<&str>,
    ) -> Result<reqwest::Response, Error> {
        let url = parse_url(url)?;
        let mut map = headers.to_header_map()?;
        if let Some((start, end)) = range {
            if start >= end {
                return Err(Error::InvalidRange { start, end });
            }
            let value = HeaderValue::from_str(&format!("bytes={start}-{}", end - 1))
                .map_err(|_| Error::InvalidRange { start, end })?;
            map.insert(header::RANGE, value);
            if let Some(v) = if_range {
                let value = HeaderValue::from_str(v)
                    .map_err(|_| Error::InvalidHeader(format!("If-Range value {v:?}")))?;
                map.insert(header::IF_RANGE, value);
            }
        }
        trace!(%method, %url, ?range, ?if_range, "origin request");
        let resp = self
            .http
            .request(method, url)
            .headers(map)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        trace!(status = resp.status().as_u16(), url = %resp.url(), "origin response");
        Ok(resp)
    }
}

impl Body {
    /// HTTP status of the response (200 or 206).
    #[must_use]
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Validators of the version being received.
    #[must_use]
    pub fn validators(&self) -> &Validators {
        &self.validators
    }

    /// Byte offset of the first body byte within the resource (0 for a 200; the
    /// `Content-Range` start for a 206).
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of body bytes expected (`Content-Length`, or the range length for a
    /// 206), if known.
    #[must_use]
    pub fn expected_len(&self) -> Option<u64> {
        self.expected_len
    }

    /// Body bytes returned by [`Body::chunk`] so far.
    #[must_use]
    pub fn received(&self) -> u64 {
        self.received
    }

    /// URL of the response, after redirects.
    #[must_use]
    pub fn final_url(&self) -> &str {
        &self.final_url
    }

    /// Next chunk of the body; `Ok(None)` at the end.
    ///
    /// Chunks are never empty. After the end or an error, further calls repeat the
    /// same outcome.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] when the body ends (the server closes the connection)
    /// before [`Body::expected_len`] bytes; [`Error::Timeout`] when no bytes arrive
    /// within the read timeout; [`Error::Reset`] for a reset connection or any other
    /// failure while reading (including an early end of a body of unknown length).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: if the future is dropped before it completes (for example in
    /// `tokio::select!`), no data is lost and the next call continues where this
    /// one left off.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            if let Some(end) = &self.end {
                return end.clone().map(|()| None);
            }
            match self.stream.next().await {
                Some(Ok(bytes)) if bytes.is_empty() => {}
                Some(Ok(bytes)) => {
                    self.received += bytes.len() as u64;
                    return Ok(Some(bytes));
                }
                Some(Err(e)) => {
                    let err = self.classify_body_error(&e);
                    debug!(url = %self.final_url, received = self.received, error = %err, "origin body failed");
                    self.end = Some(Err(err));
                }
                None => {
                    self.end = Some(match self.expected_len {
                        Some(expected) if self.received < expected => Err(Error::Truncated {
                            expected,
                            received: self.received,
                        }),
                        _ => Ok(()),
                    });
                }
            }
        }
    }

    /// Map a failure while reading the body.
    fn classify_body_error(&self, err: &reqwest::Error) -> Error {
        if err.is_timeout() {
            return Error::Timeout;
        }
        let eof = sources(err).any(|s| {
            s.downcast_ref::<io::Error>()
                .is_some_and(|io| io.kind() == io::ErrorKind::UnexpectedEof)
        });
        match self.expected_len {
            Some(expected) if eof && self.received < expected => Error::Truncated {
                expected,
                received: self.received,
            },
            _ => Error::Reset(chain(err)),
        }
    }
}

/// Why a redirect was refused; carried through reqwest as the error source.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RedirectRefusal {
    TooMany,
    Insecure(String),
}

impl fmt::Display for RedirectRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooMany => f.write_str("too many redirects"),
            Self::Insecure(url) => write!(f, "refused redirect from https to http: {url}"),
        }
    }
}

impl StdError for RedirectRefusal {}

/// Redirect policy: `previous` holds the URLs already requested (the first is the
/// original request), `next` the redirect target.
fn check_redirect(
    next: &Url,
    previous: &[Url],
    max: usize,
    allow_insecure: bool,
) -> Result<(), RedirectRefusal> {
    if previous.len() > max {
        return Err(RedirectRefusal::TooMany);
    }
    let from_https = previous.last().is_some_and(|u| u.scheme() == "https");
    if from_https && next.scheme() == "http" && !allow_insecure {
        return Err(RedirectRefusal::Insecure(next.to_string()));
    }
    Ok(())
}

/// Parse and check a URL: absolute, `http` or `https`, with a host.
fn parse_url(url: &str) -> Result<Url, Error> {
    let parsed = Url::parse(url).map_err(|e| Error::InvalidUrl(format!("{url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::InvalidUrl(format!(
            "{url:?}: scheme must be http or https"
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::InvalidUrl(format!("{url:?}: no host")));
    }
    Ok(parsed)
}

/// Map a failure to send a request or receive the response headers.
fn classify(err: &reqwest::Error) -> Error {
    if let Some(refusal) = sources(err).find_map(|s| s.downcast_ref::<RedirectRefusal>()) {
        return match refusal {
            RedirectRefusal::TooMany => Error::TooManyRedirects,
            RedirectRefusal::Insecure(url) => Error::InsecureRedirect(url.clone()),
        };
    }
    if err.is_timeout() {
        Error::Timeout
    } else if err.is_connect() {
        Error::Connect(chain(err))
    } else if err.is_builder() {
        Error::Other(chain(err))
    } else if err.is_redirect() {
        Error::Other(format!("redirect failed: {}", chain(err)))
    } else {
        Error::Reset(chain(err))
    }
}

/// The error and all its sources.
fn sources<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e: &&'a (dyn StdError + 'static)| (*e).source())
}

/// The error's message followed by its sources' messages (reqwest's top-level
/// messages alone are vague).
fn chain(err: &reqwest::Error) -> String {
    let mut out = String::new();
    for (i, e) in sources(err).enumerate() {
        if i > 0 {
            out.push_str(": ");
        }
        out.push_str(&e.to_string());
    }
    out
}

/// `Content-Length`, if present.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let Some(value) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(parse_decimal)
        .map(Some)
        .ok_or_else(|| Error::Reset(format!("malformed Content-Length {value:?}")))
}

/// Whether `Accept-Ranges` lists `bytes`.
fn accepts_byte_ranges(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_RANGES)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|unit| unit.trim().eq_ignore_ascii_case("bytes"))
}

/// The response headers as `name: value\r\n` lines.
fn header_block(headers: &HeaderMap) -> String {
    let mut out = String::new();
    for (name, value) in headers {
        out.push_str(name.as_str());
        out.push_str(": ");
        out.push_str(&String::from_utf8_lossy(value.as_bytes()));
        out.push_str("\r\n");
    }
    out
}

/// A parsed `Content-Range` response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContentRange {
    /// `bytes first-last/total` (`total` `None` for `*`); `first <= last < total`.
    Bytes {
        first: u64,
        last: u64,
        total: Option<u64>,
    },
    /// `bytes */total`, sent with 416.
    Unsatisfied { total: u64 },
}

/// The `Content-Range` header; missing or malformed is [`Error::BadContentRange`].
fn content_range(headers: &HeaderMap) -> Result<ContentRange, Error> {
    let value = headers
        .get(header::CONTENT_RANGE)
        .ok_or_else(|| Error::BadContentRange("missing Content-Range".to_owned()))?;
    value
        .to_str()
        .ok()
        .and_then(parse_content_range)
        .ok_or_else(|| Error::BadContentRange(format!("malformed Content-Range {value:?}")))
}

fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (range, total) = (range.trim(), total.trim());
    if range == "*" {
        return Some(ContentRange::Unsatisfied {
            total: parse_decimal(total)?,
        });
    }
    let (first, last) = range.split_once('-')?;
    let (first, last) = (parse_decimal(first)?, parse_decimal(last)?);
    let total = if total == "*" {
        None
    } else {
        Some(parse_decimal(total)?)
    };
    if last < first || total.is_some_and(|t| last >= t) {
        return None;
    }
    Some(ContentRange::Bytes { first, last, total })
}

/// A non-negative decimal integer: digits only (no sign, no spaces).
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Whether two validator sets provably name different versions: the ETags differ
/// when both are present, otherwise the `Last-Modified` values differ when both
/// are present.
fn provably_differs(a: &Validators, b: &Validators) -> bool {
    if a.etag.is_some() && b.etag.is_some() {
        return !a.matches(b);
    }
    a.last_modified.is_some() && b.last_modified.is_some() && !a.matches(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn redirect_policy() {
        let start = [url("https://a.example/f")];
        assert_eq!(
            check_redirect(&url("https://b.example/f"), &start, 10, false),
            Ok(())
        );
        assert_eq!(
            check_redirect(&url("http://b.example/f"), &start, 10, false),
            Err(RedirectRefusal::Insecure("http://b.example/f".into()))
        );
        assert_eq!(
            check_redirect(&url("http://b.example/f"), &start, 10, true),
            Ok(())
        );
        // http -> https and http -> http are fine.
        let plain = [url("http://a.example/f")];
        assert_eq!(
            check_redirect(&url("http://b.example/"), &plain, 10, false),
            Ok(())
        );
        // The last hop decides: https -> http after an http start is refused.
        let chain = [url("http://a.example/"), url("https://b.example/")];
        assert!(check_redirect(&url("http://c.example/"), &chain, 10, false).is_err());
        // Limits: `previous` includes the original request.
        assert_eq!(
            check_redirect(&url("http://b.example/"), &plain, 0, false),
            Err(RedirectRefusal::TooMany)
        );
        let two = [url("http://a.example/"), url("http://b.example/")];
        assert_eq!(
            check_redirect(&url("http://c.example/"), &two, 2, false),
            Ok(())
        );
        let three = [
            url("http://a.example/"),
            url("http://b.example/"),
            url("http://c.example/"),
        ];
        assert_eq!(
            check_redirect(&url("http://d.example/"), &three, 2, false),
            Err(RedirectRefusal::TooMany)
        );
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range("bytes 0-499/1234"),
            Some(ContentRange::Bytes {
                first: 0,
                last: 499,
                total: Some(1234)
            })
        );
        assert_eq!(
            parse_content_range("bytes 10-19/*"),
            Some(ContentRange::Bytes {
                first: 10,
                last: 19,
                total: None
            })
        );
        assert_eq!(
            parse_content_range("bytes */0"),
            Some(ContentRange::Unsatisfied { total: 0 })
        );
        for bad in [
            "",
            "bytes",
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes -1-5/10",
            "bytes +1-5/10",
            "items 0-1/2",
            "bytes 0-1",
            "bytes a-b/c",
            "bytes 0-1/ ",
            "bytes */*",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn url_checks() {
        assert!(parse_url("http://127.0.0.1:1/x").is_ok());
        assert!(parse_url("https://example.com").is_ok());
        for bad in [
            "",
            "not a url",
            "ftp://example.com/f",
            "file:///etc/passwd",
            "/relative",
        ] {
            assert!(
                matches!(parse_url(bad), Err(Error::InvalidUrl(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn thread_safe() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Client>();
        assert_send_sync::<Body>();
        assert_send_sync::<Stat>();
        assert_send_sync::<Error>();
    }

    #[test]
    fn defaults() {
        let c = Config::default();
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.read_timeout, Duration::from_secs(30));
        assert_eq!(c.max_redirects, 10);
        assert!(!c.allow_https_to_http_redirect);
        assert!(c.user_agent.starts_with("donode/"));
    }

    #[test]
    fn accept_ranges() {
        let mut h = HeaderMap::new();
        assert!(!accepts_byte_ranges(&h));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("none"));
        assert!(!accepts_byte_ranges(&h));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("Bytes"));
        assert!(accepts_byte_ranges(&h));
    }
}
