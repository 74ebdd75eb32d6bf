//! The `/v1` JSON API of `donode run`: the full DO download model, against a real nginx.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    thread,
    time::Duration,
};

use do_tests::{Daemon, Nginx, NginxOptions, b3sum, temp_dir, write_random_file};
use serde_json::{Value, json};
use tempfile::TempDir;

/// The `/v1` calls the tests make.
trait V1 {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value);
    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (code, v) = self.call(method, path, body);
        assert_eq!(code, 200, "{method} {path}: {v}");
        v
    }
    fn create(&self, props: Value) -> String {
        self.ok("POST", "/v1/downloads", Some(props))["Id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
    fn wait(&self, id: &str) -> Value {
        self.ok(
            "GET",
            &format!("/v1/downloads/{id}/wait?TimeoutMs=20000"),
            None,
        )
    }
}

impl V1 for Daemon {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let text = self.raw(
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .as_bytes(),
        );
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let code = head[9..12].parse().unwrap();
        (
            code,
            if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(body).unwrap()
            },
        )
    }
}

fn setup(size: u64, rate: u64) -> (TempDir, Nginx, TempDir) {
    let root = temp_dir();
    write_random_file(&root.path().join("f.bin"), size, 11).unwrap();
    let nginx = Nginx::start_with(
        root.path(),
        NginxOptions {
            slow_rate_bytes_per_s: rate,
        },
    )
    .unwrap();
    (root, nginx, temp_dir())
}

fn err(v: &Value) -> u64 {
    v["ErrorCode"].as_u64().unwrap()
}

#[test]
fn properties_follow_do_access_and_state_rules() {
    let (_root, nginx, work) = setup(1 << 20, 0);
    let d = Daemon::start(work.path(), &work.path().join("cache"));
    let out = work.path().join("o.bin");
    let id = d.create(
        json!({ "Uri": nginx.url("/files/f.bin"), "LocalPath": out, "DisplayName": "demo" }),
    );
    let base = format!("/v1/downloads/{id}/properties");
    assert_eq!(
        d.ok("GET", &format!("{base}/Id"), None)["Value"],
        id.as_str()
    );
    assert_eq!(
        d.ok("GET", &format!("{base}/3"), None)["Value"],
        "demo",
        "by numeric id"
    );
    assert_eq!(
        d.ok("GET", &format!("{base}/CallbackFreqSeconds"), None)["Value"],
        1,
        "defaults"
    );
    let (code, v) = d.call("PUT", &format!("{base}/Id"), Some(json!({ "Value": "x" })));
    assert_eq!((code, err(&v)), (400, 0x80D0_2012), "read-only");
    let (code, v) = d.call("GET", &format!("{base}/IntegrityCheckInfo"), None);
    assert_eq!((code, err(&v)), (400, 0x80D0_2015), "write-only");
    let (code, v) = d.call("GET", &format!("{base}/26"), None);
    assert_eq!((code, err(&v)), (400, 0x80D0_2011), "unknown id");
    let (code, v) = d.call(
        "PUT",
        &format!("{base}/CostPolicy"),
        Some(json!({ "Value": 9 })),
    );
    assert_eq!((code, err(&v)), (400, 0x8007_0057), "out of range");
    let (code, v) = d.call(
        "PUT",
        &format!("{base}/ContentId"),
        Some(json!({ "Value": "zz" })),
    );
    assert_eq!((code, err(&v)), (400, 0x80D0_2202));
    d.ok(
        "PUT",
        &format!("{base}/ForegroundPriority"),
        Some(json!({ "Value": true })),
    );
    d.ok("POST", &format!("/v1/downloads/{id}/start"), None);
    let s = d.wait(&id);
    assert_eq!(s["State"], "Transferred", "{s}");
    assert_eq!(s["BytesTotal"], 1 << 20);
    let (code, v) = d.call(
        "PUT",
        &format!("{base}/LocalPath"),
        Some(json!({ "Value": "/tmp/x" })),
    );
    assert_eq!((code, err(&v)), (400, 0x80D0_2013), "fixed once started");
    d.ok(
        "PUT",
        &format!("{base}/NoProgressTimeoutSeconds"),
        Some(json!({ "Value": 60 })),
    );
    let content = d.ok("GET", &format!("{base}/ContentId"), None)["Value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        content,
        b3sum(&out).unwrap(),
        "the content id is known once transferred"
    );
    let full = d.ok("GET", &format!("/v1/downloads/{id}"), None);
    assert_eq!(full["Properties"]["DisplayName"], "demo");
    assert!(
        full["Properties"].get("IntegrityCheckInfo").is_none(),
        "write-only left out"
    );
    d.ok("POST", &format!("/v1/downloads/{id}/finalize"), None);
    let (code, v) = d.call("GET", &format!("/v1/downloads/{id}/status"), None);
    assert_eq!((code, err(&v)), (404, 0x8007_0490));
}

