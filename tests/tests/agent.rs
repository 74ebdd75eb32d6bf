//! The Linux DO agent's REST API served by `donode run`, driven with raw TCP requests the way
//! the do-client C++ SDK sends them, and checked byte for byte where the SDK is strict.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use do_tests::{Daemon, Nginx, NginxOptions, b3sum, temp_dir, write_random_file};
use serde_json::Value;
use tempfile::TempDir;

/// A daemon in fresh run and cache directories, which live as long as it.
struct Fixture {
    d: Daemon,
    _run: TempDir,
    _cache: TempDir,
}

fn daemon() -> Fixture {
    let (run, cache) = (temp_dir(), temp_dir());
    let d = Daemon::start(run.path(), cache.path());
    Fixture {
        d,
        _run: run,
        _cache: cache,
    }
}

/// The agent calls, as the SDK sends them.
trait Agent {
    fn call(&self, method: &str, target: &str) -> (u16, Value);
    fn create(&self, uri: &str, path: &Path) -> String;
    fn status(&self, id: &str) -> Value;
    fn wait_for(&self, id: &str, want: &str) -> Value;
}

impl Agent for Daemon {
    /// A request as the SDK sends it (no leading slash), with `Connection: close`.
    fn call(&self, method: &str, target: &str) -> (u16, Value) {
        let text = self.raw(
            format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: DO-SDK-CPP\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        parse_response(&text)
    }

    fn create(&self, uri: &str, path: &Path) -> String {
        let (code, body) = self.call(
            "POST",
            &format!(
                "download/create?Uri={uri}&DownloadFilePath={}",
                path.display()
            ),
        );
        assert_eq!(code, 200, "{body}");
        body["Id"].as_str().unwrap().to_owned()
    }

    fn status(&self, id: &str) -> Value {
        let (code, body) = self.call("GET", &format!("download/getstatus?Id={id}"));
        assert_eq!(code, 200, "{body}");
        body
    }

    /// Polls getstatus until `Status` is `want` (or the deadline passes).
    fn wait_for(&self, id: &str, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.status(id);
            if s["Status"] == want {
                return s;
            }
            assert!(Instant::now() < deadline, "never reached {want}: {s}");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Parses `HTTP/1.1 CODE Reason\r\n...\r\n\r\nBODY`, checking the framing the SDK needs.
fn parse_response(text: &str) -> (u16, Value) {
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head end: {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap();
    let mut parts = status.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"));
    let code: u16 = parts.next().unwrap().parse().unwrap();
    let reason = parts.next().unwrap();
    let expected = match code {
        200 => "OK",
        400 => "BadRequest",
        404 => "NotFound",
        other => panic!("unexpected status {other}"),
    };
    assert_eq!(reason, expected);
    let length = lines.find_map(|l| l.strip_prefix("Content-Length: "));
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "never chunked"
    );
    if body.is_empty() {
        assert!(length.is_none());
        return (code, Value::Null);
    }
    assert_eq!(
        length.map(|l| l.parse::<usize>().unwrap()),
        Some(body.len()),
        "exact `Content-Length`"
    );
    (code, serde_json::from_str(body).unwrap())
}

fn hr(code: u32) -> i64 {
    i64::from(code as i32)
}

fn origin(size: u64) -> (TempDir, Nginx) {
    origin_at(size, 2 << 20)
}

/// An nginx origin whose `/slow/` location sends `rate` bytes per second per connection.
fn origin_at(size: u64, rate: u64) -> (TempDir, Nginx) {
    let root = temp_dir();
    write_random_file(&root.path().join("f.bin"), size, 5).unwrap();
    write_random_file(&root.path().join("g.bin"), size / 2 + 7, 6).unwrap();
    let nginx = Nginx::start_with(
        root.path(),
        NginxOptions {
            slow_rate_bytes_per_s: rate,
        },
    )
    .unwrap();
    (root, nginx)
}

#[test]
fn create_start_poll_finalize_then_404_with_e_not_set() {
    let (root, nginx) = origin(3 << 20);
    let f = daemon();
    let d = &f.d;
    let out = temp_dir();
    let path = out.path().join("out.bin");
    let id = d.create(&nginx.url("/files/f.bin"), &path);
    assert_eq!(id, id.to_ascii_lowercase());
    let s = d.status(&id);
    assert_eq!(s["Status"], "Created");
    assert_eq!(s["BytesTotal"], "0", "values are strings");
    assert_eq!(
        d.call("POST", &format!("download/start?Id={id}")),
        (200, serde_json::json!({}))
    );
    let s = d.wait_for(&id, "Transferred");
    assert_eq!(s["BytesTotal"], (3u64 << 20).to_string());
    assert_eq!(s["BytesTransferred"], s["BytesTotal"]);
    assert_eq!(s["ErrorCode"], "0");
    assert_eq!(
        b3sum(&path).unwrap(),
        b3sum(&root.path().join("f.bin")).unwrap()
    );
    assert_eq!(d.call("POST", &format!("download/finalize?Id={id}")).0, 200);
    for (m, op) in [
        ("GET", "getstatus"),
        ("POST", "start"),
        ("POST", "pause"),
        ("POST", "finalize"),
        ("POST", "abort"),
    ] {
        let (code, body) = d.call(m, &format!("download/{op}?Id={id}"));
        assert_eq!(
            (code, &body["ErrorCode"]),
            (404, &Value::from(hr(0x8007_0490))),
            "{op}"
        );
    }
    assert!(path.exists(), "finalize keeps the file");
}

#[test]
fn origin_errors_pause_with_the_http_hresult() {
    let (_root, nginx) = origin(1 << 20);
    let f = daemon();
    let d = &f.d;
    let out = temp_dir();
    for (status, code) in [("404", 0x8019_0194u32), ("403", 0x8019_0193)] {
        let id = d.create(
            &nginx.url(&format!("/status/{status}")),
            &out.path().join(status),
        );
        d.call("POST", &format!("download/start?Id={id}"));
        let s = d.wait_for(&id, "Paused");
        assert_eq!(s["ErrorCode"], hr(code).to_string());
        assert_eq!(d.call("POST", &format!("download/abort?Id={id}")).0, 200);
        assert!(
            !out.path().join(status).exists(),
            "abort removes the output it created"
        );
    }
}

#[test]
fn output_path_errors_use_errno_hresults() {
    let (_root, nginx) = origin(1 << 20);
    let f = daemon();
    let d = &f.d;
    let out = temp_dir();
    let missing = out.path().join("no/such/dir/x.bin");
    let id = d.create(&nginx.url("/files/f.bin"), &missing);
    let (code, body) = d.call("POST", &format!("download/start?Id={id}"));
    assert_eq!(
        (code, body["ErrorCode"].as_i64()),
        (400, Some(hr(0xC0D0_0002)))
    );
    let taken = out.path().join("taken.bin");
    std::fs::write(&taken, b"mine").unwrap();
    let id = d.create(&nginx.url("/files/f.bin"), &taken);
    let (code, body) = d.call("POST", &format!("download/start?Id={id}"));
    assert_eq!(
        (code, body["ErrorCode"].as_i64()),
        (400, Some(hr(0xC0D0_0011)))
    );
    assert_eq!(
        std::fs::read(&taken).unwrap(),
        b"mine",
        "an existing file is never touched"
    );
    let id = d.create("", &out.path().join("x"));
    let (_, body) = d.call("POST", &format!("download/start?Id={id}"));
    assert_eq!(body["ErrorCode"].as_i64(), Some(hr(0x80D0_2200)), "no URI");
    let (code, body) = d.call("POST", "download/create?Uri=ftp://host/x");
    assert_eq!(
        (code, body["ErrorCode"].as_i64()),
        (400, Some(hr(0x800C_0002)))
    );
}

#[test]
fn pause_and_resume_continue_and_end_with_the_right_bytes() {
    let (root, nginx) = origin_at(16 << 20, 1 << 20);
    let f = daemon();
    let d = &f.d;
    let out = temp_dir();
    let path = out.path().join("slow.bin");
    let id = d.create(&nginx.url("/slow/f.bin"), &path);
    d.call("POST", &format!("download/start?Id={id}"));
    thread::sleep(Duration::from_millis(700));
    assert_eq!(d.call("POST", &format!("download/pause?Id={id}")).0, 200);
    let paused = d.wait_for(&id, "Paused");
    let done: u64 = paused["BytesTransferred"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(done > 0 && done < 16 << 20, "paused mid-way: {paused}");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(d.call("POST", &format!("download/start?Id={id}")).0, 200);
    d.wait_for(&id, "Transferred");
    assert_eq!(
        b3sum(&path).unwrap(),
        b3sum(&root.path().join("f.bin")).unwrap()
    );
    let body_bytes = nginx.body_bytes();
    assert!(
        body_bytes < (16 << 20) + (4 << 20),
        "resumed with ranges, not from zero: {body_bytes}"
    );
}

#[test]
fn output_deleted_while_paused_fails_the_next_start_with_enoent() {
    let (_root, nginx) = origin_at(16 << 20, 1 << 20);
    let f = daemon();
    let d = &f.d;
    let out = temp_dir();
    let path = out.path().join("gone.bin");
    let id = d.create(&nginx.url("/slow/f.bin"), &path);
    d.call("POST", &format!("download/start?Id={id}"));
    thread::sleep(Duration::from_millis(300));
    d.call("POST", &format!("download/pause?Id={id}"));
    d.wait_for(&id, "Paused");
    std::fs::remove_file(&path).unwrap();
    let (code, body) = d.call("POST", &format!("download/start?Id={id}"));
    assert_eq!(
        (code, body["ErrorCode"].as_i64()),
        (400, Some(hr(0xC0D0_0002)))
    );
}

#[test]
fn abort_in_transferred_removes_the_output() {
    let (_root, nginx) = origin(1 << 20);
    let f = daemon();
    let d = &f.d;
    let out = temp_dir();
    let path = out.path().join("a.bin");
    let id = d.create(&nginx.url("/files/f.bin"), &path);
    d.call("POST", &format!("download/start?Id={id}"));
    d.wait_for(&id, "Transferred");
    assert!(path.exists());
    assert_eq!(d.call("POST", &format!("download/abort?Id={id}")).0, 200);
    assert!(!path.exists());
    assert_eq!(d.call("GET", &format!("download/getstatus?Id={id}")).0, 404);
}

#[test]
fn several_downloads_at_once_each_correct() {
    let (root, nginx) = origin(2 << 20);
    let f = daemon();
    let d = &f.d;
    let out = temp_dir();
    let jobs: Vec<(String, PathBuf, &str)> = (0..6)
        .map(|i| {
            let name = if i % 2 == 0 { "f.bin" } else { "g.bin" };
            let path = out.path().join(format!("{i}.bin"));
            (
                d.create(&nginx.url(&format!("/files/{name}")), &path),
                path,
                name,
            )
        })
        .collect();
    for (id, _, _) in &jobs {
        assert_eq!(d.call("POST", &format!("download/start?Id={id}")).0, 200);
    }
    for (id, path, name) in &jobs {
        d.wait_for(id, "Transferred");
        assert_eq!(
            b3sum(path).unwrap(),
            b3sum(&root.path().join(name)).unwrap()
        );
        assert_eq!(d.call("POST", &format!("download/finalize?Id={id}")).0, 200);
    }
}

#[test]
fn properties_get_and_set_and_enumerate() {
    let (_root, nginx) = origin(1 << 20);
    let f = daemon();
    let d = &f.d;
    let out = temp_dir();
    let (code, body) = d.call("POST", "download/create");
    assert_eq!(code, 200, "an empty create succeeds");
    let id = body["Id"].as_str().unwrap().to_owned();
    let url = nginx.url("/files/f.bin");
    let path = out.path().join("p.bin");
    let target = format!(
        "download/setproperty?Id={id}&Uri={url}&DownloadFilePath={}&NoProgressTimeoutSeconds=30",
        path.display()
    );
    assert_eq!(d.call("POST", &target), (200, serde_json::json!({})));
    for (key, want) in [
        ("Id", id.clone()),
        ("Uri", url.clone()),
        ("DownloadFilePath", path.display().to_string()),
        ("NoProgressTimeoutSeconds", "30".into()),
    ] {
        let (code, body) = d.call(
            "GET",
            &format!("download/getproperty?Id={id}&PropertyKey={key}"),
        );
        assert_eq!(code, 200);
        assert_eq!(body, serde_json::json!({ key: want }));
    }
    let (code, body) = d.call(
        "GET",
        &format!("download/getproperty?Id={id}&PropertyKey=Color"),
    );
    assert_eq!(
        (code, body["ErrorCode"].as_i64()),
        (400, Some(hr(0x80D0_2011)))
    );
    let (code, body) = d.call(
        "POST",
        &format!("download/setproperty?Id={id}&NoProgressTimeoutSeconds=3"),
    );
    assert_eq!(
        (code, body["ErrorCode"].as_i64()),
        (400, Some(hr(0x8007_0057)))
    );
    let (_, list) = d.call("GET", "download/enumerate");
    assert_eq!(list["Downloads"].as_array().unwrap().len(), 1);
    assert_eq!(list["Downloads"][0]["Uri"], url.as_str());
    let (_, filtered) = d.call("GET", "download/enumerate?Uri=http://elsewhere/x");
    assert_eq!(filtered["Downloads"].as_array().unwrap().len(), 0);
    d.call("POST", &format!("download/start?Id={id}"));
    d.wait_for(&id, "Transferred");
    let (code, body) = d.call(
        "POST",
        &format!("download/setproperty?Id={id}&DownloadFilePath=/tmp/elsewhere"),
    );
    assert_eq!(
        (code, body["ErrorCode"].as_i64()),
        (400, Some(hr(0x80D0_2013))),
        "path only before start"
    );
}

#[test]
fn wire_quirks_and_bad_requests() {
    let f = daemon();
    let d = &f.d;
    // A leading slash and a trailing one are both accepted; segments are case-insensitive.
    let text =
        d.raw(b"POST /Download/CREATE/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("\r\nContent-Length: 45\r\n"), "{text}");
    // Keep-alive: two requests on one socket, two answers.
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST download/create HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET download/enumerate HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut both = String::new();
    s.read_to_string(&mut both).unwrap();
    assert_eq!(both.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{both}");
    let cases: [(&str, u16, u32); 6] = [
        ("POST download/frobnicate HTTP/1.1", 400, 0x8007_0032),
        ("GET download/create HTTP/1.1", 400, 0x8007_0032),
        ("POST download/create?Color=red HTTP/1.1", 400, 0x8007_0057),
        ("GET download/getstatus HTTP/1.1", 400, 0x8007_0057),
        (
            "GET download/getstatus?Id=00000000-0000-4000-8000-000000000000 HTTP/1.1",
            404,
            0x8007_0490,
        ),
        (
            "POST download/create?Uri=http://h/%zz HTTP/1.1",
            400,
            0x8007_0057,
        ),
    ];
    for (line, code, hresult) in cases {
        let text =
            d.raw(format!("{line}\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes());
        let (got, body) = parse_response(&text);
        assert_eq!(
            (got, body["ErrorCode"].as_i64()),
            (code, Some(hr(hresult))),
            "{line}"
        );
    }
    // A huge request line: a clear 400, and the daemon keeps serving.
    let huge = format!(
        "GET download/enumerate?Uri={} HTTP/1.1\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let text = d.raw(huge.as_bytes());
    assert!(
        text.starts_with("HTTP/1.1 400 BadRequest\r\n"),
        "{}",
        &text[..text.len().min(80)]
    );
    // A client that disconnects mid-request does not disturb others.
    {
        let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
        s.write_all(b"POST download/cre").unwrap();
    }
    assert_eq!(d.call("GET", "download/enumerate").0, 200);
}

#[test]
fn many_concurrent_clients() {
    let f = daemon();
    let d = &f.d;
    let port = d.port;
    let handles: Vec<_> = (0..32)
        .map(|_| {
            thread::spawn(move || {
                for _ in 0..5 {
                    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    s.write_all(b"POST download/create HTTP/1.1\r\nConnection: close\r\n\r\n")
                        .unwrap();
                    let mut text = String::new();
                    s.read_to_string(&mut text).unwrap();
                    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let (_, list) = d.call("GET", "download/enumerate");
    assert_eq!(list["Downloads"].as_array().unwrap().len(), 160);
}

#[test]
fn port_file_replaces_stale_ones_and_goes_away_on_sigterm() {
    let run_dir = temp_dir();
    std::fs::write(run_dir.path().join("restport.1"), "50000\n").unwrap();
    std::fs::write(run_dir.path().join("old-restport-x"), "1\n").unwrap();
    let cache = temp_dir();
    let d = Daemon::start(run_dir.path(), cache.path());
    let names: Vec<String> = std::fs::read_dir(&d.run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restport"))
        .collect();
    let own = format!("restport.{}", d.pid());
    assert_eq!(names, vec![own.clone()], "exactly its own port file");
    let file = d.run_dir.join(&own);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("{}\n", d.port)
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o444
    );
    assert!((50000..=60999).contains(&d.port));
    let run_dir = d.run_dir.clone();
    d.stop();
    assert!(!run_dir.join(own).exists(), "port file removed at shutdown");
}
