//! End-to-end tests of the origin client against a hand-written HTTP/1.1 mock
//! server on 127.0.0.1 (one request per connection, `Connection: close`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use do_origin::{Client, Config, Error, Headers, Validators};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as seen by the mock server. Header names are lower-cased.
#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the server does on a connection, in order; the connection is closed after
/// the last step.
enum Step {
    Write(Vec<u8>),
    Sleep(Duration),
}

type Handler = Arc<dyn Fn(&Req) -> Vec<Step> + Send + Sync>;

struct Server {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Req>>>,
}

impl Server {
    async fn start(handler: impl Fn(&Req) -> Vec<Step> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let log = Arc::clone(&requests);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let handler = Arc::clone(&handler);
                let log = Arc::clone(&log);
                tokio::spawn(serve_conn(stream, handler, log));
            }
        });
        Self { addr, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn requests(&self) -> Vec<Req> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve_conn(mut stream: TcpStream, handler: Handler, log: Arc<Mutex<Vec<Req>>>) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap().split(' ');
    let method = first.next().unwrap().to_owned();
    let path = first.next().unwrap().to_owned();
    let headers = lines
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let req = Req {
        method,
        path,
        headers,
    };
    let steps = handler(&req);
    log.lock().unwrap().push(req);
    for step in steps {
        match step {
            Step::Write(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Step::Sleep(d) => tokio::time::sleep(d).await,
        }
    }
    let _ = stream.shutdown().await;
}

/// A complete response. Adds `Content-Length` (unless given) and
/// `Connection: close`; leaves the body out for HEAD.
fn response(req: &Req, status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} Mock\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if req.method != "HEAD" {
        out.extend_from_slice(body);
    }
    out
}

fn reply(req: &Req, status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<Step> {
    vec![Step::Write(response(req, status, headers, body))]
}

const ETAG: &str = "\"v1\"";
const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

fn content() -> Vec<u8> {
    (0..1000u32).map(|i| (i % 251) as u8).collect()
}

/// A well-behaved file server: HEAD, GET, single `Range`, `If-Range` by ETag.
fn file_server(req: &Req, etag: &str) -> Vec<Step> {
    let data = content();
    let validators = [("ETag", etag), ("Last-Modified", LAST_MODIFIED)];
    let range_ok = req.header("if-range").is_none_or(|v| v == etag);
    match req.header("range").filter(|_| range_ok) {
        Some(range) => {
            let spec = range.strip_prefix("bytes=").unwrap();
            let (a, b) = spec.split_once('-').unwrap();
            let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
            let cr = format!("bytes {a}-{b}/{}", data.len());
            let mut headers = validators.to_vec();
            headers.push(("Content-Range", &cr));
            reply(req, 206, &headers, &data[a..=b])
        }
        None => {
            let mut headers = validators.to_vec();
            headers.push(("Accept-Ranges", "bytes"));
            reply(req, 200, &headers, &data)
        }
    }
}

fn config() -> Config {
    Config {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        use_env_proxy: false,
        ..Config::default()
    }
}

fn client() -> Client {
    Client::new(config()).unwrap()
}

fn no_headers() -> Headers {
    Headers::default()
}

async fn read_all(body: &mut do_origin::Body) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    while let Some(chunk) = body.chunk().await? {
        assert!(!chunk.is_empty());
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn v1() -> Validators {
    Validators {
        etag: Some(ETAG.into()),
        last_modified: Some(LAST_MODIFIED.into()),
    }
}

#[tokio::test]
async fn stat_via_head() {
    let server = Server::start(|req| file_server(req, ETAG)).await;
    let headers = Headers::parse("X-Custom: hello\r\n").unwrap();
    let stat = client().stat(&server.url("/f"), &headers).await.unwrap();
    assert_eq!(stat.len, Some(1000));
    assert_eq!(stat.validators, v1());
    assert!(stat.accepts_ranges);
    assert_eq!(stat.final_url, server.url("/f"));
    assert!(
        stat.response_headers.contains("etag: \"v1\"\r\n"),
        "{}",
        stat.response_headers
    );
    assert!(stat.response_headers.contains("content-length: 1000\r\n"));
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "HEAD");
    assert_eq!(reqs[0].header("x-custom"), Some("hello"));
    assert!(reqs[0].header("user-agent").unwrap().starts_with("donode/"));
}

#[tokio::test]
async fn stat_head_405_falls_back_to_range_get() {
    let server = Server::start(|req| {
        if req.method == "HEAD" {
            reply(req, 405, &[], b"")
        } else {
            file_server(req, ETAG)
        }
    })
    .await;
    let stat = client()
        .stat(&server.url("/f"), &no_headers())
        .await
        .unwrap();
    assert_eq!(stat.len, Some(1000));
    assert!(stat.accepts_ranges);
    assert_eq!(stat.validators, v1());
    assert!(
        stat.response_headers
            .contains("content-range: bytes 0-0/1000\r\n")
    );
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].method, "GET");
    assert_eq!(reqs[1].header("range"), Some("bytes=0-0"));
}

