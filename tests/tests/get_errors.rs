//! `donode get` failures: HTTP error statuses, a wrong `--content-id`, an existing output with
//! and without `--force`, unwritable output paths, bad `--range`s, a malformed content id and a
//! malformed header. Every failure must exit with the right code and message and leave no
//! output file (and no temporaries) behind.

use std::time::Duration;

use do_tests::{
    DonodeGet, Nginx, Outcome, assert_no_output, assert_no_temp_files, b3sum, temp_dir,
    write_random_file,
};
use tempfile::TempDir;

const SIZE: u64 = 2 << 20;

/// nginx serving one random `SIZE`-byte file `a.bin`; returns its b3sum too.
fn origin(seed: u64) -> (TempDir, Nginx, String) {
    let root = temp_dir();
    let path = root.path().join("a.bin");
    write_random_file(&path, SIZE, seed).unwrap();
    let sum = b3sum(&path).unwrap();
    let nginx = Nginx::start(root.path()).unwrap();
    (root, nginx, sum)
}

/// Runs `donode get URL -o WORK/out.bin --cache-dir WORK/cache ARGS` in a fresh work dir.
fn get(url: &str, args: &[&str]) -> (TempDir, Outcome) {
    let work = temp_dir();
    let out = work.path().join("out.bin");
    let run = DonodeGet::new(url, &out, &work.path().join("cache"))
        .args(args)
        .timeout(Duration::from_secs(30))
        .run();
    (work, run)
}

/// Asserts a download error (exit 1) mentioning `message` and `code`, with no output left.
#[track_caller]
fn assert_http_error(nginx: &Nginx, path: &str, status: u16) {
    let url = nginx.url(path);
    let (work, run) = get(&url, &[]);
    run.assert_code(1)
        .assert_stderr_contains(&format!("donode: {url}: "))
        .assert_stderr_contains(&format!("the origin answered HTTP {status}"))
        .assert_stderr_contains(&format!(
            "(error {:#010x})",
            0x8019_0000_u32 | u32::from(status)
        ));
    assert_no_output(&work.path().join("out.bin"));
}

#[test]
fn http_404_and_403_fail_at_once() {
    let (_root, nginx, _) = origin(1);
    assert_http_error(&nginx, "/status/404", 404);
    assert_http_error(&nginx, "/status/403", 403);
    assert_http_error(&nginx, "/files/missing.bin", 404);
}

#[test]
fn http_500_fails_within_the_no_progress_timeout() {
    let (_root, nginx, _) = origin(2);
    let (work, run) = get(&nginx.url("/status/500"), &["--no-progress-timeout", "2"]);
    run.assert_code(1);
    // A 500 is transient: retried until the no-progress timeout ends the download.
    assert!(
        run.stderr.contains("0x80d02002"),
        "expected no-progress (0x80d02002): {}",
        run.stderr
    );
    assert!(
        run.elapsed < Duration::from_secs(10),
        "took {:?} with --no-progress-timeout 2",
        run.elapsed
    );
    assert_no_output(&work.path().join("out.bin"));
}

#[test]
fn wrong_content_id_then_right_one_from_the_cache() {
    let (_root, nginx, sum) = origin(3);
    let url = nginx.url("/files/a.bin");
    let work = temp_dir();
    let cache = work.path().join("cache");
    let out = work.path().join("out.bin");
    // Same length, one hex digit changed.
    let mut wrong = sum.clone().into_bytes();
    wrong[10] = if wrong[10] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();

    let run = DonodeGet::new(&url, &out, &cache)
        .args(["--content-id", &wrong])
        .run();
    run.assert_code(1)
        .assert_stderr_contains("integrity error")
        .assert_stderr_contains("0x80d06806");
    assert_no_output(&out);

    // The bytes were verified block by block and stay cached: the right id needs no fetch.
    nginx.clear_log().unwrap();
    let run = DonodeGet::new(&url, &out, &cache)
        .args(["--content-id", &sum, "--json"])
        .run();
    run.assert_code(0);
    assert_eq!(b3sum(&out).unwrap(), sum);
    assert_no_temp_files(&out);
    let s = run.summary();
    assert_eq!(
        s.bytes_from_http, 0,
        "re-downloaded after the integrity error"
    );
    assert_eq!(s.bytes_from_cache, SIZE);
    assert_eq!(nginx.body_bytes(), 0);
}

