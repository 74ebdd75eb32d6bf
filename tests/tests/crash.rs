//! Crash safety: `kill -9` at random moments of a download never leaves a block recorded as
//! verified whose bytes on disk are not; the next run resumes from what was recorded.

use std::{
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use do_content::{BLOCK_SIZE, block_range, hash_block};
use do_store::{Config, Store};
use do_tests::{Nginx, NginxOptions, b3sum, donode_bin, temp_dir, write_random_file};

/// Every block the index records must hash, from the bytes on disk, to its recorded hash.
/// Returns the number of verified blocks held.
fn check_cache(cache: &std::path::Path) -> u64 {
    let store = Store::open(cache, Config::default()).expect("cache opens after a kill");
    let mut held = 0;
    for (id, meta) in store.entries().unwrap() {
        let data = std::fs::read(store.data_path(id)).unwrap_or_default();
        for (index, hash) in store.blocks(id).unwrap() {
            let r = block_range(meta.len, index);
            let bytes = data.get(r.start as usize..r.end as usize);
            assert!(
                bytes.is_some_and(|b| hash_block(meta.len, index, b) == hash),
                "block {index} of entry {id:?} is recorded as verified but its bytes are not"
            );
            held += 1;
        }
    }
    held
}

#[test]
fn kill_9_in_a_loop_never_leaves_an_unverified_block_marked_verified() {
    let root = temp_dir();
    let size = 48 << 20;
    write_random_file(&root.path().join("big.bin"), size, 9).unwrap();
    let nginx = Nginx::start_with(
        root.path(),
        NginxOptions {
            slow_rate_bytes_per_s: 16 << 20,
        },
    )
    .unwrap();
    let url = nginx.url("/slow/big.bin");
    let work = temp_dir();
    let cache = work.path().join("cache");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = seed | 1;
    println!("seed {seed}");
    let mut held_before = 0;
    let mut kills = 0;
    let mut partial_kills = 0;
    for round in 0..20 {
        let output = work.path().join(format!("out{round}.bin"));
        let mut child = Command::new(donode_bin())
            .args(["get", &url, "--connections", "1", "--cache-dir"])
            .arg(&cache)
            .arg("-o")
            .arg(&output)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_millis(150 + rng % 1000);
        thread::sleep(delay);
        if child.try_wait().unwrap().is_some() {
            // Finished before the kill: the output must be complete and right.
            assert!(child.wait().unwrap().success());
            assert_eq!(
                b3sum(&output).unwrap(),
                b3sum(&root.path().join("big.bin")).unwrap()
            );
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        // The output appears only by an atomic rename once every block is verified, so a
        // kill that lands between that rename and the process's exit leaves a whole, right
        // file; any other output is a defect.
        if output.exists() {
            assert_eq!(
                b3sum(&output).unwrap(),
                b3sum(&root.path().join("big.bin")).unwrap(),
                "a killed download left an output file that is not the whole file"
            );
        }
        let held = check_cache(&cache);
        assert!(
            held >= held_before,
            "verified blocks were lost: {held} < {held_before}"
        );
        // A kill may also land after the last block, while the output is being made visible.
        if held * BLOCK_SIZE < size {
            partial_kills += 1;
        }
        held_before = held;
    }
    println!(
        "{kills} kills ({partial_kills} mid-download); {held_before} blocks verified before \
         the final run"
    );
    assert!(
        partial_kills >= 2,
        "the download should have been killed mid-way a few times, got {partial_kills}"
    );
    // A final run completes from what the killed runs recorded.
    let output = work.path().join("final.bin");
    let status = Command::new(donode_bin())
        .args(["get", &url, "--cache-dir"])
        .arg(&cache)
        .arg("-o")
        .arg(&output)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        b3sum(&output).unwrap(),
        b3sum(&root.path().join("big.bin")).unwrap()
    );
    check_cache(&cache);
}