#[tokio::test]
async fn stat_fallback_to_plain_200() {
    // HEAD 501, GET ignores Range.
    let server = Server::start(|req| {
        if req.method == "HEAD" {
            reply(req, 501, &[], b"")
        } else {
            reply(req, 200, &[("ETag", ETAG)], b"0123456789")
        }
    })
    .await;
    let stat = client()
        .stat(&server.url("/f"), &no_headers())
        .await
        .unwrap();
    assert_eq!(stat.len, Some(10));
    assert!(!stat.accepts_ranges);
    assert_eq!(stat.validators.etag.as_deref(), Some(ETAG));
}

#[tokio::test]
async fn stat_head_without_length_falls_back() {
    let server = Server::start(|req| {
        if req.method == "HEAD" {
            // No Content-Length at all.
            vec![Step::Write(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec(),
            )]
        } else {
            file_server(req, ETAG)
        }
    })
    .await;
    let stat = client()
        .stat(&server.url("/f"), &no_headers())
        .await
        .unwrap();
    assert_eq!(stat.len, Some(1000));
    assert!(stat.accepts_ranges);
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn stat_empty_file_via_416() {
    let server = Server::start(|req| {
        if req.method == "HEAD" {
            reply(req, 405, &[], b"")
        } else {
            reply(req, 416, &[("Content-Range", "bytes */0")], b"")
        }
    })
    .await;
    let stat = client()
        .stat(&server.url("/empty"), &no_headers())
        .await
        .unwrap();
    assert_eq!(stat.len, Some(0));
}

#[tokio::test]
async fn stat_status_error() {
    let server = Server::start(|req| reply(req, 404, &[], b"")).await;
    let err = client()
        .stat(&server.url("/nope"), &no_headers())
        .await
        .unwrap_err();
    assert_eq!(err, Error::Status { code: 404 });
    assert_eq!(err.hresult(), 0x8019_0194);
}

#[tokio::test]
async fn get_whole_file() {
    let server = Server::start(|req| file_server(req, ETAG)).await;
    let mut body = client()
        .get(&server.url("/f"), &no_headers(), None, Some(&v1()))
        .await
        .unwrap();
    assert_eq!(body.status(), 200);
    assert_eq!(body.offset(), 0);
    assert_eq!(body.expected_len(), Some(1000));
    assert_eq!(body.validators(), &v1());
    assert_eq!(read_all(&mut body).await.unwrap(), content());
    assert_eq!(body.received(), 1000);
    // After the end, the end repeats.
    assert_eq!(body.chunk().await, Ok(None));
    // if_range without a range is not sent.
    let reqs = server.requests();
    assert_eq!(reqs[0].header("range"), None);
    assert_eq!(reqs[0].header("if-range"), None);
    assert_eq!(reqs[0].header("accept-encoding"), Some("identity"));
}

#[tokio::test]
async fn get_range_206() {
    let server = Server::start(|req| file_server(req, ETAG)).await;
    let headers = Headers::parse("X-Custom: 1\r\n").unwrap();
    let mut body = client()
        .get(&server.url("/f"), &headers, Some((100, 250)), Some(&v1()))
        .await
        .unwrap();
    assert_eq!(body.status(), 206);
    assert_eq!(body.offset(), 100);
    assert_eq!(body.expected_len(), Some(150));
    assert_eq!(read_all(&mut body).await.unwrap(), content()[100..250]);
    let reqs = server.requests();
    assert_eq!(reqs[0].header("range"), Some("bytes=100-249"));
    assert_eq!(reqs[0].header("if-range"), Some(ETAG));
    assert_eq!(reqs[0].header("x-custom"), Some("1"));
}

#[tokio::test]
async fn if_range_uses_last_modified_for_weak_etag() {
    let server = Server::start(|req| file_server(req, ETAG)).await;
    let weak = Validators {
        etag: Some("W/\"v1\"".into()),
        last_modified: Some(LAST_MODIFIED.into()),
    };
    // The mock compares If-Range to the ETag only, so this answers 200 with the
    // same (weakly equal) ETag: not a change, just no range.
    let err = client()
        .get(&server.url("/f"), &no_headers(), Some((0, 10)), Some(&weak))
        .await
        .unwrap_err();
    assert_eq!(err, Error::RangeNotSupported);
    assert_eq!(server.requests()[0].header("if-range"), Some(LAST_MODIFIED));
}

#[tokio::test]
async fn range_ignored_is_range_not_supported() {
    let server = Server::start(|req| reply(req, 200, &[("ETag", ETAG)], &content())).await;
    for if_range in [None, Some(v1())] {
        let err = client()
            .get(
                &server.url("/f"),
                &no_headers(),
                Some((10, 20)),
                if_range.as_ref(),
            )
            .await
            .unwrap_err();
        assert_eq!(err, Error::RangeNotSupported);
        assert!(!err.is_transient());
        assert_eq!(err.hresult(), 0x80D0_5011);
    }
}

#[tokio::test]
async fn if_range_mismatch_is_content_changed() {
    let server = Server::start(|req| file_server(req, "\"v2\"")).await;
    let err = client()
        .get(
            &server.url("/f"),
            &no_headers(),
            Some((10, 20)),
            Some(&v1()),
        )
        .await
        .unwrap_err();
    let Error::ContentChanged { new } = &err else {
        panic!("expected ContentChanged, got {err:?}");
    };
    assert_eq!(new.etag.as_deref(), Some("\"v2\""));
    assert!(err.is_transient());
    assert_eq!(server.requests()[0].header("if-range"), Some(ETAG));
}

#[tokio::test]
async fn content_range_mismatch_is_bad_content_range() {
    let server = Server::start(|req| {
        reply(
            req,
            206,
            &[("Content-Range", "bytes 0-99/1000")],
            &content()[..100],
        )
    })
    .await;
    let err = client()
        .get(&server.url("/f"), &no_headers(), Some((100, 200)), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadContentRange(_)), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(err.hresult(), 0x80D0_5001);

    // A huge last byte must not overflow.
    let server = Server::start(|req| {
        reply(
            req,
            206,
            &[("Content-Range", "bytes 100-18446744073709551615/*")],
            b"",
        )
    })
    .await;
    let err = client()
        .get(&server.url("/f"), &no_headers(), Some((100, 200)), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadContentRange(_)), "{err:?}");

    // Missing Content-Range is as bad.
    let server = Server::start(|req| reply(req, 206, &[], &content()[..100])).await;
    let err = client()
        .get(&server.url("/f"), &no_headers(), Some((0, 100)), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadContentRange(_)), "{err:?}");
}