#[test]
fn existing_output_needs_force() {
    let (_root, nginx, sum) = origin(4);
    let url = nginx.url("/files/a.bin");
    let work = temp_dir();
    let cache = work.path().join("cache");
    let out = work.path().join("out.bin");
    std::fs::write(&out, b"precious").unwrap();

    let run = DonodeGet::new(&url, &out, &cache).run();
    run.assert_code(1).assert_stderr_contains("file exists");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    assert_no_temp_files(&out);
    assert!(
        nginx.log_lines().is_empty(),
        "refused only after contacting the origin: {:#?}",
        nginx.log_lines()
    );

    let run = DonodeGet::new(&url, &out, &cache).arg("--force").run();
    run.assert_code(0);
    assert_eq!(b3sum(&out).unwrap(), sum);
    assert_no_temp_files(&out);
}

#[test]
fn force_over_an_output_that_already_links_to_the_cache() {
    let (_root, nginx, sum) = origin(12);
    let url = nginx.url("/files/a.bin");
    let work = temp_dir();
    let cache = work.path().join("cache");
    let out = work.path().join("out.bin");
    DonodeGet::new(&url, &out, &cache).run().assert_code(0);
    assert_eq!(b3sum(&out).unwrap(), sum);
    // The same URL again over the same output: the cache's data file is linked over itself.
    let run = DonodeGet::new(&url, &out, &cache).arg("--force").run();
    run.assert_code(0);
    assert_eq!(b3sum(&out).unwrap(), sum);
    assert_no_temp_files(&out);
}

#[test]
fn unwritable_output_paths_are_refused_before_downloading() {
    let (_root, nginx, _) = origin(5);
    let url = nginx.url("/files/a.bin");
    let work = temp_dir();
    let cache = work.path().join("cache");

    // A directory that does not exist.
    let out = work.path().join("no/such/dir/out.bin");
    let run = DonodeGet::new(&url, &out, &cache).run();
    run.assert_code(1)
        .assert_stderr_contains("cannot write the output there");
    assert!(!work.path().join("no").exists());

    // A "directory" that is a regular file.
    let file = work.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("out.bin");
    let run = DonodeGet::new(&url, &out, &cache).run();
    run.assert_code(1)
        .assert_stderr_contains("cannot write the output there");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");

    assert!(
        nginx.log_lines().iter().all(|l| l.body_bytes_sent == 0),
        "body bytes fetched for an output that cannot be written: {:#?}",
        nginx.log_lines()
    );
}

