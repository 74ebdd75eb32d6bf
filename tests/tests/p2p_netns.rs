//! The p2p layer across a real LAN: two network namespaces joined by a bridge (which this test
//! creates and removes). One host serves a file; the other finds it by mDNS, takes the manifest
//! only for the content id it was given, and fetches and verifies every block.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use do_tests::{Lan, b3sum, temp_dir, write_random_file};

/// The probe binary beside the test's `donode`.
fn probe() -> PathBuf {
    let bin = do_tests::donode_bin().with_file_name("do-p2p-probe");
    assert!(bin.exists(), "build it first: cargo build -p do-p2p-probe");
    bin
}

fn lan(hosts: usize) -> Lan {
    Lan::new(hosts)
}

/// Runs the probe's `fetch` of `content` into `out` inside namespace `ns`.
fn fetch_in(ns: &str, content: &str, out: &std::path::Path) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(probe())
        .args(["fetch", content])
        .arg(out)
        .args(["--timeout", "30"])
        .output()
        .unwrap()
}

#[test]
fn a_file_crosses_the_lan_between_two_hosts_found_by_mdns() {
    let mut lan = lan(2);
    let work = temp_dir();
    let file = work.path().join("file.bin");
    write_random_file(&file, (5 << 20) + 77, 41).unwrap();
    let content = b3sum(&file).unwrap();
    let server = Command::new("ip")
        .args(["netns", "exec", &lan.names[1]])
        .arg(probe())
        .arg("serve")
        .arg(&file)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    lan.children.push(server);
    thread::sleep(Duration::from_millis(300));
    let out = work.path().join("fetched.bin");
    let fetched = fetch_in(&lan.names[2], &content, &out);
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&fetched.stdout).unwrap();
    assert_eq!(summary["bytes"], (5 << 20) + 77);
    assert_eq!(b3sum(&out).unwrap(), content);

    // Asked for a content id nobody holds, the fetch fails and nothing is written.
    let wrong = "1".repeat(64);
    let refused = fetch_in(&lan.names[2], &wrong, &work.path().join("wrong.bin"));
    assert!(!refused.status.success());
    assert!(!work.path().join("wrong.bin").exists());
}

#[test]
fn a_daemon_serves_its_cache_to_a_lan_peer() {
    let mut lan = lan(2);
    let root = temp_dir();
    write_random_file(&root.path().join("f.bin"), (3 << 20) + 5, 43).unwrap();
    let nginx = do_tests::Nginx::start(root.path()).unwrap();
    let work = temp_dir();
    let cache = work.path().join("cache");
    // Fill the cache in this namespace, from the origin.
    let got = Command::new(do_tests::donode_bin())
        .args(["get", "--embedded", &nginx.url("/files/f.bin"), "-o"])
        .arg(work.path().join("first.bin"))
        .arg("--cache-dir")
        .arg(&cache)
        .status()
        .unwrap();
    assert!(got.success());
    let content = b3sum(&root.path().join("f.bin")).unwrap();
    // The daemon on host 1 serves that cache; the probe on host 2 finds it and fetches.
    let run = work.path().join("run");
    let daemon = Command::new("ip")
        .args(["netns", "exec", &lan.names[1]])
        .arg(do_tests::donode_bin())
        .args(["run", "--p2p", "--cache-dir"])
        .arg(&cache)
        .arg("--run-dir")
        .arg(&run)
        .arg("--admin-config")
        .arg(work.path().join("none.json"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lan.children.push(daemon);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&run).map_or(true, |mut d| d.next().is_none()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not start"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let out = work.path().join("from-peer.bin");
    let fetched = fetch_in(&lan.names[2], &content, &out);
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    assert_eq!(b3sum(&out).unwrap(), content);
    assert!(
        cache.join("node.key").exists(),
        "the node's identity is kept in its cache"
    );
}
