//! What `donode get` keeps between runs: Ctrl-C (exit 130, no output) keeps the verified blocks
//! and the next run resumes from them; a garbage index and stray data files are dealt with at
//! start; a cached data file altered behind the node's back (through the hard-linked output)
//! is caught by the re-check and fetched afresh.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use do_tests::{
    DonodeGet, Nginx, NginxOptions, assert_no_output, assert_no_temp_files, b3sum, random_bytes,
    temp_dir, write_random_file,
};

/// The data files of a cache.
fn data_files(cache: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cache.join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn ctrl_c_keeps_verified_blocks_and_the_next_run_resumes() {
    let size: u64 = 16 << 20;
    let root = temp_dir();
    let file = root.path().join("big.bin");
    write_random_file(&file, size, 1).unwrap();
    let sum = b3sum(&file).unwrap();
    // 1 MiB/s per connection: the 16 MiB take about 4 s over 4 connections.
    let nginx = Nginx::start_with(
        root.path(),
        NginxOptions {
            slow_rate_bytes_per_s: 1 << 20,
        },
    )
    .unwrap();
    let url = nginx.url("/slow/big.bin");
    let work = temp_dir();
    let cache = work.path().join("cache");
    let out = work.path().join("out.bin");

    let mut running = DonodeGet::new(&url, &out, &cache).spawn();
    std::thread::sleep(Duration::from_millis(1500));
    running.signal(libc::SIGINT);
    let run = running.wait();
    run.assert_code(130).assert_stderr_contains("interrupted");
    assert!(
        run.elapsed < Duration::from_secs(4),
        "the interrupt took effect only after {:?}",
        run.elapsed
    );
    assert_no_output(&out);

    let run = DonodeGet::new(&url, &out, &cache).arg("--json").run();
    run.assert_code(0);
    assert_eq!(b3sum(&out).unwrap(), sum);
    assert_no_temp_files(&out);
    let s = run.summary();
    assert_eq!(s.bytes_total, size);
    assert!(
        s.bytes_from_cache > 0,
        "nothing was kept from the interrupted run: {s:?}"
    );
    assert!(
        s.bytes_from_http < size,
        "everything was fetched again: {s:?}"
    );
    assert_eq!(
        s.bytes_from_http + s.bytes_from_cache,
        size,
        "bytes by source do not add up: {s:?}"
    );
}

#[test]
fn garbage_index_and_stray_data_files_are_dealt_with() {
    let size: u64 = 2 << 20;
    let root = temp_dir();
    let file = root.path().join("a.bin");
    write_random_file(&file, size, 2).unwrap();
    let sum = b3sum(&file).unwrap();
    let nginx = Nginx::start(root.path()).unwrap();
    let url = nginx.url("/files/a.bin");
    let work = temp_dir();
    let cache = work.path().join("cache");
    std::fs::create_dir_all(cache.join("data")).unwrap();
    std::fs::write(cache.join("index.redb"), random_bytes(100_000, 3)).unwrap();
    // Names the first new entry could take, and one no entry could.
    std::fs::write(cache.join("data/1.data"), random_bytes(1000, 4)).unwrap();
    std::fs::write(cache.join("data/stray.bin"), b"stray").unwrap();

    let out = work.path().join("out.bin");
    let run = DonodeGet::new(&url, &out, &cache).arg("--json").run();
    run.assert_code(0);
    assert_eq!(b3sum(&out).unwrap(), sum);
    assert_no_temp_files(&out);
    assert_eq!(run.summary().bytes_from_http, size);
    assert!(
        cache.join("index.redb.corrupt").exists(),
        "the unreadable index was not moved aside"
    );
    assert!(
        !cache.join("data/stray.bin").exists(),
        "a data file no entry owns survived the start"
    );

    // The fresh index works: a second get comes from the cache.
    let out2 = work.path().join("out2.bin");
    let run = DonodeGet::new(&url, &out2, &cache).arg("--json").run();
    run.assert_code(0);
    assert_eq!(b3sum(&out2).unwrap(), sum);
    assert_eq!(run.summary().bytes_from_http, 0);
    assert_eq!(run.summary().bytes_from_cache, size);
}

#[test]
fn altered_cached_bytes_are_caught_and_fetched_again() {
    let size: u64 = 4 << 20;
    let root = temp_dir();
    let file = root.path().join("a.bin");
    write_random_file(&file, size, 5).unwrap();
    let sum = b3sum(&file).unwrap();
    let nginx = Nginx::start(root.path()).unwrap();
    let url = nginx.url("/files/a.bin");
    let work = temp_dir();
    let cache = work.path().join("cache");

    let out1 = work.path().join("out1.bin");
    DonodeGet::new(&url, &out1, &cache).run().assert_code(0);
    assert_eq!(b3sum(&out1).unwrap(), sum);
    let data = data_files(&cache);
    assert_eq!(data.len(), 1, "expected one data file: {data:?}");
    let (m_out, m_data) = (
        std::fs::metadata(&out1).unwrap(),
        std::fs::metadata(&data[0]).unwrap(),
    );
    assert_eq!(
        (m_out.dev(), m_out.ino()),
        (m_data.dev(), m_data.ino()),
        "the output is not a hard link to the cache's data file"
    );

    // Edit the output in place: the cache's copy changes with it.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&out1)
        .unwrap();
    let at = (1 << 20) + 5;
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[!byte[0]], at).unwrap();
    drop(f);
    let altered = b3sum(&out1).unwrap();
    assert_ne!(altered, sum);
    assert_eq!(b3sum(&data[0]).unwrap(), altered);

    let out2 = work.path().join("out2.bin");
    let run = DonodeGet::new(&url, &out2, &cache).arg("--json").run();
    run.assert_code(0);
    assert_eq!(b3sum(&out2).unwrap(), sum, "the altered bytes were served");
    assert_no_temp_files(&out2);
    let s = run.summary();
    assert!(s.bytes_from_http > 0, "nothing was fetched again: {s:?}");
    assert_eq!(s.content_id.as_deref(), Some(sum.as_str()));
    // The user's edited file is theirs: never repaired in place.
    assert_eq!(b3sum(&out1).unwrap(), altered);
    let m_out2 = std::fs::metadata(&out2).unwrap();
    assert_ne!((m_out2.dev(), m_out2.ino()), (m_out.dev(), m_out.ino()));

    // And the fresh entry serves a third get from the cache.
    let out3 = work.path().join("out3.bin");
    let run = DonodeGet::new(&url, &out3, &cache).arg("--json").run();
    run.assert_code(0);
    assert_eq!(b3sum(&out3).unwrap(), sum);
    assert_eq!(run.summary().bytes_from_http, 0);
}
