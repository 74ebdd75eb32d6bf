//! Self-tests of the do-tests harness: nginx, the fault server and helpers.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use do_tests::http;
use do_tests::{
    DEFAULT_ETAG, Fault, FaultServer, Nginx, NginxOptions, b3sum, random_bytes, temp_dir,
    write_random_file,
};

const LEN: usize = 3 * 1024 * 1024 + 123;

/// Sends a raw HTTP request and reads until EOF; returns (status, head, body).
fn raw_get(port: u16, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(all[..end].to_vec()).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, all[end + 4..].to_vec())
}

#[test]
fn random_file_and_b3sum() {
    let dir = temp_dir();
    let a = dir.path().join("a.bin");
    let b = dir.path().join("b.bin");
    let c = dir.path().join("c.bin");
    write_random_file(&a, 1_500_001, 42).unwrap();
    write_random_file(&b, 1_500_001, 42).unwrap();
    write_random_file(&c, 1_500_001, 43).unwrap();
    let data = std::fs::read(&a).unwrap();
    assert_eq!(data, random_bytes(1_500_001, 42));
    assert_eq!(&data[..1000], &random_bytes(1000, 42)[..]);
    let ha = b3sum(&a).unwrap();
    assert_eq!(ha.len(), 64);
    assert_eq!(ha, b3sum(&b).unwrap());
    assert_ne!(ha, b3sum(&c).unwrap());
    // Empty-input BLAKE3 is well known.
    let e = dir.path().join("empty");
    write_random_file(&e, 0, 1).unwrap();
    assert_eq!(
        b3sum(&e).unwrap(),
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    );
}

#[test]
fn nginx_serves_ranges_statuses_and_logs() {
    let root = temp_dir();
    write_random_file(&root.path().join("a.bin"), LEN as u64, 7).unwrap();
    let data = random_bytes(LEN, 7);
    let nginx = Nginx::start_with(
        root.path(),
        NginxOptions {
            slow_rate_bytes_per_s: 64 << 20,
        },
    )
    .unwrap();
    assert_eq!(
        nginx.url("/files/a.bin"),
        format!("http://127.0.0.1:{}/files/a.bin", nginx.port())
    );

    // Full GET over a raw socket.
    let (status, head, body) = raw_get(nginx.port(), "/files/a.bin", "");
    assert_eq!(status, 200, "{head}");
    assert!(body == data, "full body differs");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\naccept-ranges: bytes"), "{head}");
    assert!(lower.contains("\r\netag: \""), "{head}");
    assert!(lower.contains("\r\nlast-modified: "), "{head}");

    // Range.
    let (status, head, body) = raw_get(nginx.port(), "/files/a.bin", "Range: bytes=100-1099\r\n");
    assert_eq!(status, 206, "{head}");
    assert_eq!(body, &data[100..1100]);
    assert!(
        head.contains(&format!("Content-Range: bytes 100-1099/{LEN}")),
        "{head}"
    );

    // Open-ended range via the http helper, with a matching If-Range.
    let etag = http::head(&nginx.url("/files/a.bin"))
        .unwrap()
        .header("etag")
        .unwrap()
        .to_owned();
    let r = http::request(
        "GET",
        &nginx.url("/files/a.bin"),
        &[("Range", "bytes=3000000-"), ("If-Range", &etag)],
        http::DEFAULT_TIMEOUT,
    )
    .unwrap();
    assert_eq!(r.status, 206);
    assert!(r.complete());
    assert_eq!(r.body, &data[3_000_000..]);

    // Ranges ignored under /norange/.
    let r = http::get_range(&nginx.url("/norange/a.bin"), "bytes=0-9").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == data);

    // /slow/ serves the same content.
    let r = http::get_range(&nginx.url("/slow/a.bin"), "bytes=10-19").unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &data[10..20]);

    for code in [403u16, 404, 500, 503] {
        let (status, head, _) = raw_get(nginx.port(), &format!("/status/{code}"), "");
        assert_eq!(status, code, "{head}");
    }
    assert_eq!(
        http::get(&nginx.url("/files/missing.bin")).unwrap().status,
        404
    );

    // 1 full + 1 range + HEAD + open range + norange + slow + 4 statuses + missing.
    let lines = nginx.wait_for_requests(11, Duration::from_secs(5)).unwrap();
    assert_eq!(lines.len(), 11, "{lines:#?}");
    assert_eq!(lines[0].method, "GET");
    assert_eq!(lines[0].uri, "/files/a.bin");
    assert_eq!(lines[0].status, 200);
    assert_eq!(lines[0].range, None);
    assert_eq!(lines[0].body_bytes_sent, LEN as u64);
    assert_eq!(lines[1].status, 206);
    assert_eq!(lines[1].range.as_deref(), Some("bytes=100-1099"));
    assert_eq!(lines[1].body_bytes_sent, 1000);
    assert_eq!(lines[2].method, "HEAD");
    assert_eq!(lines[3].if_range.as_deref(), Some(etag.as_str()));
    assert_eq!(lines[4].uri, "/norange/a.bin");
    assert_eq!(lines[4].status, 200);
    let file_body: u64 = 2 * LEN as u64 + 1000 + (LEN as u64 - 3_000_000) + 10;
    let file_lines_body: u64 = lines
        .iter()
        .filter(|l| l.status == 200 || l.status == 206)
        .map(|l| l.body_bytes_sent)
        .sum();
    assert_eq!(file_lines_body, file_body);
    assert!(nginx.body_bytes() >= file_body);
    assert!(nginx.egress_bytes() > nginx.body_bytes());

    nginx.clear_log().unwrap();
    assert!(nginx.log_lines().is_empty());

    // Stopping removes the instance's directory.
    let dir = nginx.dir().to_path_buf();
    drop(nginx);
    assert!(!dir.exists());
}