#[test]
fn output_that_is_a_directory_fails_and_stays() {
    let (_root, nginx, _) = origin(13);
    let work = temp_dir();
    let dir = work.path().join("adir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("inside"), b"x").unwrap();
    let url = nginx.url("/files/a.bin");
    let cache = work.path().join("cache");
    // Without --force it is refused as a directory.
    DonodeGet::new(&url, &dir, &cache)
        .run()
        .assert_code(1)
        .assert_stderr_contains("is a directory");
    // With --force it cannot be replaced by a file.
    DonodeGet::new(&url, &dir, &cache)
        .arg("--force")
        .run()
        .assert_code(1);
    assert!(dir.is_dir());
    assert_eq!(std::fs::read(dir.join("inside")).unwrap(), b"x");
    assert_no_temp_files(&dir);
}

#[test]
fn output_that_is_a_directory_is_refused_before_downloading() {
    let (_root, nginx, _) = origin(14);
    let work = temp_dir();
    let dir = work.path().join("adir");
    std::fs::create_dir(&dir).unwrap();
    DonodeGet::new(&nginx.url("/files/a.bin"), &dir, &work.path().join("cache"))
        .arg("--force")
        .run()
        .assert_code(1);
    assert_eq!(
        nginx.body_bytes(),
        0,
        "fetched body bytes for an output that cannot be written: {:#?}",
        nginx.log_lines()
    );
}

#[test]
fn zero_length_range_is_a_usage_error() {
    let (_root, nginx, _) = origin(6);
    let (work, run) = get(&nginx.url("/files/a.bin"), &["--range", "0:0"]);
    run.assert_code(2);
    assert_no_output(&work.path().join("out.bin"));
    for bad in ["10", "x:10", "10:y", "-1:5"] {
        let (work, run) = get(&nginx.url("/files/a.bin"), &["--range", bad]);
        run.assert_code(2);
        assert_no_output(&work.path().join("out.bin"));
    }
}

#[test]
fn overlapping_ranges_fail() {
    let (_root, nginx, _) = origin(7);
    let (work, run) = get(
        &nginx.url("/files/a.bin"),
        &["--range", "0:10", "--range", "5:10"],
    );
    run.assert_code(1).assert_stderr_contains("overlap");
    assert_no_output(&work.path().join("out.bin"));
}

#[test]
fn range_past_the_end_fails() {
    let (_root, nginx, _) = origin(8);
    let (work, run) = get(&nginx.url("/files/a.bin"), &["--range", "99999999:10"]);
    run.assert_code(1)
        .assert_stderr_contains("invalid byte range")
        .assert_stderr_contains("0x80d05010");
    assert_no_output(&work.path().join("out.bin"));
    // Starting inside but ending past the end.
    let end = (SIZE - 5).to_string() + ":10";
    let (work, run) = get(&nginx.url("/files/a.bin"), &["--range", &end]);
    run.assert_code(1).assert_stderr_contains("0x80d05010");
    assert_no_output(&work.path().join("out.bin"));
}

#[test]
fn content_id_with_ranges_is_refused() {
    let (_root, nginx, sum) = origin(15);
    let (work, run) = get(
        &nginx.url("/files/a.bin"),
        &["--content-id", &sum, "--range", "0:10"],
    );
    run.assert_code(1).assert_stderr_contains("--content-id");
    assert_no_output(&work.path().join("out.bin"));
    assert!(nginx.log_lines().is_empty());
}

#[test]
fn malformed_content_id_is_a_usage_error() {
    let (_root, nginx, sum) = origin(9);
    for bad in [
        "xyz",
        &sum[..63],
        &format!("{sum}0"),
        &format!("{}g", &sum[..63]),
    ] {
        let (work, run) = get(&nginx.url("/files/a.bin"), &["--content-id", bad]);
        run.assert_code(2);
        assert_no_output(&work.path().join("out.bin"));
    }
}

#[test]
fn malformed_header_fails() {
    let (_root, nginx, _) = origin(10);
    let (work, run) = get(&nginx.url("/files/a.bin"), &["-H", "nocolon"]);
    run.assert_code(1).assert_stderr_contains("header");
    assert_no_output(&work.path().join("out.bin"));
    assert!(nginx.log_lines().is_empty());
}

#[test]
fn good_header_is_accepted() {
    let (_root, nginx, sum) = origin(11);
    let (work, run) = get(&nginx.url("/files/a.bin"), &["-H", "X-Test: yes"]);
    run.assert_code(0);
    let out = work.path().join("out.bin");
    assert_eq!(b3sum(&out).unwrap(), sum);
    assert_no_temp_files(&out);
}

#[test]
fn unreachable_origin_fails() {
    // A port nothing listens on (bound, then released).
    let port = do_tests::free_port().unwrap();
    let (work, run) = get(
        &format!("http://127.0.0.1:{port}/a.bin"),
        &["--no-progress-timeout", "2"],
    );
    run.assert_code(1);
    assert!(
        run.elapsed < Duration::from_secs(10),
        "took {:?}",
        run.elapsed
    );
    assert_no_output(&work.path().join("out.bin"));
}
