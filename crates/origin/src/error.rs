//! The origin client's error type and its classification.

use crate::Validators;
use crate::hresult::{self, hresult_for_status};

/// Everything that can go wrong talking to an origin server.
///
/// The origin client never retries; it only classifies. [`Error::is_transient`]
/// tells the engine whether trying again later may succeed, and [`Error::hresult`]
/// gives the Delivery Optimization error code to report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL could not be parsed or does not use `http`/`https`. Fatal.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// A custom request header is malformed or names a header the client manages
    /// itself (`Range`, `If-Range`, framing headers). Fatal.
    #[error("invalid header: {0}")]
    InvalidHeader(String),
    /// The requested byte range `[start, end)` is empty or reversed. Fatal.
    #[error("invalid byte range [{start}, {end})")]
    InvalidRange {
        /// First byte requested.
        start: u64,
        /// One past the last byte requested.
        end: u64,
    },
    /// The server answered with a non-success status (including 416). Transient
    /// for 408, 429, 500, 502, 503 and 504; fatal otherwise.
    #[error("HTTP status {code}")]
    Status {
        /// The HTTP status code.
        code: u16,
    },
    /// Name resolution or establishing the connection (TCP or TLS) failed. Transient.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// Connecting took longer than the connect timeout, or no bytes arrived within
    /// the read timeout. Transient.
    #[error("timed out")]
    Timeout,
    /// The connection was reset or failed with another I/O error after it was
    /// established (while sending the request or reading the response). Transient.
    #[error("connection error: {0}")]
    Reset(String),
    /// The body ended before `Content-Length` bytes arrived. Transient.
    #[error("body truncated: expected {expected} bytes, received {received}")]
    Truncated {
        /// Bytes announced by the server.
        expected: u64,
        /// Bytes actually received.
        received: u64,
    },
    /// A range request was answered with the whole resource (200) and the resource
    /// has not changed: the server ignores `Range`. Fatal for this request; the
    /// engine falls back to a whole-file GET.
    #[error("server does not support byte ranges")]
    RangeNotSupported,
    /// The resource changed since its validators were taken: an `If-Range` request
    /// was answered with the whole (new) resource. Transient: the engine restarts
    /// the download against the new version.
    #[error("content changed on the origin")]
    ContentChanged {
        /// Validators of the new version, from the response.
        new: Validators,
    },
    /// A 206 response whose `Content-Range` (or `Content-Length`) does not match the
    /// requested range, or is missing or malformed. Fatal.
    #[error("bad Content-Range: {0}")]
    BadContentRange(String),
    /// The redirect chain is longer than [`crate::Config::max_redirects`]. Fatal.
    #[error("too many redirects")]
    TooManyRedirects,
    /// A redirect from HTTPS to HTTP was refused (see
    /// [`crate::Config::allow_https_to_http_redirect`]). Fatal.
    #[error("refused redirect from https to http: {0}")]
    InsecureRedirect(String),
    /// Anything else, such as the HTTP client failing to build. Fatal.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Whether trying again later may succeed.
    ///
    /// Transient: [`Connect`](Self::Connect), [`Timeout`](Self::Timeout),
    /// [`Reset`](Self::Reset), [`Truncated`](Self::Truncated),
    /// [`ContentChanged`](Self::ContentChanged) and [`Status`](Self::Status) 408,
    /// 429, 500, 502, 503, 504. Everything else is fatal for the request.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect(_)
            | Self::Timeout
            | Self::Reset(_)
            | Self::Truncated { .. }
            | Self::ContentChanged { .. } => true,
            Self::Status { code } => matches!(code, 408 | 429 | 500 | 502 | 503 | 504),
            Self::InvalidUrl(_)
            | Self::InvalidHeader(_)
            | Self::InvalidRange { .. }
            | Self::RangeNotSupported
            | Self::BadContentRange(_)
            | Self::TooManyRedirects
            | Self::InsecureRedirect(_)
            | Self::Other(_) => false,
        }
    }

    /// The Delivery Optimization HRESULT for this error (see [`crate::hresult`]).
    #[must_use]
    pub fn hresult(&self) -> u32 {
        match self {
            Self::Status { code } => hresult_for_status(*code),
            Self::Timeout => hresult::WINHTTP_TIMEOUT,
            Self::Connect(_) => hresult::WINHTTP_CANNOT_CONNECT,
            Self::Reset(_) => hresult::WINHTTP_CONNECTION_ERROR,
            Self::Truncated { .. } | Self::BadContentRange(_) => {
                hresult::DO_E_HTTP_BLOCKSIZE_MISMATCH
            }
            Self::RangeNotSupported => hresult::DO_E_INSUFFICIENT_RANGE_SUPPORT,
            Self::InvalidRange { .. } => hresult::DO_E_INVALID_RANGE,
            Self::ContentChanged { .. } => hresult::E_CHANGED_STATE,
            Self::InvalidUrl(_) => hresult::WINHTTP_INVALID_URL,
            Self::InvalidHeader(_) => hresult::E_INVALIDARG,
            Self::TooManyRedirects | Self::InsecureRedirect(_) => hresult::WINHTTP_REDIRECT_FAILED,
            Self::Other(_) => hresult::E_FAIL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classification() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(Error::Status { code }.is_transient(), "{code}");
        }
        for code in [400, 401, 403, 404, 410, 416, 501, 505] {
            assert!(!Error::Status { code }.is_transient(), "{code}");
        }
        assert_eq!(Error::Status { code: 404 }.hresult(), 0x8019_0194);
        assert_eq!(Error::Status { code: 403 }.hresult(), 0x8019_0193);
        assert_eq!(Error::Status { code: 500 }.hresult(), 0x8019_01F4);
    }

    #[test]
    fn network_classification() {
        let transient = [
            Error::Connect("refused".into()),
            Error::Timeout,
            Error::Reset("reset".into()),
            Error::Truncated {
                expected: 10,
                received: 5,
            },
            Error::ContentChanged {
                new: Validators::default(),
            },
        ];
        assert!(transient.iter().all(Error::is_transient));
        let fatal = [
            Error::InvalidUrl(String::new()),
            Error::InvalidHeader(String::new()),
            Error::InvalidRange { start: 5, end: 5 },
            Error::RangeNotSupported,
            Error::BadContentRange(String::new()),
            Error::TooManyRedirects,
            Error::InsecureRedirect(String::new()),
            Error::Other(String::new()),
        ];
        assert!(fatal.iter().all(|e| !e.is_transient()));
    }

    #[test]
    fn hresults() {
        assert_eq!(Error::Timeout.hresult(), 0x8007_2EE2);
        assert_eq!(Error::Connect(String::new()).hresult(), 0x8007_2EFD);
        assert_eq!(Error::Reset(String::new()).hresult(), 0x8007_2EFE);
        let truncated = Error::Truncated {
            expected: 2,
            received: 1,
        };
        assert_eq!(truncated.hresult(), 0x80D0_5001);
        assert_eq!(Error::BadContentRange(String::new()).hresult(), 0x80D0_5001);
        assert_eq!(Error::RangeNotSupported.hresult(), 0x80D0_5011);
        assert_eq!(
            Error::InvalidRange { start: 1, end: 0 }.hresult(),
            0x80D0_5010
        );
    }
}
