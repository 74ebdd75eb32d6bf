//! The agent's HTTP/1.1 framing, exactly as its C++ SDK speaks it.
//!
//! Pure functions: parsing a request head and formatting a response. The SDK's quirks decide
//! the shape: request lines may lack the leading slash, only query-string parameters carry
//! data, responses need a non-empty reason phrase of letters, the exact header name
//! `Content-Length`, and never chunked bodies.

use std::fmt::Write as _;

/// Largest request head accepted; the SDK's own parser holds about 2 KiB.
pub const MAX_HEAD: usize = 8 * 1024;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Non-empty path segments, lower-cased (`["download", "create"]`).
    pub segments: Vec<String>,
    /// Query parameters in order, percent-decoded; names keep their case.
    pub query: Vec<(String, String)>,
    /// Value of the `Content-Length` header (a body is read and ignored).
    pub content_length: usize,
    /// The client asked to close the connection after the reply.
    pub close: bool,
}

/// Why a request head could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The head is longer than [`MAX_HEAD`].
    #[error("request head too large")]
    TooLarge,
    /// The head is not HTTP/1.x.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

/// Finds the end of the head (`\r\n\r\n`) in `buf`: the head's length including it.
pub fn head_len(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Parses a request head (up to and including the blank line).
pub fn parse_head(head: &[u8]) -> Result<Request, ParseError> {
    if head.len() > MAX_HEAD {
        return Err(ParseError::TooLarge);
    }
    let text = std::str::from_utf8(head).map_err(|_| ParseError::Malformed("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().ok_or(ParseError::Malformed("empty"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Malformed("request line"));
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || target.is_empty() {
        return Err(ParseError::Malformed("request line"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s).map(|s| s.to_ascii_lowercase()))
        .collect::<Result<Vec<_>, _>>()?;
    let query = parse_query(query)?;
    let mut content_length = 0;
    let mut close = version == "HTTP/1.0";
    for header in lines.filter(|l| !l.is_empty()) {
        let (name, value) = header
            .split_once(':')
            .ok_or(ParseError::Malformed("header"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| ParseError::Malformed("Content-Length"))?;
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ParseError::Malformed("chunked requests are not supported"));
        }
    }
    Ok(Request {
        method: method.to_owned(),
        segments,
        query,
        content_length,
        close,
    })
}

/// Splits a query string on `&` and `=` first, then percent-decodes each part (the SDK leaves
/// `:`, `/` and `?` raw, and encodes `&`, `=`, `#` and spaces).
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, ParseError> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(name)?, percent_decode(value)?))
        })
        .collect()
}

/// Decodes `%XX` escapes; anything else is taken literally.
pub fn percent_decode(s: &str) -> Result<String, ParseError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(ParseError::Malformed("percent-encoding"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ParseError::Malformed("percent-encoding is not UTF-8"))
}

/// Response statuses the agent uses, with its reason phrases (letters only, no spaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200 OK.
    Ok,
    /// 400 BadRequest.
    BadRequest,
    /// 404 NotFound.
    NotFound,
    /// 500 InternalError.
    InternalError,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Self::Ok => "200 OK",
            Self::BadRequest => "400 BadRequest",
            Self::NotFound => "404 NotFound",
            Self::InternalError => "500 InternalError",
        }
    }
}

/// Formats a response: status line, `Server`, `Content-Length` (only with a body), the body.
pub fn response(status: Status, body: &str) -> Vec<u8> {
    let mut out = String::with_capacity(96 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {}\r\nServer: donode/{}\r\n",
        status.line(),
        env!("CARGO_PKG_VERSION")
    );
    if !body.is_empty() {
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

/// The error body: `{"ErrorCode":<signed int32>}`.
pub fn error_body(code: u32) -> String {
    format!("{{\"ErrorCode\":{}}}", code as i32)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_the_sdk_request_line_without_a_leading_slash() {
        let head = b"POST download/create?Uri=http://h/a%20b.bin&DownloadFilePath=/tmp/x%3Dy HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: DO-SDK-CPP\r\n\r\n";
        let r = parse_head(head).unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.segments, ["download", "create"]);
        assert_eq!(
            r.query,
            [
                ("Uri".to_owned(), "http://h/a b.bin".to_owned()),
                ("DownloadFilePath".to_owned(), "/tmp/x=y".to_owned())
            ]
        );
        assert!(!r.close);
    }

    #[test]
    fn segments_are_case_insensitive_and_empty_ones_ignored() {
        let r = parse_head(b"POST /Download//CREATE/ HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(r.segments, ["download", "create"]);
    }

    #[test]
    fn malformed_heads_are_rejected() {
        for head in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET /x HTTP/2\r\n\r\n",
            b"GET /x?a=%zz HTTP/1.1\r\n\r\n",
            b"GET /x HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET /x HTTP/1.1\r\nContent-Length: lots\r\n\r\n",
        ] {
            assert!(
                parse_head(head).is_err(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        assert_eq!(
            parse_head(&vec![b'a'; MAX_HEAD + 1]),
            Err(ParseError::TooLarge)
        );
    }

    #[test]
    fn responses_have_exact_framing() {
        assert_eq!(
            String::from_utf8(response(Status::NotFound, &error_body(0x8007_0490))).unwrap(),
            format!(
                "HTTP/1.1 404 NotFound\r\nServer: donode/{}\r\nContent-Length: 25\r\n\r\n{{\"ErrorCode\":-2147023728}}",
                env!("CARGO_PKG_VERSION")
            )
        );
        let empty = String::from_utf8(response(Status::Ok, "")).unwrap();
        assert!(!empty.contains("Content-Length"));
    }

    proptest! {
        #[test]
        fn the_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_head(&bytes);
        }

        #[test]
        fn query_values_round_trip_through_percent_encoding(value in "\\PC{0,40}") {
            let encoded: String = value
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
                .collect();
            let parsed = parse_query(&format!("Uri={encoded}&x=1")).unwrap();
            prop_assert_eq!(&parsed[0].1, &value);
            prop_assert_eq!(parsed.len(), 2);
        }
    }
}
