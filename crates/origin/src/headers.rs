//! Custom request headers and cache validators.

use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::Error;

/// Request headers the client manages itself and that a caller may not set.
///
/// `Range` and `If-Range` are derived from the arguments of [`crate::Client::get`];
/// the others control message framing or the connection, which belong to the
/// HTTP implementation.
const RESERVED: &[&str] = &[
    "range",
    "if-range",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
];

/// Custom request headers sent with every request of a download (DO's
/// `HttpCustomHeaders`), as `(name, value)` pairs in sending order. Repeated names
/// are sent as repeated headers.
///
/// Construct directly or with [`Headers::parse`]. Headers are validated when a
/// request is built, so a hand-built list with a bad entry makes that request fail
/// with [`Error::InvalidHeader`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// Parse an already HTTP-formatted header block: `Name: value` lines separated
    /// by `\r\n` (a bare `\n` is accepted too). Empty lines are skipped and
    /// whitespace around the value is trimmed.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidHeader`] for a line without a colon, an empty or invalid
    /// header name, a value with control characters, a folded continuation line
    /// (obsolete line folding), or a reserved name (`Range`, `If-Range`,
    /// `Content-Length`, `Transfer-Encoding`, `Connection`, `Upgrade`).
    pub fn parse(block: &str) -> Result<Self, Error> {
        let mut out = Vec::new();
        for line in block.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                return Err(Error::InvalidHeader(format!(
                    "folded header line not supported: {line:?}"
                )));
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(Error::InvalidHeader(format!("missing ':' in {line:?}")));
            };
            let value = value.trim_matches([' ', '\t']);
            check(name, value)?;
            out.push((name.to_owned(), value.to_owned()));
        }
        Ok(Self(out))
    }

    /// Whether there are no headers.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Validate every header and build the map sent on the wire.
    pub(crate) fn to_header_map(&self) -> Result<HeaderMap, Error> {
        let mut map = HeaderMap::with_capacity(self.0.len());
        for (name, value) in &self.0 {
            let (name, value) = check(name, value)?;
            map.append(name, value);
        }
        Ok(map)
    }
}

/// Validate one header; reserved names are refused.
fn check(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), Error> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| Error::InvalidHeader(format!("invalid header name {name:?}")))?;
    if RESERVED.contains(&parsed.as_str()) {
        return Err(Error::InvalidHeader(format!(
            "header {name:?} is managed by the origin client"
        )));
    }
    let value_parsed = HeaderValue::from_bytes(value.as_bytes())
        .map_err(|_| Error::InvalidHeader(format!("invalid value for header {name:?}")))?;
    Ok((parsed, value_parsed))
}

/// Cache validators of one version of a resource, as sent by the server.
///
/// Used to detect that a file changed between requests: pass them as `if_range`
/// to [`crate::Client::get`].
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Validators {
    /// The `ETag` header, verbatim (quotes and any `W/` prefix included).
    pub etag: Option<String>,
    /// The `Last-Modified` header, verbatim.
    pub last_modified: Option<String>,
}

impl Validators {
    /// Whether neither validator is known.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }

    /// The ETag if it is a strong one (no `W/` prefix).
    #[must_use]
    pub fn strong_etag(&self) -> Option<&str> {
        self.etag.as_deref().filter(|e| !e.starts_with("W/"))
    }

    /// The value sent as `If-Range`: the ETag if strong, else `Last-Modified`
    /// (a weak ETag may not be used in `If-Range`). `None` when neither is usable.
    #[must_use]
    pub fn if_range_value(&self) -> Option<&str> {
        self.strong_etag().or(self.last_modified.as_deref())
    }

    /// Whether `other` provably describes the same version: the ETags match (weak
    /// comparison, ignoring `W/`) when both have one, otherwise the `Last-Modified`
    /// values match when both have one. `false` when nothing can be compared.
    #[must_use]
    pub fn matches(&self, other: &Self) -> bool {
        if let (Some(a), Some(b)) = (&self.etag, &other.etag) {
            return opaque_tag(a) == opaque_tag(b);
        }
        if let (Some(a), Some(b)) = (&self.last_modified, &other.last_modified) {
            return a == b;
        }
        false
    }

    /// Validators from a response's headers (non-UTF-8 values are ignored).
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        let get = |name: HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        Self {
            etag: get(header::ETAG),
            last_modified: get(header::LAST_MODIFIED),
        }
    }
}

/// An ETag without its weakness indicator.
fn opaque_tag(etag: &str) -> &str {
    etag.strip_prefix("W/").unwrap_or(etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_block() {
        let h = Headers::parse("X-One: 1\r\nX-Two:two words \r\n\r\nX-One: again\r\n").unwrap();
        assert_eq!(
            h.0,
            vec![
                ("X-One".to_owned(), "1".to_owned()),
                ("X-Two".to_owned(), "two words".to_owned()),
                ("X-One".to_owned(), "again".to_owned()),
            ]
        );
        let map = h.to_header_map().unwrap();
        assert_eq!(map.get_all("x-one").iter().count(), 2);
    }

    #[test]
    fn parse_empty_and_bare_newlines() {
        assert!(Headers::parse("").unwrap().is_empty());
        assert!(Headers::parse("\r\n").unwrap().is_empty());
        let h = Headers::parse("A: b\nC: d").unwrap();
        assert_eq!(h.0.len(), 2);
        // Empty value is legal.
        assert_eq!(Headers::parse("X-Empty:").unwrap().0[0].1, "");
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in [
            "NoColon",
            ": no name",
            "Bad Name: x",
            "X-Ctl: a\u{1}b",
            "X-A: 1\r\n continued",
            "Range: bytes=0-1",
            "if-range: \"x\"",
            "Content-Length: 5",
            "Transfer-Encoding: chunked",
        ] {
            let err = Headers::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidHeader(_)), "{bad:?}: {err:?}");
        }
    }

    #[test]
    fn hand_built_headers_validated() {
        let h = Headers(vec![("Range".into(), "bytes=0-0".into())]);
        assert!(matches!(h.to_header_map(), Err(Error::InvalidHeader(_))));
        let h = Headers(vec![("X-Ok".into(), "line\nbreak".into())]);
        assert!(matches!(h.to_header_map(), Err(Error::InvalidHeader(_))));
    }

    #[test]
    fn if_range_choice() {
        let v = Validators {
            etag: Some("\"abc\"".into()),
            last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
        };
        assert_eq!(v.if_range_value(), Some("\"abc\""));
        let weak = Validators {
            etag: Some("W/\"abc\"".into()),
            ..v.clone()
        };
        assert_eq!(weak.if_range_value(), Some("Wed, 21 Oct 2015 07:28:00 GMT"));
        let only_weak = Validators {
            etag: Some("W/\"abc\"".into()),
            last_modified: None,
        };
        assert_eq!(only_weak.if_range_value(), None);
        assert!(weak.matches(&v));
        assert!(!v.matches(&Validators::default()));
        let changed = Validators {
            etag: Some("\"def\"".into()),
            ..v.clone()
        };
        assert!(!v.matches(&changed));
    }
}