#[test]
fn ranges_land_at_their_offsets_and_a_second_start_adds_more() {
    let (root, nginx, work) = setup(3 << 20, 0);
    let d = Daemon::start(work.path(), &work.path().join("cache"));
    let out = work.path().join("r.bin");
    let id = d.create(json!({ "Uri": nginx.url("/files/f.bin"), "LocalPath": out }));
    let (code, v) = d.call(
        "POST",
        &format!("/v1/downloads/{id}/start"),
        Some(json!({ "Ranges": [{ "Offset": 0, "Length": 10 }, { "Offset": 5, "Length": 10 }] })),
    );
    assert_eq!((code, err(&v)), (400, 0x80D0_5012), "overlap");
    let (code, v) = d.call(
        "POST",
        &format!("/v1/downloads/{id}/start"),
        Some(json!({ "Ranges": [{ "Offset": 7, "Length": 0 }] })),
    );
    assert_eq!((code, err(&v)), (400, 0x80D0_5010), "empty range");
    let (code, v) = d.call(
        "POST",
        &format!("/v1/downloads/{id}/start"),
        Some(json!({ "Ranges": "all" })),
    );
    assert_eq!((code, err(&v)), (400, 0x8007_0057), "malformed body");
    let past = d.create(
        json!({ "Uri": nginx.url("/files/f.bin"), "LocalPath": work.path().join("past.bin") }),
    );
    d.ok(
        "POST",
        &format!("/v1/downloads/{past}/start"),
        Some(json!({ "Ranges": [{ "Offset": 4 << 20, "Length": 1 }] })),
    );
    let s = d.wait(&past);
    assert_eq!(
        (s["State"].as_str(), s["Error"].as_u64()),
        (Some("Paused"), Some(0x80D0_5010)),
        "past the end: {s}"
    );
    d.ok(
        "POST",
        &format!("/v1/downloads/{id}/start"),
        Some(json!({ "Ranges": [{ "Offset": 100, "Length": 1000 }] })),
    );
    let s = d.wait(&id);
    assert_eq!(
        (s["State"].as_str(), s["BytesTotal"].as_u64()),
        (Some("Transferred"), Some(1000))
    );
    let eof = u64::MAX;
    d.ok(
        "POST",
        &format!("/v1/downloads/{id}/start"),
        Some(json!({ "Ranges": [{ "Offset": 2 << 20, "Length": eof }] })),
    );
    let s = d.wait(&id);
    assert_eq!(s["State"], "Transferred", "{s}");
    let want = std::fs::read(root.path().join("f.bin")).unwrap();
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), want.len());
    assert_eq!(&got[100..1100], &want[100..1100]);
    assert_eq!(&got[2 << 20..], &want[2 << 20..]);
    assert!(
        got[1100..2 << 20].iter().all(|&b| b == 0),
        "holes elsewhere"
    );
}

#[test]
fn a_wrong_content_id_never_completes() {
    let (_root, nginx, work) = setup(1 << 20, 0);
    let d = Daemon::start(work.path(), &work.path().join("cache"));
    let out = work.path().join("c.bin");
    let wrong = "0".repeat(64);
    let id =
        d.create(json!({ "Uri": nginx.url("/files/f.bin"), "LocalPath": out, "ContentId": wrong }));
    d.ok("POST", &format!("/v1/downloads/{id}/start"), None);
    let s = d.wait(&id);
    assert_eq!(
        (s["State"].as_str(), s["Error"].as_u64()),
        (Some("Paused"), Some(0x80D0_6806)),
        "{s}"
    );
    assert_eq!(
        std::fs::metadata(&out).unwrap().len(),
        0,
        "the placeholder was never filled"
    );
    let id = d.create(json!({ "Uri": nginx.url("/files/f.bin"), "LocalPath": work.path().join("m.bin"), "IntegrityCheckMandatory": true }));
    let (code, v) = d.call("POST", &format!("/v1/downloads/{id}/start"), None);
    assert_eq!((code, err(&v)), (400, 0x80D0_2016));
}

#[test]
fn enumerate_by_category() {
    let (_root, nginx, work) = setup(1 << 20, 0);
    let d = Daemon::start(work.path(), &work.path().join("cache"));
    let a = d.create(json!({ "Uri": nginx.url("/files/f.bin"), "DisplayName": "alpha" }));
    let _b = d.create(json!({ "Uri": nginx.url("/files/g.bin"), "DisplayName": "beta" }));
    let all = d.ok("GET", "/v1/downloads", None);
    assert_eq!(all["Downloads"].as_array().unwrap().len(), 2);
    let by_name = d.ok("GET", "/v1/downloads?DisplayName=alpha", None);
    assert_eq!(by_name["Downloads"].as_array().unwrap().len(), 1);
    assert_eq!(by_name["Downloads"][0]["Id"], a.as_str());
    let by_uri = d.ok(
        "GET",
        &format!("/v1/downloads?Uri={}", nginx.url("/files/g.bin")),
        None,
    );
    assert_eq!(by_uri["Downloads"][0]["DisplayName"], "beta");
    let (code, _) = d.call("GET", "/v1/downloads?CostPolicy=1", None);
    assert_eq!(code, 400, "only the five DO categories");
}

