//! `donode get` against a well-behaved nginx origin: whole files, `--content-id`, the `--json`
//! summary, the cache, byte ranges, one connection, an origin that ignores Range, and edge
//! sizes (0, 65536 and 65537 bytes). Every success is checked with `b3sum` and for leftover
//! temporaries; the first download's origin egress is checked for duplicate fetching.

use std::path::Path;
use std::time::{Duration, Instant};

use do_tests::{
    DonodeGet, Nginx, assert_no_temp_files, b3sum, random_bytes, temp_dir, write_random_file,
};
use tempfile::TempDir;

const SIZE: u64 = 8 << 20;

/// A served directory with one random file `name` of `len` bytes, and nginx on it.
fn origin(name: &str, len: u64, seed: u64) -> (TempDir, Nginx, String) {
    let root = temp_dir();
    let path = root.path().join(name);
    write_random_file(&path, len, seed).unwrap();
    let sum = b3sum(&path).unwrap();
    let nginx = Nginx::start(root.path()).unwrap();
    (root, nginx, sum)
}

/// Asserts `output` is complete (its b3sum is `expected`) and nothing temporary is left.
#[track_caller]
fn assert_output(output: &Path, expected: &str) {
    assert_eq!(
        b3sum(output).unwrap(),
        expected,
        "{} has the wrong content",
        output.display()
    );
    assert_no_temp_files(output);
}

/// Waits (briefly) until nginx has logged at least `bytes` body bytes, then returns the total.
fn logged_body_bytes(nginx: &Nginx, bytes: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let got = nginx.body_bytes();
        if got >= bytes || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn whole_file_json_egress_and_second_get_from_cache() {
    let (_root, nginx, sum) = origin("a.bin", SIZE, 1);
    let url = nginx.url("/files/a.bin");
    let work = temp_dir();
    let cache = work.path().join("cache");
    let out1 = work.path().join("out1.bin");

    let run = DonodeGet::new(&url, &out1, &cache).arg("--json").run();
    run.assert_code(0);
    assert_output(&out1, &sum);
    let s = run.summary();
    assert_eq!(s.url, url);
    assert_eq!(Path::new(&s.output), out1);
    assert_eq!(s.bytes_total, SIZE);
    assert_eq!(s.bytes_from_http, SIZE);
    assert_eq!(s.bytes_from_cache, 0);
    assert_eq!(s.content_id.as_deref(), Some(sum.as_str()));
    assert!(s.seconds >= 0.0);

    // No byte fetched twice: nginx sent (about) the file once.
    let egress = logged_body_bytes(&nginx, SIZE);
    assert!(
        egress >= SIZE && egress * 100 <= SIZE * 101,
        "nginx sent {egress} body bytes for a {SIZE}-byte file: {:#?}",
        nginx.log_lines()
    );

    // The same URL again, to another output: all from the cache.
    nginx.clear_log().unwrap();
    let out2 = work.path().join("out2.bin");
    let run = DonodeGet::new(&url, &out2, &cache).arg("--json").run();
    run.assert_code(0);
    assert_output(&out2, &sum);
    let s = run.summary();
    assert_eq!(s.bytes_total, SIZE);
    assert_eq!(
        s.bytes_from_http, 0,
        "second get should come from the cache"
    );
    assert_eq!(s.bytes_from_cache, SIZE);
    assert_eq!(s.content_id.as_deref(), Some(sum.as_str()));
    assert_eq!(
        nginx.body_bytes(),
        0,
        "second get fetched body bytes: {:#?}",
        nginx.log_lines()
    );
    // The first output is untouched.
    assert_output(&out1, &sum);
}

#[test]
fn right_content_id_succeeds() {
    let (_root, nginx, sum) = origin("a.bin", SIZE, 2);
    let work = temp_dir();
    let out = work.path().join("out.bin");
    let run = DonodeGet::new(&nginx.url("/files/a.bin"), &out, &work.path().join("cache"))
        .args(["--content-id", &sum, "--json"])
        .run();
    run.assert_code(0);
    assert_output(&out, &sum);
    assert_eq!(run.summary().content_id.as_deref(), Some(sum.as_str()));
}

#[test]
fn ranges_are_concatenated_in_the_order_given() {
    let (root, nginx, _) = origin("a.bin", SIZE, 3);
    let data = std::fs::read(root.path().join("a.bin")).unwrap();
    let work = temp_dir();
    let out = work.path().join("out.bin");
    let run = DonodeGet::new(&nginx.url("/files/a.bin"), &out, &work.path().join("cache"))
        .args(["--range", "5000000:eof", "--range", "100:1000", "--json"])
        .run();
    run.assert_code(0);
    let mut expected = data[5_000_000..].to_vec();
    expected.extend_from_slice(&data[100..1100]);
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), expected.len(), "output length");
    assert!(got == expected, "output is not the ranges concatenated");
    assert_no_temp_files(&out);
    assert_eq!(run.summary().bytes_total, expected.len() as u64);

    // Ascending order too, to a second output.
    let out2 = work.path().join("out2.bin");
    DonodeGet::new(
        &nginx.url("/files/a.bin"),
        &out2,
        &work.path().join("cache"),
    )
    .args(["--range", "100:1000", "--range", "5000000:eof"])
    .run()
    .assert_code(0);
    let mut expected = data[100..1100].to_vec();
    expected.extend_from_slice(&data[5_000_000..]);
    assert!(std::fs::read(&out2).unwrap() == expected);
    assert_no_temp_files(&out2);
}

