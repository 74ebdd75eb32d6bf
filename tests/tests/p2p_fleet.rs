//! Fleets of real donode daemons on a LAN of network namespaces: host 1 runs nginx (the
//! origin), the others run `donode run --p2p`, find each other by mDNS and download through
//! their daemons with `donode get`. Origin egress is measured from nginx's access log.
//!
//! The origin publishes each file's BLAKE3 digest beside it (`f.bin.b3`, `b3sum` format), the
//! trusted source of the content id in LAN mode.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use do_tests::{Lan, Nginx, NginxOptions, b3sum, donode_bin, temp_dir, write_random_file};
use serde_json::Value as Json;

/// The test file's size. Large enough that peers, not start-up, dominate.
const FILE: u64 = 64 << 20;
/// The file's path on the origin.
const PATH: &str = "/files/f.bin";

/// An origin and `nodes` daemons (hosts 2 ..= nodes + 1).
struct Fleet {
    nginx: Option<Nginx>,
    content: String,
    work: tempfile::TempDir,
    nodes: usize,
    // Last: the namespaces go after everything running in them.
    lan: Lan,
}

impl Fleet {
    fn new(nodes: usize) -> Self {
        Self::with_spare_hosts(nodes, 0)
    }

    /// With `spare` more hosts after the daemons' (for other programs).
    fn with_spare_hosts(nodes: usize, spare: usize) -> Self {
        let lan = Lan::new(nodes + 1 + spare);
        let work = temp_dir();
        let root = work.path().join("origin");
        std::fs::create_dir_all(&root).unwrap();
        let file = root.join("f.bin");
        write_random_file(&file, FILE, 77).unwrap();
        let content = b3sum(&file).unwrap();
        std::fs::write(root.join("f.bin.b3"), format!("{content}  f.bin\n")).unwrap();
        let nginx =
            Nginx::start_in_netns(&root, NginxOptions::default(), lan.host(1), Lan::addr(1))
                .unwrap();
        let mut fleet = Self {
            nginx: Some(nginx),
            content,
            work,
            nodes,
            lan,
        };
        for host in 2..=nodes + 1 {
            fleet.start_daemon(host);
        }
        fleet.wait_for_mesh();
        fleet
    }

    fn dir(&self, host: usize, what: &str) -> PathBuf {
        self.work.path().join(format!("h{host}")).join(what)
    }