#[test]
fn the_event_stream_reports_every_state_change() {
    // nginx sends up to 2 MiB per connection before its rate limit applies (sendfile chunks):
    // 32 MiB over 4 connections at 4 MiB/s each takes about 1.5 s.
    let (_root, nginx, work) = setup(32 << 20, 4 << 20);
    let d = Daemon::start(work.path(), &work.path().join("cache"));
    let id = d.create(json!({ "Uri": nginx.url("/slow/f.bin"), "LocalPath": work.path().join("e.bin"), "CallbackFreqSeconds": 1 }));
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /v1/downloads/{id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 200 OK\r\n");
    d.ok("POST", &format!("/v1/downloads/{id}/start"), None);
    let mut states = Vec::new();
    let mut events = 0;
    while states.last().map(String::as_str) != Some("Transferred") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stream ended early: {states:?}"
        );
        if let Some(data) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(data).unwrap();
            events += 1;
            let state = v["State"].as_str().unwrap().to_owned();
            if states.last() != Some(&state) {
                states.push(state);
            }
        }
    }
    assert_eq!(states, ["Created", "Transferring", "Transferred"]);
    // About 1.5 s with one progress event per second at most: a handful, not thousands.
    assert!((3..200).contains(&events), "{events} events");
}

#[test]
fn a_non_volatile_download_survives_a_daemon_restart() {
    let (root, nginx, work) = setup(24 << 20, 1 << 20);
    let cache = work.path().join("cache");
    let out = work.path().join("nv.bin");
    let d = Daemon::start(work.path(), &cache);
    let id =
        d.create(json!({ "Uri": nginx.url("/slow/f.bin"), "LocalPath": out, "NonVolatile": true }));
    let volatile = d
        .create(json!({ "Uri": nginx.url("/slow/f.bin"), "LocalPath": work.path().join("v.bin") }));
    d.ok("POST", &format!("/v1/downloads/{id}/start"), None);
    // Long enough for a checkpoint (at least one per second) on a slow machine, short enough
    // that 24 MiB at 4 x 1 MiB/s is not done.
    thread::sleep(Duration::from_millis(2000));
    let before = d.ok("GET", &format!("/v1/downloads/{id}/status"), None);
    assert_eq!(before["State"], "Transferring", "{before}");
    // A crash, not a shutdown: nothing gets a chance to be saved at the end.
    d.kill();
    let d = Daemon::start(work.path(), &cache);
    let (code, _) = d.call("GET", &format!("/v1/downloads/{volatile}/status"), None);
    assert_eq!(code, 404, "volatile downloads are gone, as in DO");
    let s = d.wait(&id);
    assert_eq!(s["State"], "Transferred", "{s}");
    assert_eq!(
        b3sum(&out).unwrap(),
        b3sum(&root.path().join("f.bin")).unwrap()
    );
    let stats = &d.ok("GET", &format!("/v1/downloads/{id}"), None)["Stats"];
    let cached = stats["BytesFromCache"].as_u64().unwrap();
    assert!(
        cached > 0,
        "resumed from what the crashed run had recorded: {stats}"
    );
    assert_eq!(
        cached + stats["BytesFromHttp"].as_u64().unwrap(),
        24 << 20,
        "{stats}"
    );
    d.ok("POST", &format!("/v1/downloads/{id}/finalize"), None);
    d.stop();
    let d = Daemon::start(work.path(), &cache);
    assert_eq!(
        d.call("GET", &format!("/v1/downloads/{id}/status"), None).0,
        404,
        "finalized is forgotten"
    );
}

#[test]
fn a_foreground_download_takes_bandwidth_from_a_background_one() {
    let (root, nginx, work) = setup(32 << 20, 4 << 20);
    std::fs::copy(root.path().join("f.bin"), root.path().join("g.bin")).unwrap();
    let d = Daemon::start(work.path(), &work.path().join("cache"));
    let background = d.create(
        json!({ "Uri": nginx.url("/slow/f.bin"), "LocalPath": work.path().join("bg.bin") }),
    );
    let foreground = d.create(json!({ "Uri": nginx.url("/slow/g.bin"), "LocalPath": work.path().join("fg.bin"), "ForegroundPriority": true }));
    d.ok("POST", &format!("/v1/downloads/{background}/start"), None);
    thread::sleep(Duration::from_millis(300));
    d.ok("POST", &format!("/v1/downloads/{foreground}/start"), None);
    let fg = d.wait(&foreground);
    assert_eq!(fg["State"], "Transferred");
    let bg = d.ok("GET", &format!("/v1/downloads/{background}/status"), None);
    assert_eq!(
        bg["State"], "Transferring",
        "the background download yielded: {bg}"
    );
    let bg = d.wait(&background);
    assert_eq!(bg["State"], "Transferred", "and finished afterwards");
    assert_eq!(
        b3sum(&work.path().join("bg.bin")).unwrap(),
        b3sum(&root.path().join("f.bin")).unwrap()
    );
}