#[test]
fn one_connection() {
    let (_root, nginx, sum) = origin("a.bin", SIZE, 4);
    let work = temp_dir();
    let out = work.path().join("out.bin");
    let run = DonodeGet::new(&nginx.url("/files/a.bin"), &out, &work.path().join("cache"))
        .args(["--connections", "1", "--json"])
        .run();
    run.assert_code(0);
    assert_output(&out, &sum);
    assert_eq!(run.summary().bytes_from_http, SIZE);
    let egress = logged_body_bytes(&nginx, SIZE);
    assert!(
        egress * 100 <= SIZE * 101,
        "nginx sent {egress} body bytes for a {SIZE}-byte file"
    );
}

#[test]
fn origin_ignoring_range() {
    let (_root, nginx, sum) = origin("a.bin", SIZE, 5);
    let work = temp_dir();
    let out = work.path().join("out.bin");
    let run = DonodeGet::new(
        &nginx.url("/norange/a.bin"),
        &out,
        &work.path().join("cache"),
    )
    .arg("--json")
    .run();
    run.assert_code(0);
    assert_output(&out, &sum);
    let s = run.summary();
    assert_eq!(s.bytes_total, SIZE);
    assert_eq!(s.bytes_from_http, SIZE);
    // One whole-file request, not one per connection.
    let egress = logged_body_bytes(&nginx, SIZE);
    assert!(
        egress * 100 <= SIZE * 101,
        "nginx sent {egress} body bytes for a {SIZE}-byte file: {:#?}",
        nginx.log_lines()
    );
}

/// Downloads a `len`-byte file twice (origin, then cache) and checks both outputs.
fn edge_size(len: u64, seed: u64) {
    let (_root, nginx, sum) = origin("e.bin", len, seed);
    let url = nginx.url("/files/e.bin");
    let work = temp_dir();
    let cache = work.path().join("cache");
    let out = work.path().join("out.bin");
    let run = DonodeGet::new(&url, &out, &cache).arg("--json").run();
    run.assert_code(0);
    assert_output(&out, &sum);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), len);
    let s = run.summary();
    assert_eq!(s.bytes_total, len);
    assert_eq!(s.bytes_from_http, len);
    assert_eq!(s.content_id.as_deref(), Some(sum.as_str()));

    let out2 = work.path().join("out2.bin");
    let run = DonodeGet::new(&url, &out2, &cache)
        .args(["--json", "--content-id", &sum])
        .run();
    run.assert_code(0);
    assert_output(&out2, &sum);
    let s = run.summary();
    assert_eq!(s.bytes_from_http, 0);
    assert_eq!(s.bytes_from_cache, len);
}

#[test]
fn empty_file() {
    edge_size(0, 6);
}

#[test]
fn file_of_exactly_one_block() {
    edge_size(65_536, 7);
}

#[test]
fn file_of_one_block_and_one_byte() {
    edge_size(65_537, 8);
}

#[test]
fn range_within_the_last_partial_block() {
    let len = 65_537;
    let (_root, nginx, _) = origin("e.bin", len, 9);
    let data = random_bytes(len as usize, 9);
    let work = temp_dir();
    let out = work.path().join("out.bin");
    DonodeGet::new(&nginx.url("/files/e.bin"), &out, &work.path().join("cache"))
        .args(["--range", "65536:1", "--range", "0:1"])
        .run()
        .assert_code(0);
    assert_eq!(std::fs::read(&out).unwrap(), vec![data[65_536], data[0]]);
    assert_no_temp_files(&out);
}