#[tokio::test]
async fn truncated_body() {
    let server = Server::start(|req| {
        let mut r = response(req, 200, &[("Content-Length", "100")], b"");
        r.extend_from_slice(&[7u8; 40]);
        vec![Step::Write(r)]
    })
    .await;
    let mut body = client()
        .get(&server.url("/f"), &no_headers(), None, None)
        .await
        .unwrap();
    assert_eq!(body.expected_len(), Some(100));
    let err = read_all(&mut body).await.unwrap_err();
    assert_eq!(
        err,
        Error::Truncated {
            expected: 100,
            received: 40
        }
    );
    assert!(err.is_transient());
    assert_eq!(err.hresult(), 0x80D0_5001);
    // The error repeats.
    assert_eq!(body.chunk().await, Err(err));
}

#[tokio::test]
async fn status_errors_map_to_hresults() {
    let server = Server::start(|req| {
        let code = req.path.trim_start_matches('/').parse().unwrap();
        reply(req, code, &[], b"error page")
    })
    .await;
    let client = client();
    for (code, hr, transient) in [
        (404, 0x8019_0194, false),
        (403, 0x8019_0193, false),
        (500, 0x8019_01F4, true),
        (503, 0x8019_01F7, true),
        (416, 0x8019_01A0, false),
    ] {
        let err = client
            .get(
                &server.url(&format!("/{code}")),
                &no_headers(),
                Some((0, 10)),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(err, Error::Status { code });
        assert_eq!(err.hresult(), hr);
        assert_eq!(err.is_transient(), transient, "{code}");
    }
}

#[tokio::test]
async fn connection_refused_is_connect() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = client()
        .get(&format!("http://{addr}/f"), &no_headers(), None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
    assert!(err.is_transient());
    assert_eq!(err.hresult(), 0x8007_2EFD);
}

#[tokio::test]
async fn redirect_followed() {
    let server = Server::start(|req| match req.path.as_str() {
        "/old" => reply(req, 302, &[("Location", "/new")], b""),
        "/new" => file_server(req, ETAG),
        _ => reply(req, 404, &[], b""),
    })
    .await;
    let headers = Headers::parse("X-Custom: kept\r\n").unwrap();
    let client = client();
    let stat = client.stat(&server.url("/old"), &headers).await.unwrap();
    assert_eq!(stat.final_url, server.url("/new"));
    assert_eq!(stat.len, Some(1000));
    let mut body = client
        .get(&server.url("/old"), &headers, Some((5, 10)), None)
        .await
        .unwrap();
    assert_eq!(body.final_url(), server.url("/new"));
    assert_eq!(read_all(&mut body).await.unwrap(), content()[5..10]);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 4);
    // Same-origin redirect keeps custom headers and the range.
    assert_eq!(reqs[3].header("x-custom"), Some("kept"));
    assert_eq!(reqs[3].header("range"), Some("bytes=5-9"));
}

