//! `donode get` against a misbehaving origin ([`FaultServer`]): error statuses, truncated and
//! reset bodies (retried with backoff), a stalled connection (the no-progress timeout), an
//! origin that ignores Range, and a file that changes on the origin mid-download (If-Range
//! answered with 200: the node restarts against the new version, or gives up if it keeps
//! changing).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use do_tests::{
    DonodeGet, Fault, FaultHandle, FaultServer, Outcome, assert_no_output, assert_no_temp_files,
    b3sum, random_bytes, temp_dir,
};
use tempfile::TempDir;

const SIZE: usize = 4 << 20;

/// The b3sum of `bytes` (written to a scratch file).
fn sum_of(bytes: &[u8]) -> String {
    let dir = temp_dir();
    let path = dir.path().join("expected.bin");
    std::fs::write(&path, bytes).unwrap();
    b3sum(&path).unwrap()
}

/// Runs `donode get` on the fault server's URL into a fresh work dir.
fn get(server: &FaultServer, args: &[&str]) -> (TempDir, Outcome) {
    let work = temp_dir();
    let out = work.path().join("out.bin");
    let run = DonodeGet::new(&server.url(), &out, &work.path().join("cache"))
        .args(args)
        .timeout(Duration::from_secs(30))
        .run();
    (work, run)
}

/// Asserts success and that `work/out.bin` hashes to `expected`, with no temporaries left.
#[track_caller]
fn assert_ok(work: &TempDir, run: &Outcome, expected: &str) {
    run.assert_code(0);
    let out = work.path().join("out.bin");
    assert_eq!(b3sum(&out).unwrap(), expected, "wrong output content");
    assert_no_temp_files(&out);
}