    fn start_daemon(&mut self, host: usize) {
        let run = self.dir(host, "run");
        std::fs::create_dir_all(&run).unwrap();
        let log = std::fs::File::create(self.dir(host, "daemon.log")).unwrap();
        let child = self
            .lan
            .command(host, donode_bin())
            .args(["run", "--p2p", "--cache-dir"])
            .arg(self.dir(host, "cache"))
            .arg("--run-dir")
            .arg(&run)
            .arg("--admin-config")
            .arg(self.dir(host, "none.json"))
            .args(["--log", "info,do_driver=debug"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.lan.children.push(child);
    }

    /// `donode ARGS --run-dir RUN` on `host`, against its daemon.
    fn cli(&self, host: usize, args: &[&str]) -> Command {
        let mut c = self.lan.command(host, donode_bin());
        c.args(args).arg("--run-dir").arg(self.dir(host, "run"));
        c
    }

    fn stats(&self, host: usize) -> Option<Json> {
        let out = self.cli(host, &["stats", "--json"]).output().ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until every daemon is up and connected to every other.
    fn wait_for_mesh(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for host in 2..=self.nodes + 1 {
            loop {
                let peers = self.stats(host).and_then(|s| s["NumPeers"].as_u64());
                if peers.is_some_and(|n| n as usize + 1 >= self.nodes) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "host {host} did not find its peers: {:?}\n{}",
                    self.stats(host),
                    self.log(host)
                );
                thread::sleep(Duration::from_millis(200));
            }
        }
    }

    fn log(&self, host: usize) -> String {
        std::fs::read_to_string(self.dir(host, "daemon.log")).unwrap_or_default()
    }

    fn origin_file(&self) -> PathBuf {
        self.work.path().join("origin").join("f.bin")
    }

    fn output(&self, host: usize) -> PathBuf {
        self.dir(host, "f.bin")
    }

    /// Starts `donode get` of the file on `host`.
    fn spawn_get(&self, host: usize) -> Child {
        self.spawn_get_with(host, &[])
    }

    /// Starts `donode get` of the file on `host` with more arguments.
    fn spawn_get_with(&self, host: usize, more: &[&str]) -> Child {
        let output = self.output(host);
        let output = output.to_str().expect("UTF-8 path");
        let url = format!("http://{}:8080{PATH}", Lan::addr(1));
        self.cli(host, &["get", &url, "--json", "-o", output])
            .args(more)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Checks a finished get: success, and the output is the file.
    fn check(&self, host: usize, out: &Output) -> Json {
        assert!(
            out.status.success(),
            "get on host {host}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log(host)
        );
        assert_eq!(b3sum(&self.output(host)).unwrap(), self.content);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Body bytes the origin sent for the file.
    fn origin_bytes(&self) -> u64 {
        self.nginx
            .as_ref()
            .expect("origin running")
            .log_lines()
            .iter()
            .filter(|l| l.uri == PATH && l.method == "GET")
            .map(|l| l.body_bytes_sent)
            .sum()
    }
}

fn ratio(bytes: u64) -> f64 {
    bytes as f64 / FILE as f64
}

#[test]
fn nodes_fetching_one_after_another_take_the_file_from_each_other() {
    let fleet = Fleet::new(5);
    for host in 2..=6 {
        let out = fleet.spawn_get(host).wait_with_output().unwrap();
        let summary = fleet.check(host, &out);
        if host > 2 {
            assert_eq!(
                summary["BytesFromLanPeers"].as_u64(),
                Some(FILE),
                "host {host} took every byte from peers: {summary}"
            );
        }
    }
    let origin = fleet.origin_bytes();
    eprintln!("sequential: origin sent {:.3} × the file", ratio(origin));
    assert!(ratio(origin) <= 1.05, "origin sent {origin} bytes");
    let served: u64 = (2..=6)
        .filter_map(|h| fleet.stats(h)?["BytesToLanPeers"].as_u64())
        .sum();
    assert_eq!(
        served,
        4 * FILE,
        "what peers served is what the others took"
    );
}

#[test]
fn a_flash_crowd_fetches_each_byte_from_the_origin_about_once() {
    let fleet = Fleet::new(5);
    let started = Instant::now();
    let gets: Vec<(usize, Child)> = (2..=6).map(|h| (h, fleet.spawn_get(h))).collect();
    for (host, child) in gets {
        let out = child.wait_with_output().unwrap();
        fleet.check(host, &out);
    }
    let origin = fleet.origin_bytes();
    eprintln!(
        "flash crowd of 5: {:.2} s, origin sent {:.3} × the file",
        started.elapsed().as_secs_f64(),
        ratio(origin)
    );
    assert!(ratio(origin) <= 1.1, "origin sent {origin} bytes");
}

/// Flips a byte in every 64 KiB block of the cache's data files.
fn corrupt_cache(cache: &Path) {
    use std::os::unix::fs::FileExt;
    for entry in std::fs::read_dir(cache.join("data")).unwrap().flatten() {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(entry.path())
            .unwrap();
        let len = f.metadata().unwrap().len();
        let mut offset = 100;
        while offset < len {
            let mut b = [0u8];
            f.read_exact_at(&mut b, offset).unwrap();
            f.write_all_at(&[b[0] ^ 0xff], offset).unwrap();
            offset += 64 << 10;
        }
    }
}

#[test]
fn a_corrupted_cache_and_a_lying_peer_never_reach_an_output() {
    // Hosts 2 and 3 run daemons; host 4 runs a peer that flips a byte in every block it sends.
    let mut fleet = Fleet::with_spare_hosts(2, 1);
    let out = fleet.spawn_get(2).wait_with_output().unwrap();
    fleet.check(2, &out);
    corrupt_cache(&fleet.dir(2, "cache"));
    let probe = donode_bin().with_file_name("do-p2p-probe");
    let liar = fleet
        .lan
        .command(4, probe)
        .arg("serve")
        .arg(fleet.origin_file())
        .arg("--corrupt")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    fleet.lan.children.push(liar);
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet.stats(3).and_then(|s| s["NumPeers"].as_u64()) != Some(2) {
        assert!(Instant::now() < deadline, "host 3 did not find the liar");
        thread::sleep(Duration::from_millis(200));
    }
    let out = fleet.spawn_get(3).wait_with_output().unwrap();
    fleet.check(3, &out);
    let stats = fleet.stats(3).unwrap();
    assert!(
        stats["PeersBanned"].as_u64() >= Some(1),
        "the liar is banned: {stats}"
    );
    let served = fleet.stats(2).unwrap()["BytesToLanPeers"].as_u64();
    assert_eq!(served, Some(0), "host 2 caught its corrupted blocks itself");
}

#[test]
fn when_a_peer_dies_mid_transfer_the_others_finish() {
    let mut fleet = Fleet::new(3);
    let out = fleet.spawn_get(2).wait_with_output().unwrap();
    fleet.check(2, &out);
    // Host 2 sends slowly (80 Mbit/s: about 7 s for the file), so it dies mid-transfer.
    fleet.lan.limit_egress(2, 80);
    let gets: Vec<(usize, Child)> = (3..=4).map(|h| (h, fleet.spawn_get(h))).collect();
    thread::sleep(Duration::from_millis(3500));
    let daemon = &mut fleet.lan.children[0];
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    for (host, child) in gets {
        let out = child.wait_with_output().unwrap();
        let summary = fleet.check(host, &out);
        let from_peers = summary["BytesFromLanPeers"].as_u64().unwrap();
        assert!(
            from_peers > 0 && from_peers < FILE,
            "host {host} took part from the dead peer, the rest elsewhere: {summary}"
        );
    }
}

#[test]
fn with_the_origin_gone_peers_deliver_a_file_whose_content_id_is_given() {
    let mut fleet = Fleet::new(3);
    let out = fleet.spawn_get(2).wait_with_output().unwrap();
    fleet.check(2, &out);
    let served_before = fleet.origin_bytes();
    drop(fleet.nginx.take());
    let content = fleet.content.clone();
    let gets: Vec<(usize, Child)> = (3..=4)
        .map(|h| (h, fleet.spawn_get_with(h, &["--content-id", &content])))
        .collect();
    for (host, child) in gets {
        let out = child.wait_with_output().unwrap();
        let summary = fleet.check(host, &out);
        assert_eq!(
            summary["BytesFromLanPeers"].as_u64(),
            Some(FILE),
            "{summary}"
        );
    }
    assert_eq!(
        served_before, FILE,
        "the origin sent the file once, before it stopped"
    );
}