#[test]
fn nginx_instances_in_parallel() {
    let root = temp_dir();
    write_random_file(&root.path().join("x.bin"), 1000, 1).unwrap();
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let root = root.path().to_path_buf();
            std::thread::spawn(move || {
                let n = Nginx::start(&root).unwrap();
                let r = http::get(&n.url("/files/x.bin")).unwrap();
                assert_eq!(r.body, random_bytes(1000, 1));
                n.wait_for_requests(1, Duration::from_secs(5)).unwrap();
                assert_eq!(n.body_bytes(), 1000);
                n.port()
            })
        })
        .collect();
    let mut ports: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3);
}

#[test]
fn fault_server_normal_ranges_and_if_range() {
    let data = random_bytes(200_000, 5);
    let srv = FaultServer::start(data.clone()).unwrap();
    assert_eq!(
        srv.url(),
        format!("http://127.0.0.1:{}/file.bin", srv.port())
    );

    let (status, head, body) = raw_get(srv.port(), "/file.bin", "");
    assert_eq!(status, 200, "{head}");
    assert!(body == data);
    assert!(head.contains("Accept-Ranges: bytes"), "{head}");
    assert!(head.contains(&format!("ETag: {DEFAULT_ETAG}")), "{head}");

    let r = http::get_range(&srv.url(), "bytes=10-19").unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 10-19/200000"));
    assert_eq!(r.body, &data[10..20]);

    let r = http::get_range(&srv.url(), "bytes=199990-").unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &data[199_990..]);

    let r = http::head(&srv.url()).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.content_length(), Some(200_000));
    assert!(r.body.is_empty());

    // If-Range mismatch → full body.
    let r = http::request(
        "GET",
        &srv.url(),
        &[("Range", "bytes=0-9"), ("If-Range", "\"other\"")],
        http::DEFAULT_TIMEOUT,
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 200_000);

    // New body + etag.
    srv.set_body(b"hello world".to_vec(), "\"v2\"");
    let r = http::request(
        "GET",
        &srv.url(),
        &[("Range", "bytes=6-"), ("If-Range", "\"v2\"")],
        http::DEFAULT_TIMEOUT,
    )
    .unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, b"world");
    assert_eq!(r.header("etag"), Some("\"v2\""));

    assert_eq!(srv.requests(), 6);
    assert_eq!(srv.body_bytes_sent(), 200_000 + 10 + 10 + 200_000 + 5);
}