#[tokio::test]
async fn too_many_redirects() {
    let server = Server::start(|req| reply(req, 302, &[("Location", "/loop")], b"")).await;
    let client = Client::new(Config {
        max_redirects: 3,
        ..config()
    })
    .unwrap();
    let err = client
        .get(&server.url("/loop"), &no_headers(), None, None)
        .await
        .unwrap_err();
    assert_eq!(err, Error::TooManyRedirects);
    assert!(!err.is_transient());
    // The original request plus three redirects followed.
    assert_eq!(server.requests().len(), 4);
}

#[tokio::test]
async fn https_to_http_redirect_refused() {
    // A TLS mock is out of scope here; the policy itself is unit-tested in
    // `client.rs`. This checks the error's classification.
    let err = Error::InsecureRedirect("http://example.com/".into());
    assert!(!err.is_transient());
    assert_eq!(err.hresult(), 0x8007_2F7C);
}

#[tokio::test]
async fn read_timeout() {
    let server = Server::start(|req| match req.path.as_str() {
        // Stalls before the headers.
        "/headers" => vec![Step::Sleep(Duration::from_secs(3))],
        // Sends headers and some body, then stalls.
        _ => {
            let mut r = response(req, 200, &[("Content-Length", "100")], b"");
            r.extend_from_slice(&[1u8; 10]);
            vec![Step::Write(r), Step::Sleep(Duration::from_secs(3))]
        }
    })
    .await;
    let client = Client::new(Config {
        read_timeout: Duration::from_millis(200),
        ..config()
    })
    .unwrap();
    let err = client
        .get(&server.url("/headers"), &no_headers(), None, None)
        .await
        .unwrap_err();
    assert_eq!(err, Error::Timeout);
    assert_eq!(err.hresult(), 0x8007_2EE2);
    let mut body = client
        .get(&server.url("/body"), &no_headers(), None, None)
        .await
        .unwrap();
    let err = read_all(&mut body).await.unwrap_err();
    assert_eq!(err, Error::Timeout);
    assert_eq!(body.received(), 10);
    assert!(err.is_transient());
}

#[tokio::test]
async fn chunk_is_cancel_safe() {
    let server = Server::start(|req| {
        let mut steps = vec![Step::Write(response(
            req,
            200,
            &[("Content-Length", "30")],
            b"",
        ))];
        for i in 0..3u8 {
            steps.push(Step::Sleep(Duration::from_millis(60)));
            steps.push(Step::Write(vec![i; 10]));
        }
        steps
    })
    .await;
    let mut body = client()
        .get(&server.url("/slow"), &no_headers(), None, None)
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut cancelled = 0;
    loop {
        tokio::select! {
            chunk = body.chunk() => match chunk.unwrap() {
                Some(c) => got.extend_from_slice(&c),
                None => break,
            },
            () = tokio::time::sleep(Duration::from_millis(15)) => cancelled += 1,
        }
    }
    assert!(cancelled > 0);
    let expected: Vec<u8> = (0..3u8).flat_map(|i| [i; 10]).collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn request_argument_errors() {
    let server = Server::start(|req| file_server(req, ETAG)).await;
    let client = client();
    let bad_header = Headers(vec![("Range".into(), "bytes=0-1".into())]);
    let err = client
        .get(&server.url("/f"), &bad_header, None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidHeader(_)), "{err:?}");
    let err = client
        .get(&server.url("/f"), &no_headers(), Some((10, 10)), None)
        .await
        .unwrap_err();
    assert_eq!(err, Error::InvalidRange { start: 10, end: 10 });
    let err = client
        .get("ftp://example.com/f", &no_headers(), None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidUrl(_)), "{err:?}");
    assert!(!err.is_transient());
    // Nothing reached the server.
    assert!(server.requests().is_empty());
}
