//! Fleets of real donode daemons on a LAN of network namespaces (see `do_tests::Fleet`):
//! origin egress, correctness and resilience of peer-to-peer delivery.

use std::{
    path::Path,
    process::{Child, Stdio},
    sync::{Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

use do_tests::{Fleet, FleetOptions, donode_bin};

/// The test file's size. Large enough that peers, not start-up, dominate.
const FILE: u64 = 64 << 20;

/// The file of the sequential fleet (five nodes one after another).
const SEQUENTIAL_FILE: u64 = 256 << 20;

/// Fleets run one at a time: each keeps both cores busy, and timings (a peer killed
/// mid-transfer, a crowd's completion time) mean something only on an otherwise idle machine.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static FLEETS: Mutex<()> = Mutex::new(());
    FLEETS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A fleet of `nodes` daemons (and `spare` more hosts) for the test file.
fn fleet(nodes: usize, spare: usize) -> Fleet {
    Fleet::start(options(nodes, spare))
}

/// Options for `nodes` daemons (and `spare` more hosts) for the test file, origin unlimited.
fn options(nodes: usize, spare: usize) -> FleetOptions {
    FleetOptions {
        nodes,
        spare_hosts: spare,
        file_bytes: FILE,
        origin_mbit: None,
        remote_hosts: 0,
    }
}

/// Host 2 takes the file from the origin, then host 3 from host 2 (every byte); returns host
/// 3's summary.
fn relay(fleet: &Fleet) -> serde_json::Value {
    let out = fleet.spawn_get(2).wait_with_output().unwrap();
    fleet.check(2, &out);
    let out = fleet.spawn_get(3).wait_with_output().unwrap();
    let summary = fleet.check(3, &out);
    assert_eq!(
        summary["BytesFromLanPeers"].as_u64(),
        Some(FILE),
        "host 3 took every byte from its peer: {summary}"
    );
    summary
}

/// Starts `donode get` on every daemon at once and checks each output; returns the time until
/// the last one finished.
fn flash_crowd(fleet: &Fleet) -> Duration {
    let started = Instant::now();
    let gets: Vec<(usize, Child)> = (2..=fleet.nodes + 1)
        .map(|h| (h, fleet.spawn_get(h)))
        .collect();
    for (host, child) in gets {
        let out = child.wait_with_output().unwrap();
        fleet.check(host, &out);
    }
    started.elapsed()
}

fn ratio(bytes: u64) -> f64 {
    bytes as f64 / FILE as f64
}

#[test]
fn nodes_fetching_one_after_another_take_the_file_from_each_other() {
    let _alone = one_at_a_time();
    // The size for this scenario: 256 MiB (the other fleets use 64 MiB).
    let file = SEQUENTIAL_FILE;
    let fleet = Fleet::start(FleetOptions {
        file_bytes: file,
        ..options(5, 0)
    });
    let ratio = |bytes: u64| bytes as f64 / file as f64;
    for host in 2..=6 {
        let out = fleet.spawn_get(host).wait_with_output().unwrap();
        let summary = fleet.check(host, &out);
        if host > 2 {
            assert_eq!(
                summary["BytesFromLanPeers"].as_u64(),
                Some(file),
                "host {host} took every byte from peers: {summary}"
            );
        }
    }
    let origin = fleet.origin_bytes();
    eprintln!("sequential: origin sent {:.3} × the file", ratio(origin));
    assert!(ratio(origin) <= 1.05, "origin sent {origin} bytes");
    let node_wide = |field: &str| -> u64 {
        (2..=6)
            .map(|h| fleet.stats(h).and_then(|s| s[field].as_u64()).unwrap_or(0))
            .sum()
    };
    let (served, received) = (node_wide("BytesToLanPeers"), node_wide("BytesFromLanPeers"));
    eprintln!(
        "sequential: peers served {:.4} × the file, received {:.4} ×",
        ratio(served),
        ratio(received)
    );
    assert_eq!(served, received, "every byte a peer served reached a peer");
    // Each of the four took the file from peers (checked above); anything beyond that is a
    // block taken twice (a request that stalled and was asked elsewhere): under 1 %.
    assert!(
        received >= 4 * file && received - 4 * file <= 4 * file / 100,
        "peers received {received} bytes for four copies of {file}"
    );
    // The blocks travelled on data lanes (a peer's lane opens when it first says it holds
    // something; a request sent before that goes over libp2p).
    let lanes = |field: &str| -> u64 {
        (2..=6)
            .map(|h| {
                fleet
                    .stats(h)
                    .and_then(|s| s["DataLanes"][field].as_u64())
                    .unwrap_or(0)
            })
            .sum()
    };
    let (lane_in, lane_out) = (lanes("BytesIn"), lanes("BytesOut"));
    eprintln!(
        "sequential: data lanes carried {:.4} × the file",
        ratio(lane_in)
    );
    assert_eq!(
        lane_in, lane_out,
        "what lanes served is what they delivered"
    );
    assert!(
        lane_in >= received * 9 / 10 && lane_in <= received,
        "data lanes carried {lane_in} of the {received} bytes peers received"
    );
}

#[test]
fn a_node_without_data_lanes_exchanges_with_one_that_has_them_over_libp2p() {
    let _alone = one_at_a_time();
    let mut fleet = Fleet::without_daemons(options(2, 0));
    fleet.start_daemon(2);
    fleet.start_daemon_with(3, &["--no-data-lanes"]);
    fleet.wait_for_mesh();
    // Host 3 (no lanes) takes the file from host 2, which offers them.
    relay(&fleet);
    for host in 2..=3 {
        let stats = fleet.stats(host).unwrap();
        assert_eq!(stats["DataLanes"]["Opened"].as_u64(), Some(0), "{stats}");
        assert_eq!(stats["DataLanes"]["BytesOut"].as_u64(), Some(0), "{stats}");
    }
    assert_eq!(
        fleet.stats(2).unwrap()["BytesToLanPeers"].as_u64(),
        Some(FILE),
        "host 2 served the file over libp2p"
    );
}

/// Four daemons run with `args`: host 2 takes the file from the origin, then host 3 from
/// its peers (hosts 4 and 5 hold nothing). Returns the hosts that host 3 asked what they hold
/// (read from their logs), and how long its download took.
fn hosts_polled_by_host_3(args: &[&str]) -> (Vec<usize>, Duration) {
    let mut fleet = Fleet::without_daemons(options(4, 0));
    for host in 2..=5 {
        fleet.start_daemon_with(host, args);
    }
    fleet.wait_for_mesh();
    let out = fleet.spawn_get(2).wait_with_output().unwrap();
    fleet.check(2, &out);
    let asker = peer_id(&fleet, 3);
    let before: Vec<usize> = (2..=5).map(|h| fleet.log(h).len()).collect();
    let started = Instant::now();
    let out = fleet.spawn_get(3).wait_with_output().unwrap();
    let took = started.elapsed();
    fleet.check(3, &out);
    let polled: Vec<usize> = [2, 4, 5]
        .into_iter()
        .filter(|&h| {
            fleet.log(h)[before[h - 2]..]
                .lines()
                .any(|l| l.contains("peer request") && l.contains(&asker) && l.contains("Status"))
        })
        .collect();
    (polled, took)
}

#[test]
fn a_download_polls_no_more_peers_than_it_is_given() {
    let _alone = one_at_a_time();
    // Each daemon polls one peer per download, and no ring neighbours.
    let (polled, took) = hosts_polled_by_host_3(&["--poll-peers", "1", "--ring-peers", "0"]);
    assert!(!polled.is_empty(), "host 3 polled nobody");
    // One peer at a time, and a member that offered nothing is swapped for another at most
    // once every 10 polls (5 s): in less than that, at most two of the three were asked
    // (with no bound, all three are, at once).
    assert!(
        took < Duration::from_millis(4500),
        "the download took {took:?}: too long to tell"
    );
    assert!(
        polled.len() <= 2,
        "host 3 polled hosts {polled:?}, more than its one peer and one swap"
    );
}

#[test]
fn a_download_polls_its_ring_neighbours_beyond_its_bound() {
    let _alone = one_at_a_time();
    // One peer per download, and four ring neighbours after each of the node's four points:
    // on a LAN of three peers, every peer is a ring neighbour, so all three are asked.
    let (polled, _) = hosts_polled_by_host_3(&["--poll-peers", "1", "--ring-peers", "4"]);
    assert_eq!(polled, vec![2, 4, 5], "host 3 polled hosts {polled:?}");
}

#[test]
fn nodes_that_dial_quic_first_exchange_the_file_over_quic() {
    let _alone = one_at_a_time();
    let mut fleet = Fleet::without_daemons(options(2, 0));
    for host in 2..=3 {
        fleet.start_daemon_with(host, &["--transport", "quic"]);
    }
    fleet.wait_for_mesh();
    for host in 2..=3 {
        let stats = fleet.stats(host).unwrap();
        let peers = stats["Peers"].as_array().cloned().unwrap_or_default();
        assert_eq!(peers.len(), 1, "{stats}");
        assert!(
            peers[0]["Address"]
                .as_str()
                .is_some_and(|a| a.contains("/udp/") && a.contains("/quic-v1")),
            "host {host} reaches its peer over QUIC: {stats}"
        );
    }
    relay(&fleet);
}

#[test]
fn a_flash_crowd_fetches_each_byte_from_the_origin_about_once() {
    let _alone = one_at_a_time();
    let fleet = fleet(5, 0);
    let took = flash_crowd(&fleet);
    let origin = fleet.origin_bytes();
    eprintln!(
        "flash crowd of 5: {:.2} s, origin sent {:.3} × the file",
        took.as_secs_f64(),
        ratio(origin)
    );
    assert!(ratio(origin) <= 1.1, "origin sent {origin} bytes");
}

#[test]
fn behind_a_slow_origin_a_flash_crowd_is_fed_by_its_peers() {
    // The origin's link, not the nodes' CPUs, must be what limits the crowd: a debug build
    // on two cores moves peers' blocks at a few tens of MiB/s, so the link is kept slower.
    const NODES: usize = 5;
    const MBIT: u32 = 100;
    let _alone = one_at_a_time();
    let fleet = Fleet::start(FleetOptions {
        nodes: NODES,
        spare_hosts: 0,
        file_bytes: FILE,
        origin_mbit: Some(MBIT),
        remote_hosts: 0,
    });
    let took = flash_crowd(&fleet).as_secs_f64();
    let origin = fleet.origin_bytes();
    // What the origin's link needs to carry the file once, and once per node.
    let once = FILE as f64 * 8.0 / (f64::from(MBIT) * 1e6);
    let alone = NODES as f64 * once;
    eprintln!(
        "flash crowd of {NODES} behind {MBIT} Mbit/s: {took:.2} s (the origin alone: {alone:.1} s, \
         one copy: {once:.1} s), origin sent {:.3} × the file",
        ratio(origin)
    );
    assert!(ratio(origin) <= 1.1, "origin sent {origin} bytes");
    assert!(
        took < 0.75 * alone,
        "{took:.2} s is not clearly faster than the origin serving everyone ({alone:.1} s)"
    );
}

/// Three daemons in a line behind an origin of `origin_mbit`: hosts 2 and 4 are isolated from
/// each other, host 3 sees both; host 2's daemon takes `first_args` too. Returns once each
/// sees its neighbours.
fn line(origin_mbit: u32, first_args: &[&str]) -> Fleet {
    let mut fleet = Fleet::without_daemons(FleetOptions {
        origin_mbit: Some(origin_mbit),
        remote_hosts: 0,
        ..options(3, 0)
    });
    fleet.lan.isolate(2);
    fleet.lan.isolate(4);
    fleet.start_daemon_with(2, first_args);
    for host in 3..=4 {
        fleet.start_daemon(host);
    }
    for (host, peers) in [(2, 1), (3, 2), (4, 1)] {
        fleet.wait_for_peers(host, peers);
    }
    fleet
}

#[test]
fn nodes_that_see_part_of_a_crowd_split_the_origins_work_as_the_whole_crowd() {
    // Hosts 2 and 4 are isolated from each other; host 3 sees both. Each of the ends sees one
    // co-fetcher, learns the other end's points on the split's ring from host 3
    // (`CoFetchers`), and its hashes through host 3 (`Hashes` tells collected ones too).
    // Behind a 200 Mbit/s origin: the reports come within a poll or two of the start, while
    // the origin's copy takes 2.7 s (an unlimited one sends all of a node's first guess at
    // its part before any report can arrive).
    let _alone = one_at_a_time();
    let fleet = line(200, &[]);
    let took = flash_crowd(&fleet);
    let origin = fleet.origin_bytes();
    eprintln!(
        "a crowd of 3 in a line: {:.2} s, origin sent {:.3} × the file",
        took.as_secs_f64(),
        ratio(origin)
    );
    for end in [2, 4] {
        let stats = fleet.stats(end).unwrap();
        assert_eq!(stats["NumPeers"].as_u64(), Some(1), "host {end}: {stats}");
        assert!(
            stats["BytesFromLanPeers"].as_u64().unwrap_or(0) > 0,
            "host {end} took blocks from host 3: {stats}"
        );
    }
    // Splitting in its own view alone, each end would fetch much of the other's part too.
    assert!(
        ratio(origin) <= 1.1,
        "origin sent {origin} bytes\n{}",
        fleet.log(2)
    );
}

#[test]
fn a_node_waits_for_what_its_peers_peers_hold_instead_of_taking_it_from_the_origin() {
    // A line (hosts 2 and 4 isolated from each other, host 3 between), behind a 100 Mbit/s
    // origin. Host 2 takes the file first and serves it at 8 MiB/s. Then hosts 3 and 4 start
    // together: host 3 takes it from host 2 (8 s); host 4 sees only host 3, which holds
    // little at first, and splits the origin's work with it. Host 3 tells it what its own
    // peers hold (`Near`): everything, so host 4 takes every block through host 3 and none
    // from the origin. Without that, host 4 would fetch its half from the origin (about
    // 1.4 copies in all).
    const CAP: u64 = 8 << 20;
    let _alone = one_at_a_time();
    let fleet = line(100, &["--upload-max-rate", &CAP.to_string()]);
    let out = fleet.spawn_get(2).wait_with_output().unwrap();
    fleet.check(2, &out);
    let gets: Vec<(usize, Child)> = [3, 4].map(|h| (h, fleet.spawn_get(h))).into();
    for (host, child) in gets {
        let out = child.wait_with_output().unwrap();
        fleet.check(host, &out);
    }
    let origin = fleet.origin_bytes();
    let stats = fleet.stats(4).unwrap();
    eprintln!(
        "host 2, then 3 and 4, in a line: origin sent {:.3} × the file; host 4: {stats}",
        ratio(origin)
    );
    assert_eq!(
        stats["BytesFromLanPeers"].as_u64(),
        Some(FILE),
        "host 4 took every block through host 3: {stats}\n{}",
        fleet.log(4)
    );
    assert!(ratio(origin) <= 1.02, "origin sent {origin} bytes");
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
    let _alone = one_at_a_time();
    // Hosts 2 and 3 run daemons; host 4 runs a peer that flips a byte in every block it sends.
    let mut fleet = fleet(2, 1);
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
    assert_eq!(
        stats["PeersBanned"].as_u64(),
        Some(1),
        "the liar is banned: {stats}"
    );
    // It is found by mDNS again and again, but stays disconnected.
    thread::sleep(Duration::from_secs(3));
    let stats = fleet.stats(3).unwrap();
    assert_eq!(stats["NumPeers"].as_u64(), Some(1), "only host 2: {stats}");
    let served = fleet.stats(2).unwrap()["BytesToLanPeers"].as_u64();
    assert_eq!(served, Some(0), "host 2 caught its corrupted blocks itself");
}

#[test]
fn when_a_peer_dies_mid_transfer_the_others_finish() {
    let _alone = one_at_a_time();
    let mut fleet = fleet(3, 0);
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
    let _alone = one_at_a_time();
    let mut fleet = fleet(3, 0);
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

/// Starts the daemons of `hosts` in group "lab", each with its secret.
fn start_in_group(fleet: &mut Fleet, hosts: &[(usize, &str)]) {
    for &(host, secret) in hosts {
        let path = fleet.dir(host, "group.secret");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        let path = path.to_str().expect("UTF-8 path").to_owned();
        fleet.start_daemon_with(host, &["--group-id", "lab", "--group-secret-file", &path]);
    }
}

#[test]
fn group_mode_members_learn_the_content_id_from_each_other() {
    let _alone = one_at_a_time();
    let mut fleet = Fleet::without_daemons(options(2, 0));
    // The origin publishes no digest: only a node that fetched the file knows its content id.
    std::fs::remove_file(fleet.origin_file().with_extension("bin.b3")).unwrap();
    start_in_group(&mut fleet, &[(2, "the secret"), (3, "the secret")]);
    fleet.wait_for_mesh();
    // Each counts the other as a LAN peer, whichever dialed before its own mDNS found the other.
    fleet.wait_for_lan_peers(2, 1);
    fleet.wait_for_lan_peers(3, 1);
    let out = fleet.spawn_get(2).wait_with_output().unwrap();
    let first = fleet.check(2, &out);
    assert_eq!(first["BytesFromHttp"].as_u64(), Some(FILE), "{first}");
    let out = fleet.spawn_get(3).wait_with_output().unwrap();
    let second = fleet.check(3, &out);
    // A member on the LAN counts as a LAN peer (as DO counts them; group peers are the
    // members beyond it).
    assert_eq!(
        second["BytesFromLanPeers"].as_u64(),
        Some(FILE),
        "the member's claim made its blocks verifiable: {second}"
    );
    assert_eq!(fleet.origin_bytes(), FILE);
}

#[test]
fn group_mode_a_node_with_the_wrong_secret_gets_nothing_and_gives_nothing() {
    let _alone = one_at_a_time();
    let mut fleet = Fleet::without_daemons(options(3, 0));
    // Hosts 2 and 3 are members of group "lab"; host 4 has its id but the wrong secret.
    start_in_group(
        &mut fleet,
        &[(2, "the secret"), (3, "the secret"), (4, "a guess")],
    );
    fleet.wait_for_lan_peers(2, 1);
    fleet.wait_for_lan_peers(3, 1);
    let out = fleet.spawn_get(2).wait_with_output().unwrap();
    fleet.check(2, &out);
    // The outsider sees the members by mDNS, and a member holds the file: it still gets nothing.
    let out = fleet.spawn_get(4).wait_with_output().unwrap();
    let outsider = fleet.check(4, &out);
    assert_eq!(outsider["BytesFromHttp"].as_u64(), Some(FILE), "{outsider}");
    assert_eq!(outsider["BytesFromGroupPeers"].as_u64(), Some(0));
    assert_eq!(outsider["BytesFromLanPeers"].as_u64(), Some(0));
    // Two hold the file now; the member takes it from the member alone.
    let out = fleet.spawn_get(3).wait_with_output().unwrap();
    let member = fleet.check(3, &out);
    assert_eq!(member["BytesFromLanPeers"].as_u64(), Some(FILE), "{member}");
    assert_eq!(member["BytesFromGroupPeers"].as_u64(), Some(0));
    let stats = |host| fleet.stats(host).unwrap();
    let (served, outsider) = (stats(2), stats(4));
    assert_eq!(served["GroupId"], "lab");
    assert_eq!(served["BytesToLanPeers"].as_u64(), Some(FILE), "{served}");
    assert_eq!(
        served["NumPeers"].as_u64(),
        Some(1),
        "only the member: {served}"
    );
    assert_eq!(outsider["NumPeers"].as_u64(), Some(0), "{outsider}");
    assert_eq!(outsider["BytesToGroupPeers"].as_u64(), Some(0));
    assert_eq!(outsider["BytesToLanPeers"].as_u64(), Some(0));
    assert_eq!(
        fleet.origin_bytes(),
        2 * FILE,
        "the members' copy and the outsider's"
    );
}

#[test]
fn a_node_with_an_upload_cap_serves_no_faster_than_the_cap() {
    // 8 MiB/s: the file takes 8 s, several times what the same transfer takes uncapped.
    const CAP: u64 = 8 << 20;
    let _alone = one_at_a_time();
    let mut fleet = Fleet::without_daemons(options(2, 0));
    fleet.start_daemon_with(2, &["--upload-max-rate", &CAP.to_string()]);
    fleet.start_daemon(3);
    fleet.wait_for_mesh();
    let summary = relay(&fleet);
    let seconds = summary["seconds"].as_f64().unwrap();
    let rate = FILE as f64 / seconds;
    eprintln!(
        "capped at {} MiB/s: served at {:.2} MiB/s",
        CAP >> 20,
        rate / f64::from(1 << 20)
    );
    // The first answer leaves at once, so the whole takes at least (FILE - 1 MiB) / CAP.
    assert!(
        seconds >= (FILE - (1 << 20)) as f64 / CAP as f64,
        "{rate:.0} B/s is above the cap"
    );
    assert!(
        rate > CAP as f64 / 2.0,
        "{rate:.0} B/s: the cap, not something else, limits"
    );
}

/// `host`'s peer id, once its daemon answers.
fn peer_id(fleet: &Fleet, host: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(id) = fleet
            .stats(host)
            .and_then(|s| s["PeerId"].as_str().map(str::to_owned))
        {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "host {host}: {}",
            fleet.log(host)
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn internet_mode_finds_a_holder_beyond_the_lan_through_the_dht() {
    let _alone = one_at_a_time();
    // Host 2 is on the origin's site; hosts 3 and 4 on a second site, routed to the first
    // (mDNS stays on each site). Host 3 joins the DHT through host 2 (its bootstrap peer);
    // host 4 knows nobody but host 3, its LAN neighbour.
    let mut fleet = Fleet::without_daemons(FleetOptions {
        remote_hosts: 2,
        ..options(3, 0)
    });
    fleet.start_daemon_with(2, &["--download-mode", "internet", "--p2p-port", "4001"]);
    let first = peer_id(&fleet, 2);
    let boot = format!("/ip4/{}/tcp/4001/p2p/{first}", fleet.lan.host_addr(2));
    fleet.start_daemon_with(3, &["--download-mode", "internet", "--bootstrap", &boot]);
    fleet.start_daemon_with(4, &["--download-mode", "internet"]);
    fleet.wait_for_peers(2, 1);
    fleet.wait_for_peers(4, 1);
    let stats = fleet.stats(4).unwrap();
    assert_eq!(stats["NumPeers"], 1, "host 4 sees its LAN only: {stats}");
    assert_eq!(stats["DownloadMode"], "internet");

    let out = fleet.spawn_get(2).wait_with_output().unwrap();
    let summary = fleet.check(2, &out);
    assert_eq!(summary["BytesFromHttp"].as_u64(), Some(FILE), "{summary}");

    // Host 4's only peer has nothing; the DHT, asked through it, names host 2.
    let out = fleet.spawn_get(4).wait_with_output().unwrap();
    let summary = fleet.check(4, &out);
    assert_eq!(
        summary["BytesFromInternetPeers"].as_u64(),
        Some(FILE),
        "host 4 took the file from the holder the DHT named: {summary}\n{}",
        fleet.log(4)
    );
    let out = fleet.cli(4, &["peers", "--json"]).output().unwrap();
    let peers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let class = peers["Peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["PeerId"] == first.as_str())
        .map(|p| p["Class"].clone());
    assert_eq!(class, Some("internet".into()), "{peers}");

    // Host 3 is connected to both holders: the file comes from its LAN neighbour.
    let out = fleet.spawn_get(3).wait_with_output().unwrap();
    let summary = fleet.check(3, &out);
    let (lan, far) = (
        summary["BytesFromLanPeers"].as_u64().unwrap(),
        summary["BytesFromInternetPeers"].as_u64().unwrap(),
    );
    println!(
        "host 3: {lan} bytes from its LAN peer, {far} from the Internet peer; origin {:.3} copies",
        ratio(fleet.origin_bytes())
    );
    assert!(
        far <= FILE / 10,
        "the WAN link carried {far} bytes: {summary}"
    );
    assert_eq!(lan + far, FILE, "{summary}");
    assert_eq!(fleet.origin_bytes(), FILE);
}
