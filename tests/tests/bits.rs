//! The BITS-compatible job API of `donode run` (`/v1/jobs`, see docs/bits.md), against a real
//! nginx: the state machine, multi-file jobs with ranges, atomic `complete`, `cancel`, errors,
//! priorities, restarts, events, Job5 properties and file statistics.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use do_tests::{
    Daemon, Nginx, NginxOptions, b3sum, donode_temp_files, free_port, temp_dir, write_random_file,
};
use serde_json::{Value, json};
use tempfile::TempDir;

const E_INVALIDARG: u64 = 0x8007_0057;
const E_NOTIMPL: u64 = 0x8000_4001;
const DO_E_DOWNLOAD_NO_PROGRESS: u64 = 0x80D0_2002;
const DO_E_JOB_NOT_FOUND: u64 = 0x80D0_2003;
const DO_E_JOB_EMPTY: u64 = 0x80D0_2004;
const DO_E_INVALID_STATE: u64 = 0x80D0_2013;
const DO_E_ERROR_INFORMATION_UNAVAILABLE: u64 = 0x80D0_2014;
const DO_E_INVALID_RANGE: u64 = 0x80D0_5010;
const DO_E_OVERLAPPING_RANGES: u64 = 0x80D0_5012;
const BG_E_NO_PROGRESS: u64 = 0x8020_0024;
const BG_E_HTTP_ERROR_403: u64 = 0x8019_0193;
const BG_E_HTTP_ERROR_404: u64 = 0x8019_0194;
const BG_LENGTH_TO_EOF: u64 = u64::MAX;

/// The `/v1/jobs` calls the tests make.
trait Jobs {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value);

    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (code, v) = self.call(method, path, body);
        assert_eq!(code, 200, "{method} {path}: {v}");
        v
    }

    /// Asserts a `code` answer with `{"ErrorCode": hr}`.
    fn fails(&self, method: &str, path: &str, body: Option<Value>, code: u16, hr: u64) {
        let (got, v) = self.call(method, path, body);
        assert_eq!(
            (got, v["ErrorCode"].as_u64()),
            (code, Some(hr)),
            "{method} {path}: expected {code} {hr:#010X}, got {got} {v}"
        );
    }

    fn create_job(&self, name: &str) -> String {
        let v = self.ok(
            "POST",
            "/v1/jobs",
            Some(json!({ "DisplayName": name, "Type": 0 })),
        );
        v["Id"]
            .as_str()
            .unwrap_or_else(|| panic!("no Id: {v}"))
            .to_owned()
    }

    fn add(&self, id: &str, url: &str, local: &Path, ranges: Option<Value>) -> u64 {
        let mut body = json!({ "RemoteUrl": url, "LocalName": local });
        if let Some(r) = ranges {
            body["Ranges"] = r;
        }
        let v = self.ok("POST", &format!("/v1/jobs/{id}/files"), Some(body));
        v["Index"]
            .as_u64()
            .unwrap_or_else(|| panic!("no Index: {v}"))
    }

    fn info(&self, id: &str) -> Value {
        self.ok("GET", &format!("/v1/jobs/{id}"), None)
    }

    fn state(&self, id: &str) -> String {
        let v = self.info(id);
        v["State"]
            .as_str()
            .unwrap_or_else(|| panic!("no State: {v}"))
            .to_owned()
    }

    /// `POST /v1/jobs/{id}/{action}` (resume, suspend, cancel, complete).
    fn act(&self, id: &str, action: &str) -> (u16, Value) {
        self.call("POST", &format!("/v1/jobs/{id}/{action}"), None)
    }

    fn act_ok(&self, id: &str, action: &str) {
        self.ok("POST", &format!("/v1/jobs/{id}/{action}"), None);
    }

    fn files(&self, id: &str) -> Vec<Value> {
        let v = self.ok("GET", &format!("/v1/jobs/{id}/files"), None);
        v["Files"]
            .as_array()
            .unwrap_or_else(|| panic!("no Files: {v}"))
            .clone()
    }

    fn error(&self, id: &str) -> Value {
        self.ok("GET", &format!("/v1/jobs/{id}/error"), None)
    }

    /// Polls `GET /v1/jobs/{id}` every 50 ms until its state is `want`; fails at once on a state
    /// it cannot leave by itself (ERROR, ACKNOWLEDGED, CANCELLED, SUSPENDED) other than `want`.
    fn wait_state(&self, id: &str, want: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut seen: Vec<String> = Vec::new();
        loop {
            let v = self.info(id);
            let s = v["State"].as_str().unwrap_or("?").to_owned();
            if seen.last() != Some(&s) {
                seen.push(s.clone());
            }
            if s == want {
                return v;
            }
            if ["ERROR", "ACKNOWLEDGED", "CANCELLED", "SUSPENDED"].contains(&s.as_str()) {
                let e = self.call("GET", &format!("/v1/jobs/{id}/error"), None).1;
                panic!(
                    "job {id} is {s} while waiting for {want} (states {seen:?}): {v}; error {e}"
                );
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not {want} within {timeout:?} (states {seen:?}): {v}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Jobs for Daemon {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let text = self.raw(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{method} {path}: no HTTP head in {text:?}"));
        let code = head
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("{method} {path}: bad status line in {head:?}"));
        let value = if body.trim().is_empty() {
            Value::Null
        } else {
            // Not JSON (e.g. a route the daemon does not know yet): keep the text for messages.
            serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()))
        };
        (code, value)
    }
}