#[test]
fn fault_server_truncate() {
    let data = random_bytes(100_000, 9);
    let srv = FaultServer::start_with(data.clone(), Fault::TruncateAfter(1000)).unwrap();
    let r = http::get(&srv.url()).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.content_length(), Some(100_000));
    assert!(r.read_error.is_none(), "{:?}", r.read_error);
    assert_eq!(r.body, &data[..1000]);
    assert!(!r.complete());

    // Truncation applies to the range body too.
    let r = http::get_range(&srv.url(), "bytes=50000-").unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &data[50_000..51_000]);

    srv.set_fault(Fault::None);
    let r = http::get(&srv.url()).unwrap();
    assert!(r.complete());
    assert!(r.body == data);
    assert_eq!(srv.body_bytes_sent(), 2000 + 100_000);
}

#[test]
fn fault_server_reset() {
    let data = random_bytes(100_000, 10);
    let srv = FaultServer::start_with(data.clone(), Fault::ResetAfter(5000)).unwrap();
    let r = http::get(&srv.url()).unwrap();
    assert_eq!(r.status, 200);
    let err = r.read_error.as_ref().expect("expected a reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err:?}");
    assert!(r.body.len() <= 5000);
    assert_eq!(r.body, &data[..r.body.len()]);
    assert_eq!(srv.body_bytes_sent(), 5000);
}

#[test]
fn fault_server_fail_first() {
    let data = random_bytes(1000, 11);
    let srv = FaultServer::start_with(
        data.clone(),
        Fault::FailFirst {
            count: 2,
            status: 503,
        },
    )
    .unwrap();
    assert_eq!(http::head(&srv.url()).unwrap().status, 503);
    assert_eq!(http::get(&srv.url()).unwrap().status, 503);
    let r = http::get(&srv.url()).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data);
    assert_eq!(http::head(&srv.url()).unwrap().status, 200);

    // Re-arming counts from the change.
    let h = srv.handle();
    h.set_fault(Fault::FailFirst {
        count: 1,
        status: 500,
    });
    assert_eq!(http::get(&srv.url()).unwrap().status, 500);
    assert_eq!(http::get(&srv.url()).unwrap().status, 200);
    assert_eq!(h.requests(), 6);
}

#[test]
fn fault_server_ignore_range() {
    let data = random_bytes(10_000, 12);
    let srv = FaultServer::start_with(data.clone(), Fault::IgnoreRange).unwrap();
    let r = http::get_range(&srv.url(), "bytes=0-9").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("accept-ranges"), None);
    assert_eq!(r.header("content-range"), None);
    assert_eq!(r.body, data);
}

#[test]
fn fault_server_stall_released_on_drop() {
    let data = random_bytes(10_000, 13);
    let srv = FaultServer::start_with(data.clone(), Fault::StallAfter(100)).unwrap();
    let r = http::request("GET", &srv.url(), &[], Duration::from_millis(300)).unwrap();
    assert_eq!(r.body, &data[..100]);
    let err = r.read_error.expect("expected a read timeout");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err:?}"
    );

    // A second stalled connection that we keep open: dropping the server must
    // release it (our read then sees EOF) and not hang.
    let mut s = TcpStream::connect(srv.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let body_len = |g: &[u8]| {
        g.windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |i| g.len() - i - 4)
    };
    while body_len(&got) < 100 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let t = Instant::now();
    drop(srv);
    assert!(t.elapsed() < Duration::from_secs(2));
    let n = s.read(&mut buf).unwrap();
    assert_eq!(n, 0);
}