/// Waits until the server has sent at least `bytes` body bytes (a fault has been hit).
fn wait_for_bytes(h: &FaultHandle, bytes: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while h.body_bytes_sent() < bytes {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Serves `fault` until the first faulty body went out, then, `after` later, `Fault::None`.
fn transient_fault(fault: Fault, hit_at: u64, after: Duration) {
    let body = random_bytes(SIZE, 11);
    let expected = sum_of(&body);
    let server = FaultServer::start_with(body, fault.clone()).unwrap();
    let h = server.handle();
    let healer = thread::spawn(move || {
        let hit = wait_for_bytes(&h, hit_at, Duration::from_secs(20));
        thread::sleep(after);
        h.set_fault(Fault::None);
        hit
    });
    let (work, run) = get(&server, &["--json"]);
    let hit = healer.join().unwrap();
    assert!(hit, "the fault {fault:?} was never hit");
    assert_ok(&work, &run, &expected);
    assert_eq!(run.summary().bytes_total, SIZE as u64);
    assert_eq!(run.summary().content_id.as_deref(), Some(expected.as_str()));
}

#[test]
fn two_503s_then_success() {
    let body = random_bytes(SIZE, 1);
    let expected = sum_of(&body);
    let server = FaultServer::start_with(
        body,
        Fault::FailFirst {
            count: 2,
            status: 503,
        },
    )
    .unwrap();
    let (work, run) = get(&server, &[]);
    assert_ok(&work, &run, &expected);
    assert!(
        server.requests() >= 3,
        "only {} requests",
        server.requests()
    );
}

#[test]
fn truncated_bodies_are_retried() {
    transient_fault(
        Fault::TruncateAfter(100_000),
        100_000,
        Duration::from_millis(300),
    );
}

#[test]
fn reset_connections_are_retried() {
    transient_fault(
        Fault::ResetAfter(100_000),
        100_000,
        Duration::from_millis(300),
    );
}

#[test]
fn stalled_origin_hits_the_no_progress_timeout() {
    let server =
        FaultServer::start_with(random_bytes(SIZE, 2), Fault::StallAfter(100_000)).unwrap();
    let (work, run) = get(&server, &["--no-progress-timeout", "2"]);
    run.assert_code(1)
        .assert_stderr_contains("no progress")
        .assert_stderr_contains("0x80d02002");
    assert!(
        run.elapsed < Duration::from_secs(10),
        "took {:?} with --no-progress-timeout 2",
        run.elapsed
    );
    assert_no_output(&work.path().join("out.bin"));
}

#[test]
fn origin_ignoring_range_gives_the_whole_file() {
    let body = random_bytes(SIZE, 3);
    let expected = sum_of(&body);
    let server = FaultServer::start_with(body, Fault::IgnoreRange).unwrap();
    let (work, run) = get(&server, &["--json"]);
    assert_ok(&work, &run, &expected);
    assert_eq!(run.summary().bytes_total, SIZE as u64);
    assert!(
        server.body_bytes_sent() <= (SIZE as u64) * 101 / 100,
        "the whole body was sent more than once: {} bytes",
        server.body_bytes_sent()
    );
}

#[test]
fn ranges_from_an_origin_ignoring_range() {
    let body = random_bytes(SIZE, 4);
    let server = FaultServer::start_with(body.clone(), Fault::IgnoreRange).unwrap();
    let (work, run) = get(&server, &["--range", "3000000:1000", "--range", "10:20"]);
    run.assert_code(0);
    let out = work.path().join("out.bin");
    let mut expected = body[3_000_000..3_001_000].to_vec();
    expected.extend_from_slice(&body[10..30]);
    assert!(std::fs::read(&out).unwrap() == expected);
    assert_no_temp_files(&out);
}

/// The file changes (new body and ETag) right after the first truncated response, so the
/// retries' If-Range no longer matches and the origin answers 200.
fn changes_mid_download(new_len: usize) {
    let v1 = random_bytes(SIZE, 5);
    let v2 = random_bytes(new_len, 6);
    let v2_sum = sum_of(&v2);
    let server = FaultServer::start_with(v1, Fault::TruncateAfter(200_000)).unwrap();
    let h = server.handle();
    let changer = thread::spawn(move || {
        let hit = wait_for_bytes(&h, 1, Duration::from_secs(20));
        h.set_body(v2, "\"v2\"");
        h.set_fault(Fault::None);
        hit
    });
    let (work, run) = get(&server, &["--json"]);
    assert!(changer.join().unwrap(), "the first response never came");
    assert_ok(&work, &run, &v2_sum);
    let s = run.summary();
    assert_eq!(s.bytes_total, new_len as u64);
    assert_eq!(s.content_id.as_deref(), Some(v2_sum.as_str()));
    assert_eq!(
        std::fs::metadata(work.path().join("out.bin"))
            .unwrap()
            .len(),
        new_len as u64
    );
}

#[test]
fn file_changing_mid_download_restarts_against_the_new_version() {
    changes_mid_download(SIZE);
}

#[test]
fn file_changing_length_mid_download_restarts_against_the_new_version() {
    changes_mid_download(SIZE + 12_345);
}

#[test]
fn file_that_keeps_changing_fails_with_412() {
    let server =
        FaultServer::start_with(random_bytes(SIZE, 7), Fault::TruncateAfter(100_000)).unwrap();
    let h = server.handle();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let changer = thread::spawn(move || {
        let mut version = 1u64;
        while !stop2.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(100));
            version += 1;
            h.set_body(random_bytes(SIZE, 7 + version), &format!("\"v{version}\""));
        }
    });
    // One connection: each change is seen by a single fetch.
    let (work, run) = get(
        &server,
        &["--no-progress-timeout", "20", "--connections", "1"],
    );
    stop.store(true, Ordering::SeqCst);
    changer.join().unwrap();
    run.assert_code(1).assert_stderr_contains("0x8019019c");
    assert_no_output(&work.path().join("out.bin"));
}

#[test]
fn one_outage_across_all_connections_is_retried_after_the_first_delay() {
    let body = random_bytes(SIZE, 8);
    let expected = sum_of(&body);
    let server = FaultServer::start_with(body, Fault::TruncateAfter(100_000)).unwrap();
    let h = server.handle();
    // Heal as soon as all four spans (1 MiB each) were truncated.
    let healer = thread::spawn(move || {
        let hit = wait_for_bytes(&h, 400_000, Duration::from_secs(20));
        h.set_fault(Fault::None);
        hit
    });
    let (work, run) = get(&server, &["--connections", "4"]);
    assert!(
        healer.join().unwrap(),
        "the four truncations never happened"
    );
    assert_ok(&work, &run, &expected);
    // First retry delay is at most 0.5 s; allow 1 s more for everything else.
    assert!(
        run.elapsed < Duration::from_millis(1500),
        "a single outage delayed the download by {:?}",
        run.elapsed
    );
}