/// A served root with `files` (name, size, seed), an nginx whose `/slow/` runs at `rate`, and a
/// work dir with an `out` subdirectory for local names.
struct Setup {
    root: TempDir,
    nginx: Nginx,
    work: TempDir,
}

impl Setup {
    fn new(files: &[(&str, u64, u64)], rate: u64) -> Self {
        let root = temp_dir();
        for &(name, size, seed) in files {
            write_random_file(&root.path().join(name), size, seed).unwrap();
        }
        let nginx = Nginx::start_with(
            root.path(),
            NginxOptions {
                slow_rate_bytes_per_s: rate,
            },
        )
        .unwrap();
        let work = temp_dir();
        std::fs::create_dir(work.path().join("out")).unwrap();
        Self { root, nginx, work }
    }

    fn daemon(&self) -> Daemon {
        Daemon::start(self.work.path(), &self.work.path().join("cache"))
    }

    fn out(&self, name: &str) -> PathBuf {
        self.work.path().join("out").join(name)
    }

    fn src(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn temps(&self) -> Vec<PathBuf> {
        donode_temp_files(&self.work.path().join("out"))
    }
}

/// The temporary beside `local` for job `id`: `.NAME.donode-job-<job id>.tmp`.
fn tmp_path(local: &Path, id: &str) -> PathBuf {
    let name = local.file_name().unwrap().to_string_lossy();
    local.with_file_name(format!(".{name}.donode-job-{id}.tmp"))
}

/// An id of the same shape as `id` that names no job (its last hex digit changed).
fn unknown_id(id: &str) -> String {
    let mut chars: Vec<char> = id.chars().collect();
    let i = chars
        .iter()
        .rposition(char::is_ascii_hexdigit)
        .expect("a hex digit in the id");
    chars[i] = if chars[i] == '0' { '1' } else { '0' };
    chars.into_iter().collect()
}

fn assert_same(a: &Path, b: &Path) {
    assert_eq!(
        b3sum(a).unwrap(),
        b3sum(b).unwrap(),
        "{} vs {}",
        a.display(),
        b.display()
    );
}

const T: Duration = Duration::from_secs(20);

#[test]
fn state_machine_follows_the_bits_table() {
    let s = Setup::new(&[("a.bin", 64 << 10, 1), ("b.bin", 32 << 10, 2)], 0);
    let d = s.daemon();

    // Display name and type rules.
    for bad in [String::new(), "x".repeat(257)] {
        d.fails(
            "POST",
            "/v1/jobs",
            Some(json!({ "DisplayName": bad, "Type": 0 })),
            400,
            E_INVALIDARG,
        );
    }
    d.create_job(&"x".repeat(256));
    d.fails(
        "POST",
        "/v1/jobs",
        Some(json!({ "DisplayName": "upload", "Type": 1 })),
        400,
        E_NOTIMPL,
    );

    let id = d.create_job("one");
    let v = d.info(&id);
    assert_eq!(v["Id"], id.as_str(), "{v}");
    assert_eq!(v["DisplayName"], "one", "{v}");
    assert_eq!(v["Type"], 0, "{v}");
    assert_eq!(v["State"], "SUSPENDED", "{v}");
    assert_eq!(v["StateValue"], 3, "{v}");
    assert_eq!(v["Progress"]["FilesTotal"], 0, "{v}");

    let (code, e) = d.act(&id, "resume");
    assert_eq!(
        (code, e["ErrorCode"].as_u64()),
        (400, Some(DO_E_JOB_EMPTY)),
        "resume with no files: {e}"
    );
    assert_eq!(d.state(&id), "SUSPENDED");

    let a = s.out("a.bin");
    assert_eq!(d.add(&id, &s.nginx.url("/files/a.bin"), &a, None), 0);
    assert_eq!(d.info(&id)["Progress"]["FilesTotal"], 1);

    d.act_ok(&id, "suspend");
    assert_eq!(d.state(&id), "SUSPENDED", "suspend on SUSPENDED is a no-op");

    d.act_ok(&id, "resume");
    let st = d.state(&id);
    assert!(
        ["QUEUED", "TRANSFERRING", "TRANSFERRED"].contains(&st.as_str()),
        "after resume: {st}"
    );
    let v = d.wait_state(&id, "TRANSFERRED", T);
    assert_eq!(v["StateValue"], 6, "{v}");
    assert_eq!(v["Progress"]["FilesTransferred"], 1, "{v}");

    d.act_ok(&id, "resume");
    assert_eq!(
        d.state(&id),
        "TRANSFERRED",
        "resume on TRANSFERRED is a no-op"
    );
    d.act_ok(&id, "suspend");
    assert_eq!(
        d.state(&id),
        "TRANSFERRED",
        "suspend on TRANSFERRED is a no-op"
    );

    let b = s.out("b.bin");
    assert_eq!(d.add(&id, &s.nginx.url("/files/b.bin"), &b, None), 1);
    let v = d.info(&id);
    assert_eq!(v["State"], "SUSPENDED", "adding to TRANSFERRED: {v}");
    assert_eq!(v["Progress"]["FilesTotal"], 2, "{v}");

    d.act_ok(&id, "complete");
    let v = d.info(&id);
    assert_eq!(
        (v["State"].as_str(), v["StateValue"].as_u64()),
        (Some("ACKNOWLEDGED"), Some(7)),
        "{v}"
    );
    assert_same(&a, &s.src("a.bin"));
    assert!(!b.exists(), "the untransferred file is dropped");
    assert!(s.temps().is_empty(), "temporaries left: {:?}", s.temps());

    let final_calls = |id: &str, what: &str| {
        for action in ["resume", "suspend", "cancel", "complete"] {
            let (code, e) = d.act(id, action);
            assert_eq!(
                (code, e["ErrorCode"].as_u64()),
                (400, Some(DO_E_INVALID_STATE)),
                "{action} on {what}: {e}"
            );
        }
        d.fails(
            "POST",
            &format!("/v1/jobs/{id}/files"),
            Some(
                json!({ "RemoteUrl": s.nginx.url("/files/b.bin"), "LocalName": s.out("late.bin") }),
            ),
            400,
            DO_E_INVALID_STATE,
        );
        assert_eq!(d.state(id), what, "still {what}");
    };
    final_calls(&id, "ACKNOWLEDGED");

    let id2 = d.create_job("two");
    d.add(&id2, &s.nginx.url("/files/b.bin"), &s.out("c.bin"), None);
    d.act_ok(&id2, "cancel");
    let v = d.info(&id2);
    assert_eq!(
        (v["State"].as_str(), v["StateValue"].as_u64()),
        (Some("CANCELLED"), Some(8)),
        "{v}"
    );
    final_calls(&id2, "CANCELLED");

    let nobody = unknown_id(&id);
    d.fails(
        "GET",
        &format!("/v1/jobs/{nobody}"),
        None,
        404,
        DO_E_JOB_NOT_FOUND,
    );
    d.fails(
        "POST",
        &format!("/v1/jobs/{nobody}/resume"),
        None,
        404,
        DO_E_JOB_NOT_FOUND,
    );
}

#[test]
fn a_multi_file_job_with_ranges_appears_only_on_complete() {
    let (na, nb, nc) = ((1 << 20) + 3, 2 << 20, 1 << 20);
    let s = Setup::new(&[("a.bin", na, 1), ("b.bin", nb, 2), ("c.bin", nc, 3)], 0);
    let d = s.daemon();
    let id = d.create_job("multi");
    let (a, b, c) = (s.out("a.bin"), s.out("b.bin"), s.out("c.bin"));
    let ranges = json!([
        { "InitialOffset": 100, "Length": 1000 },
        { "InitialOffset": 5000, "Length": BG_LENGTH_TO_EOF },
    ]);
    assert_eq!(d.add(&id, &s.nginx.url("/files/a.bin"), &a, None), 0);
    assert_eq!(d.add(&id, &s.nginx.url("/files/b.bin"), &b, None), 1);
    assert_eq!(
        d.add(&id, &s.nginx.url("/files/c.bin"), &c, Some(ranges.clone())),
        2
    );

    // AddFileWithRanges validation (on the same, still suspended job).
    let files = format!("/v1/jobs/{id}/files");
    let url = s.nginx.url("/files/a.bin");
    let bad = |body: Value, hr: u64, what: &str| {
        let (code, e) = d.call("POST", &files, Some(body));
        assert_eq!(
            (code, e["ErrorCode"].as_u64()),
            (400, Some(hr)),
            "{what}: {e}"
        );
    };
    bad(
        json!({ "RemoteUrl": url, "LocalName": "" }),
        E_INVALIDARG,
        "empty local name",
    );
    bad(
        json!({ "RemoteUrl": url, "LocalName": "rel/x.bin" }),
        E_INVALIDARG,
        "relative local name",
    );
    bad(
        json!({ "RemoteUrl": "not a url", "LocalName": s.out("u.bin") }),
        E_INVALIDARG,
        "bad URL",
    );
    bad(
        json!({ "RemoteUrl": url, "LocalName": s.out("z.bin"), "Ranges": [{ "InitialOffset": 10, "Length": 0 }] }),
        DO_E_INVALID_RANGE,
        "empty range",
    );
    bad(
        json!({ "RemoteUrl": url, "LocalName": s.out("z.bin"), "Ranges": [{ "InitialOffset": BG_LENGTH_TO_EOF, "Length": 10 }] }),
        DO_E_INVALID_RANGE,
        "offset = BG_LENGTH_TO_EOF",
    );
    bad(
        json!({ "RemoteUrl": url, "LocalName": s.out("z.bin"), "Ranges": [{ "InitialOffset": 0, "Length": 100 }, { "InitialOffset": 50, "Length": 100 }] }),
        DO_E_OVERLAPPING_RANGES,
        "overlapping ranges",
    );
    assert_eq!(d.files(&id).len(), 3, "rejected files are not added");

    d.act_ok(&id, "resume");
    let v = d.wait_state(&id, "TRANSFERRED", T);
    let c_bytes = 1000 + (nc - 5000);
    let total = na + nb + c_bytes;
    let p = &v["Progress"];
    assert_eq!(p["FilesTotal"], 3, "{v}");
    assert_eq!(p["FilesTransferred"], 3, "{v}");
    assert_eq!(p["BytesTotal"], total, "{v}");
    assert_eq!(p["BytesTransferred"], total, "{v}");
    assert!(
        v["Times"]["TransferCompletionTime"].as_u64().unwrap_or(0) > 0,
        "{v}"
    );

    for f in [&a, &b, &c] {
        assert!(!f.exists(), "{} visible before complete", f.display());
        assert!(
            tmp_path(f, &id).exists(),
            "no temporary {} (have {:?})",
            tmp_path(f, &id).display(),
            s.temps()
        );
    }
    let fs = d.files(&id);
    assert_eq!(fs.len(), 3);
    for (i, f) in fs.iter().enumerate() {
        assert_eq!(f["Index"], i, "{f}");
        assert_eq!(f["Progress"]["Completed"], false, "before complete: {f}");
    }
    assert_eq!(fs[0]["Ranges"], Value::Null, "{}", fs[0]);
    assert_eq!(fs[2]["Ranges"], ranges, "{}", fs[2]);
    assert_eq!(fs[0]["Progress"]["BytesTotal"], na, "{}", fs[0]);
    assert_eq!(fs[2]["Progress"]["BytesTotal"], c_bytes, "{}", fs[2]);
    assert_eq!(fs[2]["Progress"]["BytesTransferred"], c_bytes, "{}", fs[2]);
    assert_eq!(
        fs[1]["RemoteName"],
        s.nginx.url("/files/b.bin"),
        "{}",
        fs[1]
    );
    assert_eq!(fs[1]["LocalName"], b.to_str().unwrap(), "{}", fs[1]);

    d.act_ok(&id, "complete");
    assert_eq!(d.state(&id), "ACKNOWLEDGED");
    assert_same(&a, &s.src("a.bin"));
    assert_same(&b, &s.src("b.bin"));
    let src = std::fs::read(s.src("c.bin")).unwrap();
    let mut want = src[100..1100].to_vec();
    want.extend_from_slice(&src[5000..]);
    let got = std::fs::read(&c).unwrap();
    assert_eq!(got.len(), want.len(), "ranged file length");
    assert!(got == want, "ranged file = bytes 100..1100 then 5000..end");
    for f in d.files(&id) {
        assert_eq!(f["Progress"]["Completed"], true, "after complete: {f}");
    }
    assert!(s.temps().is_empty(), "temporaries left: {:?}", s.temps());
}

/// Resumes a job with one 24 MiB file at 1 MiB/s and returns (daemon, setup, id, local name)
/// about 1 s into the transfer.
fn slow_job_in_flight() -> (Setup, Daemon, String, PathBuf) {
    let s = Setup::new(&[("big.bin", 24 << 20, 7)], 1 << 20);
    let d = s.daemon();
    let id = d.create_job("slow");
    let out = s.out("big.bin");
    d.add(&id, &s.nginx.url("/slow/big.bin"), &out, None);
    d.act_ok(&id, "resume");
    d.wait_state(&id, "TRANSFERRING", Duration::from_secs(5));
    thread::sleep(Duration::from_secs(1));
    let v = d.info(&id);
    assert_eq!(v["State"], "TRANSFERRING", "still in flight: {v}");
    // Where the bytes live while transferring is the node's business (its cache); only what is
    // visible under the local name matters.
    println!(
        "temporaries while transferring: {:?}, local name exists: {}",
        s.temps(),
        out.exists()
    );
    assert!(!out.exists(), "the local name appears only on complete");
    (s, d, id, out)
}

#[test]
fn complete_while_transferring_drops_the_partial_file() {
    let (s, d, id, out) = slow_job_in_flight();
    d.act_ok(&id, "complete");
    let v = d.info(&id);
    assert_eq!(v["State"], "ACKNOWLEDGED", "{v}");
    // Nothing may appear later either (no transfer still writing).
    for _ in 0..2 {
        assert!(!out.exists(), "a partial file became visible");
        assert!(s.temps().is_empty(), "temporaries left: {:?}", s.temps());
        thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        d.files(&id)[0]["Progress"]["Completed"],
        false,
        "the partial file was not completed"
    );
}

#[test]
fn cancel_deletes_the_temporaries() {
    let (s, d, id, out) = slow_job_in_flight();
    d.act_ok(&id, "cancel");
    let v = d.info(&id);
    assert_eq!(
        (v["State"].as_str(), v["StateValue"].as_u64()),
        (Some("CANCELLED"), Some(8)),
        "{v}"
    );
    for _ in 0..2 {
        assert!(!out.exists(), "no local file after cancel");
        assert!(s.temps().is_empty(), "temporaries left: {:?}", s.temps());
        thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn http_errors_put_the_job_in_error_with_bits_codes() {
    let s = Setup::new(&[], 0);
    let d = s.daemon();

    let suspended = d.create_job("idle");
    d.add(
        &suspended,
        &s.nginx.url("/status/404"),
        &s.out("i.bin"),
        None,
    );
    d.fails(
        "GET",
        &format!("/v1/jobs/{suspended}/error"),
        None,
        400,
        DO_E_ERROR_INFORMATION_UNAVAILABLE,
    );

    let forbidden = d.create_job("403");
    d.add(
        &forbidden,
        &s.nginx.url("/status/403"),
        &s.out("f.bin"),
        None,
    );
    d.act_ok(&forbidden, "resume");
    let v = d.wait_state(&forbidden, "ERROR", T);
    assert_eq!(v["StateValue"], 4, "{v}");
    let e = d.error(&forbidden);
    assert_eq!(e["Context"], "REMOTE_FILE", "{e}");
    assert_eq!(e["ContextValue"], 5, "{e}");
    assert_eq!(e["ErrorCode"], BG_E_HTTP_ERROR_403, "{e}");
    assert_eq!(e["File"], 0, "{e}");
    assert!(e["Description"].is_string(), "{e}");

    let missing = d.create_job("404");
    d.add(&missing, &s.nginx.url("/status/404"), &s.out("m.bin"), None);
    d.act_ok(&missing, "resume");
    d.wait_state(&missing, "ERROR", T);
    let e = d.error(&missing);
    assert_eq!(e["Context"], "NONE", "{e}");
    assert_eq!(e["ContextValue"], 0, "{e}");
    assert_eq!(e["ErrorCode"], BG_E_HTTP_ERROR_404, "{e}");

    // ERROR → suspend → SUSPENDED, and the error information is gone.
    d.act_ok(&missing, "suspend");
    assert_eq!(d.state(&missing), "SUSPENDED");
    d.fails(
        "GET",
        &format!("/v1/jobs/{missing}/error"),
        None,
        400,
        DO_E_ERROR_INFORMATION_UNAVAILABLE,
    );
}

#[test]
fn an_unreachable_origin_is_transient_then_an_error_after_the_no_progress_timeout() {
    let s = Setup::new(&[], 0);
    let d = s.daemon();
    let id = d.create_job("unreachable");
    let port = free_port().unwrap();
    d.add(
        &id,
        &format!("http://127.0.0.1:{port}/x.bin"),
        &s.out("x.bin"),
        None,
    );
    d.ok(
        "PUT",
        &format!("/v1/jobs/{id}/no-progress-timeout"),
        Some(json!({ "Seconds": 2 })),
    );
    assert_eq!(d.info(&id)["NoProgressTimeout"], 2);

    let start = Instant::now();
    d.act_ok(&id, "resume");
    let mut states: Vec<String> = Vec::new();
    let mut transient_error = None;
    loop {
        let st = d.state(&id);
        if states.last() != Some(&st) {
            states.push(st.clone());
        }
        if st == "TRANSIENT_ERROR" && transient_error.is_none() {
            let (code, e) = d.call("GET", &format!("/v1/jobs/{id}/error"), None);
            transient_error = Some((code, e, start.elapsed()));
        }
        if st == "ERROR" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no ERROR within 10 s: {states:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let took = start.elapsed();
    println!("states {states:?}, ERROR after {took:?}, transient {transient_error:?}");
    assert!(
        states.contains(&"TRANSIENT_ERROR".to_owned()),
        "TRANSIENT_ERROR before ERROR: {states:?}"
    );
    let (code, e, at) = transient_error.unwrap();
    assert!(at < Duration::from_secs(3), "TRANSIENT_ERROR after {at:?}");
    assert_eq!(code, 200, "GetError in TRANSIENT_ERROR: {e}");
    assert!(
        took >= Duration::from_millis(1500),
        "ERROR only after the 2 s no-progress timeout, got {took:?}"
    );
    let e = d.error(&id);
    let code = e["ErrorCode"].as_u64().unwrap_or_else(|| panic!("{e}"));
    match code {
        DO_E_DOWNLOAD_NO_PROGRESS => println!("ErrorCode DO_E_DOWNLOAD_NO_PROGRESS (0x80D02002)"),
        BG_E_NO_PROGRESS => println!("ErrorCode BG_E_NO_PROGRESS (0x80200024)"),
        other => panic!("ErrorCode {other:#010X}, expected a no-progress error: {e}"),
    }
}

#[test]
fn a_foreground_job_takes_bandwidth_from_a_normal_one() {
    let s = Setup::new(&[("f.bin", 32 << 20, 5)], 4 << 20);
    std::fs::copy(s.src("f.bin"), s.src("g.bin")).unwrap();
    let d = s.daemon();
    let a = d.create_job("normal");
    let b = d.create_job("foreground");
    let pa = d.info(&a)["Priority"].clone();
    assert!(
        pa == json!(2) || pa == json!("NORMAL"),
        "default priority: {pa}"
    );
    d.add(&a, &s.nginx.url("/slow/f.bin"), &s.out("a.bin"), None);
    d.add(&b, &s.nginx.url("/slow/g.bin"), &s.out("b.bin"), None);
    let (code, _) = d.call(
        "PUT",
        &format!("/v1/jobs/{b}/priority"),
        Some(json!({ "Priority": 4 })),
    );
    assert_eq!(code, 400, "priority 4 is out of range");
    d.ok(
        "PUT",
        &format!("/v1/jobs/{b}/priority"),
        Some(json!({ "Priority": 0 })),
    );
    let pb = d.info(&b)["Priority"].clone();
    assert!(
        pb == json!(0) || pb == json!("FOREGROUND"),
        "set priority: {pb}"
    );

    d.act_ok(&a, "resume");
    thread::sleep(Duration::from_millis(300));
    d.act_ok(&b, "resume");
    d.wait_state(&b, "TRANSFERRED", T);
    let va = d.info(&a);
    assert_eq!(
        va["State"], "TRANSFERRING",
        "the normal job yielded to the foreground one: {va}"
    );
    d.wait_state(&a, "TRANSFERRED", T);
    for (id, name) in [(&a, "a.bin"), (&b, "b.bin")] {
        d.act_ok(id, "complete");
        assert_same(&s.out(name), &s.src("f.bin"));
    }
}

#[test]
fn jobs_survive_a_crash_in_every_state() {
    let s = Setup::new(
        &[("small.bin", 256 << 10, 3), ("big.bin", 24 << 20, 4)],
        1 << 20,
    );
    let d = s.daemon();

    let suspended = d.create_job("suspended");
    d.add(
        &suspended,
        &s.nginx.url("/files/small.bin"),
        &s.out("s.bin"),
        None,
    );

    let transferred = d.create_job("transferred");
    d.add(
        &transferred,
        &s.nginx.url("/files/small.bin"),
        &s.out("t.bin"),
        None,
    );
    d.act_ok(&transferred, "resume");

    let error = d.create_job("error");
    d.add(&error, &s.nginx.url("/status/403"), &s.out("e.bin"), None);
    d.act_ok(&error, "resume");

    let transferring = d.create_job("transferring");
    d.add(
        &transferring,
        &s.nginx.url("/slow/big.bin"),
        &s.out("big.bin"),
        None,
    );
    d.act_ok(&transferring, "resume");

    d.wait_state(&transferred, "TRANSFERRED", T);
    d.wait_state(&error, "ERROR", T);
    let code = d.error(&error)["ErrorCode"].clone();
    assert_eq!(code, BG_E_HTTP_ERROR_403);
    d.wait_state(&transferring, "TRANSFERRING", Duration::from_secs(5));
    thread::sleep(Duration::from_millis(1500));
    let v = d.info(&transferring);
    assert_eq!(v["State"], "TRANSFERRING", "{v}");
    println!("before the crash: {}", v["Progress"]);

    d.kill();
    let d = s.daemon();

    let all = d.ok("GET", "/v1/jobs", None);
    let ids: Vec<&str> = all["Jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("{all}"))
        .iter()
        .filter_map(|j| j["Id"].as_str())
        .collect();
    for id in [&suspended, &transferred, &error, &transferring] {
        assert!(ids.contains(&id.as_str()), "{id} listed: {all}");
    }
    assert_eq!(ids.len(), 4, "{all}");

    let v = d.info(&suspended);
    assert_eq!(v["State"], "SUSPENDED", "{v}");
    assert_eq!(v["DisplayName"], "suspended", "{v}");
    let fs = d.files(&suspended);
    assert_eq!(fs.len(), 1);
    assert_eq!(fs[0]["RemoteName"], s.nginx.url("/files/small.bin"));
    assert_eq!(fs[0]["LocalName"], s.out("s.bin").to_str().unwrap());

    assert_eq!(d.state(&transferred), "TRANSFERRED");
    d.act_ok(&transferred, "complete");
    assert_same(&s.out("t.bin"), &s.src("small.bin"));

    assert_eq!(d.state(&error), "ERROR");
    assert_eq!(
        d.error(&error)["ErrorCode"],
        code,
        "same error after restart"
    );

    let st = d.state(&transferring);
    assert!(
        ["QUEUED", "TRANSFERRING", "TRANSIENT_ERROR", "TRANSFERRED"].contains(&st.as_str()),
        "resumes after the crash: {st}"
    );
    d.wait_state(&transferring, "TRANSFERRED", T);
    d.act_ok(&transferring, "complete");
    assert_same(&s.out("big.bin"), &s.src("big.bin"));
    let left: Vec<_> = s
        .temps()
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains(&suspended))
        .collect();
    assert!(left.is_empty(), "temporaries left: {left:?}");
}

#[test]
fn the_event_stream_reports_modification_and_transferred() {
    let s = Setup::new(&[("a.bin", 1 << 20, 8)], 0);
    let d = s.daemon();
    let id = d.create_job("events");
    d.add(&id, &s.nginx.url("/files/a.bin"), &s.out("a.bin"), None);
    let flags = format!("/v1/jobs/{id}/notify-flags");
    d.fails(
        "PUT",
        &flags,
        Some(json!({ "Flags": 0x04 })),
        400,
        E_NOTIMPL,
    );
    d.fails(
        "PUT",
        &flags,
        Some(json!({ "Flags": 0x20 })),
        400,
        E_NOTIMPL,
    );
    d.ok("PUT", &flags, Some(json!({ "Flags": 0x0B })));
    assert_eq!(d.info(&id)["NotifyFlags"], 0x0B);

    let mut stream = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    write!(
        stream,
        "GET /v1/jobs/{id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 200 OK\r\n");
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "headers ended");
        if line == "\r\n" {
            break;
        }
    }

    d.act_ok(&id, "resume");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut events: Vec<String> = Vec::new();
    let mut event = String::new();
    let transferred = loop {
        assert!(Instant::now() < deadline, "no JobTransferred: {events:?}");
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stream ended early: {events:?}"
        );
        let l = line.trim_end_matches(['\r', '\n']);
        if let Some(e) = l.strip_prefix("event:") {
            event = e.trim().to_owned();
            events.push(event.clone());
        } else if let Some(data) = l.strip_prefix("data:") {
            let v: Value = serde_json::from_str(data.trim())
                .unwrap_or_else(|e| panic!("data is JSON ({e}): {data}"));
            if event == "JobTransferred" {
                break v;
            }
        }
    };
    println!("events {events:?}");
    assert!(
        events.iter().any(|e| e == "JobModification"),
        "a JobModification: {events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e == "FileTransferred" || e == "JobError"),
        "only what the flags select: {events:?}"
    );
    assert_eq!(transferred["Id"], id.as_str(), "{transferred}");
    assert_eq!(transferred["State"], "TRANSFERRED", "{transferred}");
    assert_eq!(transferred["StateValue"], 6, "{transferred}");
}

#[test]
fn job5_properties() {
    let s = Setup::new(&[], 0);
    let d = s.daemon();
    let id = d.create_job("props");
    let p = |x: &str| format!("/v1/jobs/{id}/properties/{x}");

    let by_name = d.ok("GET", &p("COST_FLAGS"), None);
    let by_id = d.ok("GET", &p("1"), None);
    assert_eq!(by_name["Value"], by_id["Value"], "{by_name} vs {by_id}");
    assert!(!by_name["Value"].is_null(), "{by_name}");
    for v in [&by_name, &by_id] {
        assert_eq!(v["Property"], "COST_FLAGS", "{v}");
        assert_eq!(v["Id"], 1, "{v}");
    }
    d.ok("PUT", &p("COST_FLAGS"), Some(json!({ "Value": 1 })));
    assert_eq!(d.ok("GET", &p("1"), None)["Value"], 1);

    let zero = "{00000000-0000-0000-0000-000000000000}";
    d.ok(
        "PUT",
        &p("NOTIFICATION_CLSID"),
        Some(json!({ "Value": zero })),
    );
    let v = d.ok("GET", &p("2"), None);
    // GUID_NULL means "no CLSID": either spelling reads back.
    assert!(v["Value"] == zero || v["Value"] == "", "{v}");
    println!("NOTIFICATION_CLSID after setting GUID_NULL: {}", v["Value"]);
    let some = "{4E5F6A7B-1C2D-4E3F-8A9B-0C1D2E3F4A5B}";
    d.ok("PUT", &p("2"), Some(json!({ "Value": some })));
    let v = d.ok("GET", &p("NOTIFICATION_CLSID"), None);
    assert!(
        v["Value"]
            .as_str()
            .is_some_and(|g| g.eq_ignore_ascii_case(some)),
        "{v}"
    );
    assert_eq!(v["Property"], "NOTIFICATION_CLSID", "{v}");
    assert_eq!(v["Id"], 2, "{v}");

    for n in [3, 4, 5, 7, 9, 10] {
        d.fails("GET", &p(&n.to_string()), None, 400, E_NOTIMPL);
    }
    for n in ["0", "6", "8", "99", "BOGUS"] {
        d.fails("GET", &p(n), None, 400, E_INVALIDARG);
    }
}

#[test]
fn file_stats_and_response_headers() {
    let size = 1 << 20;
    let s = Setup::new(&[("a.bin", size, 9)], 0);
    let d = s.daemon();
    let id = d.create_job("stats");
    let url = s.nginx.url("/files/a.bin");
    d.add(&id, &url, &s.out("a.bin"), None);
    d.act_ok(&id, "resume");
    d.wait_state(&id, "TRANSFERRED", T);
    let f = d.ok("GET", &format!("/v1/jobs/{id}/files/0"), None);
    assert_eq!(f["Index"], 0, "{f}");
    assert_eq!(f["RemoteName"], url.as_str(), "{f}");
    assert_eq!(f["Progress"]["BytesTotal"], size, "{f}");
    assert_eq!(f["Progress"]["BytesTransferred"], size, "{f}");
    let st = &f["Stats"];
    assert_eq!(st["FileSize"], size, "{f}");
    assert_eq!(st["BytesFromHttp"], st["FileSize"], "{f}");
    assert_eq!(st["TotalBytesDownloaded"], size, "{f}");
    assert_eq!(st["SourceUrl"], url.as_str(), "{f}");
    assert_eq!(
        st["DownloadMode"], 0,
        "a daemon without peers is HTTP only: {f}"
    );
    assert!(
        st.get("Status").is_some_and(|v| !v.is_null()),
        "Stats.Status: {f}"
    );
    let headers = &f["HttpResponseHeaders"];
    assert!(!headers.is_null(), "{f}");
    assert!(
        headers.to_string().to_ascii_lowercase().contains("etag"),
        "an ETag among the response headers: {headers}"
    );
    let (code, v) = d.call("GET", &format!("/v1/jobs/{id}/files/1"), None);
    assert!(code == 400 || code == 404, "no file 1: {code} {v}");
}

#[test]
fn set_remote_name_continues_on_the_same_file_and_restarts_on_another() {
    let (s, d, id, out) = slow_job_in_flight();
    d.act_ok(&id, "suspend");
    // The same bytes with the same size and modification time: nginx gives the same validators.
    std::fs::copy(s.src("big.bin"), s.src("same.bin")).unwrap();
    let touched = std::process::Command::new("touch")
        .arg("-r")
        .arg(s.src("big.bin"))
        .arg(s.src("same.bin"))
        .status()
        .unwrap();
    assert!(touched.success());
    d.ok(
        "PUT",
        &format!("/v1/jobs/{id}/files/0/remote-name"),
        Some(json!({ "RemoteName": s.nginx.url("/files/same.bin") })),
    );
    let before = s.nginx.body_bytes();
    d.act_ok(&id, "resume");
    d.wait_state(&id, "TRANSFERRED", Duration::from_secs(20));
    let file = d.ok("GET", &format!("/v1/jobs/{id}/files/0"), None);
    assert_eq!(file["RemoteName"], s.nginx.url("/files/same.bin"));
    let sent = s.nginx.body_bytes() - before;
    assert!(
        sent < 24 << 20,
        "continued at the same offset: {sent} bytes fetched again"
    );
    d.act_ok(&id, "complete");
    assert_same(&out, &s.src("big.bin"));

    // A different file behind the new name: the transfer restarts and gives the new bytes.
    write_random_file(&s.src("other.bin"), 3 << 20, 99).unwrap();
    let id = d.create_job("switch");
    let out = s.out("switched.bin");
    d.add(&id, &s.nginx.url("/files/big.bin"), &out, None);
    d.ok(
        "PUT",
        &format!("/v1/jobs/{id}/files/0/remote-name"),
        Some(json!({ "RemoteName": s.nginx.url("/files/other.bin") })),
    );
    d.act_ok(&id, "resume");
    d.wait_state(&id, "TRANSFERRED", Duration::from_secs(20));
    d.act_ok(&id, "complete");
    assert_same(&out, &s.src("other.bin"));
    let (code, v) = d.call(
        "PUT",
        &format!("/v1/jobs/{id}/files/0/remote-name"),
        Some(json!({ "RemoteName": "ftp://nowhere/x" })),
    );
    assert_eq!((code, v["ErrorCode"].as_u64()), (400, Some(0x8007_0057)));
}
