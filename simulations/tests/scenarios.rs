//! Runs of the shipped scenarios, scaled down: determinism, the bound never beaten, safety
//! under corrupt and stalling peers, liveness after churn and an origin outage.

use do_sim::{Scenario, Summary, shipped};

/// A shipped scenario scaled to `nodes` nodes and files of at most `max_mib` MiB.
fn small(name: &str, nodes: usize, max_mib: f64) -> Scenario {
    let mut sc = Scenario::parse(shipped::find(name).expect("shipped")).unwrap();
    sc.scale_nodes(nodes);
    for f in &mut sc.files {
        f.size_mib = f.size_mib.min(max_mib);
    }
    sc
}

fn run(sc: &Scenario, seed: u64) -> Summary {
    let (summary, _) = do_sim::run(sc, seed);
    summary
}

/// Everything a healthy run must show.
fn check_healthy(s: &Summary) {
    assert_eq!(s.unfinished, 0, "{s}");
    assert_eq!(s.completed, s.nodes * count_files(s), "{s}");
    assert!(
        s.efficiency > 0.0 && s.efficiency <= 1.0,
        "the bound was beaten: {s}"
    );
    assert_eq!(s.corrupt_bytes_committed, 0, "{s}");
    assert_eq!(s.requests_to_banned, 0, "{s}");
    assert!(
        s.origin_copies + 1e-9 >= s.min_origin_copies,
        "the origin sent less than the least possible: {s}"
    );
    assert!(
        (0.0..=s.origin_copies + 1e-9).contains(&s.origin_cut_copies),
        "blocks cut off are part of what the origin sent: {s}"
    );
}

fn count_files(s: &Summary) -> usize {
    let sc = Scenario::parse(shipped::find(&s.scenario).unwrap()).unwrap();
    sc.files.len()
}

#[test]
fn every_scenario_file_is_shipped_and_parses() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|n| n.strip_suffix(".toml").map(str::to_owned))
        .collect();
    on_disk.sort();
    let listed: Vec<String> = shipped::SCENARIOS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(on_disk, listed);
    for (name, text) in shipped::SCENARIOS {
        let sc = Scenario::parse(text).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(&sc.name, name);
    }
}

#[test]
fn same_seed_same_run_byte_for_byte() {
    let sc = small("malicious", 40, 16.0);
    let strip = |s: Summary| {
        let mut v = serde_json::to_value(s).unwrap();
        v.as_object_mut().unwrap().remove("sim_wall_s");
        serde_json::to_string(&v).unwrap()
    };
    let a = strip(run(&sc, 7));
    let b = strip(run(&sc, 7));
    assert_eq!(a, b);
    let c = strip(run(&sc, 8));
    assert_ne!(a, c, "another seed should change the run");
}

#[test]
fn holdings_told_as_gains_or_whole_make_the_same_run() {
    for (name, _) in shipped::SCENARIOS {
        let mut sc = small(name, 30, 8.0);
        let gains = do_sim::run(&sc, 3).0;
        sc.engine.whole_have_reports = true;
        let whole = do_sim::run(&sc, 3).0;
        assert_eq!(gains.trace_hash, whole.trace_hash, "{name}");
        assert_eq!(gains.events, whole.events, "{name}");
    }
}

#[test]
fn no_scenario_beats_the_bound() {
    for (name, _) in shipped::SCENARIOS {
        let sc = small(name, 30, 8.0);
        let s = run(&sc, 1);
        check_healthy(&s);
    }
}

#[test]
fn a_flash_crowd_takes_most_bytes_from_peers() {
    let sc = small("flash-crowd-small", 30, 32.0);
    let s = run(&sc, 3);
    check_healthy(&s);
    assert!(s.saved_pct > 80.0, "{s}");
    assert!(s.origin_copies < 3.0, "{s}");
}

#[test]
fn a_cache_quota_evicts_old_files_and_late_nodes_take_them_from_the_origin_again() {
    let sc = small("cache-pressure", 30, 4.0);
    let quota = (sc.cache_mib.expect("a quota") * 1_048_576.0) as u64;
    let with = run(&sc, 1);
    check_healthy(&with);
    assert!(with.evictions > 0, "{with}");
    assert!(with.peak_cache_bytes <= quota, "over the quota: {with}");
    let mut unbounded = sc.clone();
    unbounded.cache_mib = None;
    let without = run(&unbounded, 1);
    check_healthy(&without);
    assert_eq!(without.evictions, 0);
    assert!(without.peak_cache_bytes > quota, "{without}");
    // What was evicted is no longer served: the origin sends it again.
    assert!(
        with.origin_copies > 2.0 * without.origin_copies,
        "{with}\n{without}"
    );
}

#[test]
fn http_mode_takes_every_byte_from_the_origin() {
    let mut sc = small("flash-crowd-small", 10, 4.0);
    sc.mode = do_sim::scenario::Mode::Http;
    let s = run(&sc, 1);
    check_healthy(&s);
    assert_eq!(s.bytes_from_peers, 0);
    assert!((s.origin_copies - 10.0).abs() < 1e-9, "{s}");
    assert_eq!(s.t_min_binding, "N·F/u_origin");
}

#[test]
fn corrupt_peers_are_banned_and_their_bytes_never_kept() {
    let mut sc = small("malicious", 60, 16.0);
    sc.faults.corrupt_fraction = 0.2;
    let s = run(&sc, 5);
    check_healthy(&s);
    assert!(s.bans > 0, "{s}");
    assert!(s.corrupt_bytes_received > 0, "{s}");
    // Banned by all, the corrupt nodes take the rest of their file from the origin; the
    // well-behaved ones refetch the corrupt co-fetchers' parts once (1.47 copies here).
    assert!(s.origin_copies_honest < s.origin_copies, "{s}");
    assert!(s.origin_copies_honest < 2.0, "{s}");
}

#[test]
fn crashed_nodes_come_back_and_everyone_finishes() {
    let s = run(&small("churn", 50, 32.0), 2);
    check_healthy(&s);
}

#[test]
fn an_origin_outage_delays_but_does_not_fail_the_fleet() {
    let sc = small("origin-outage", 20, 64.0);
    let s = run(&sc, 1);
    check_healthy(&s);
    // The outage lasts to 60 s and one copy cannot have left the origin before it began.
    assert!(s.makespan_s > 6.0, "{s}");
    // The outage cut the origin's flows in the middle of their blocks.
    assert!(s.origin_cut_copies > 0.0, "{s}");
}

#[test]
fn sites_in_group_mode_import_the_file_about_once_each() {
    // 64 MiB: with 16 MiB, most of the run passes before the nodes trust a manifest, while
    // blocks from peers come unchecked and are not told.
    let s = run(&small("sites-group", 50, 64.0), 1);
    check_healthy(&s);
    assert!(s.bytes_from_group_peers > 0, "{s}");
    // Each site's co-fetchers split what they take across the WAN (1.01-1.03 copies in
    // each; each fetching what its LAN lacked took 1.3-3.9), and the origin's work is split
    // across the sites (1.22 copies here, 1.07 at 200 nodes × 256 MiB; 1.42 here when each
    // kept its arcs of what crosses the WAN, even those its peers beyond the LAN lacked; 3.7
    // with 1 MiB requests across the WAN, which stalled on the shared uplinks).
    for site in &s.sites {
        assert!(site.wan_ingress_copies < 1.1, "{s}");
    }
    assert!(s.origin_copies < 1.35, "{s}");
}

#[test]
fn plots_are_written_as_svg_and_png() {
    let sc = small("sites-group", 20, 4.0);
    let (summary, outcome) = do_sim::run(&sc, 1);
    let dir = tempfile::tempdir().unwrap();
    let written = do_sim::plot::write_all(dir.path(), &sc, &summary, &outcome).unwrap();
    assert_eq!(written.len(), 6);
    for path in written {
        let bytes = std::fs::read(&path).unwrap();
        let ext = path.extension().unwrap().to_str().unwrap();
        match ext {
            "png" => assert_eq!(&bytes[..4], b"\x89PNG", "{}", path.display()),
            "svg" => assert!(
                String::from_utf8_lossy(&bytes).contains("<svg"),
                "{}",
                path.display()
            ),
            other => panic!("unexpected {other}"),
        }
    }
}

#[test]
fn a_crowd_whose_nodes_see_a_tenth_of_it_takes_the_file_about_once_from_the_origin() {
    // Each node sees 12 of 120, all starting at once: it learns the rest of the split's ring
    // from its co-fetchers, and the hashes it needs through them (1.15 copies; with each node
    // splitting among the co-fetchers it sees, 27).
    let mut sc = small("flash-crowd-lan", 120, 32.0);
    sc.engine.peers_per_node = 12;
    sc.arrivals.window_s = 0.0;
    let s = run(&sc, 2);
    check_healthy(&s);
    assert!(s.origin_copies < 1.3, "{s}");
}

#[test]
fn a_crowd_arriving_over_time_in_a_partial_mesh_takes_the_file_about_once_from_the_origin() {
    // 100 nodes seeing 32 each arrive over 10 s. A node that came early fetched, while its view
    // was narrow, blocks that fall in the arcs of later ones it does not see; the later ones
    // learn through their peers that a peer's peer holds them (`Input::PeerNear`) and wait
    // for them (1.08 copies; 1.47 without, `engine.near_wait_s = 0`).
    let mut sc = small("flash-crowd-lan", 100, 128.0);
    sc.engine.peers_per_node = 32;
    // (The random sample alone: ring neighbours would show a node where its arcs end, and
    // links to the hosts up would give the first nodes peers.)
    sc.engine.ring_peers = 0;
    sc.engine.online_peers = 0;
    let s = run(&sc, 1);
    check_healthy(&s);
    assert!(s.origin_copies < 1.2, "{s}");
    sc.engine.near_wait_s = 0.0;
    let without = run(&sc, 1);
    assert!(without.origin_copies > s.origin_copies + 0.2, "{without}");
}

#[test]
fn ring_neighbours_let_a_sparse_crowd_take_the_file_once_from_the_origin() {
    // 300 nodes seeing 8 each (two hops: about a fifth of the crowd), all starting at once.
    // Split among the co-fetchers it hears of, each node takes arcs that are others' in the
    // view of the whole crowd (2.88 copies); linked to its ring neighbours too (the peers
    // whose points follow its own, as the node polls them), it sees where its arcs end
    // (1.000 copies).
    let mut sc = small("flash-crowd-lan", 300, 32.0);
    sc.engine.peers_per_node = 8;
    sc.arrivals.window_s = 0.0;
    sc.engine.ring_peers = 2;
    let ring = run(&sc, 1);
    check_healthy(&ring);
    assert!(ring.origin_copies < 1.1, "{ring}");
    sc.engine.ring_peers = 0;
    let without = run(&sc, 1);
    check_healthy(&without);
    assert!(without.origin_copies > 2.0, "{without}");
}

#[test]
fn the_first_nodes_of_a_crowd_link_to_the_hosts_already_up() {
    // 200 nodes seeing 16 each arrive over 10 s. From a sample drawn before the run, the
    // first ones find none of their peers up, so they are not peering and go to the origin at
    // once, each for the whole file (1.56 copies); linked to 4 hosts already up, as the node
    // finds them through mDNS, they wait the fallback delay and split the work (1.14).
    let mut sc = small("flash-crowd-lan", 200, 128.0);
    sc.engine.peers_per_node = 16;
    sc.engine.online_peers = 4;
    let linked = run(&sc, 1);
    check_healthy(&linked);
    assert!(linked.origin_copies < 1.25, "{linked}");
    sc.engine.online_peers = 0;
    let alone = run(&sc, 1);
    check_healthy(&alone);
    assert!(alone.origin_copies > 1.4, "{alone}");
}

#[test]
fn a_coarse_block_model_moves_the_same_bytes_in_fewer_events() {
    // 1 MiB blocks: each engine block stands for 16 of the node's. The same crowd moves the
    // same bytes with the same sizes of requests in bytes, in far fewer events, and ends at
    // about the same time.
    let mut sc = small("flash-crowd-lan", 60, 64.0);
    let fine = run(&sc, 1);
    sc.block_kib = 1024;
    let coarse = run(&sc, 1);
    check_healthy(&fine);
    check_healthy(&coarse);
    assert_eq!((fine.block_kib, coarse.block_kib), (64, 1024));
    assert_eq!(coarse.file_bytes, fine.file_bytes);
    for s in [&fine, &coarse] {
        // Every node took the whole file, from the origin or from peers, counted in bytes.
        let moved = (s.origin_bytes + s.bytes_from_peers) as f64;
        let needed = (s.nodes as u64 * s.file_bytes) as f64;
        assert!(moved >= needed && moved < 1.1 * needed, "{s}");
    }
    assert!(coarse.events * 2 < fine.events, "{fine}\n{coarse}");
    let ratio = coarse.makespan_s / fine.makespan_s;
    assert!((0.8..1.25).contains(&ratio), "{fine}\n{coarse}");
}

#[test]
fn a_crowd_whose_peers_are_sampled_from_the_swarm_takes_the_file_about_once_from_the_origin() {
    // 150 nodes seeing 16 each arrive over 10 s. Sampled among all nodes, a node's peers
    // have mostly not started when it does, and pass on neither the holdings nor the
    // co-fetchers of the nodes beyond them (3.1 copies). Sampled among those that came before
    // it, as a full mesh would show the crowd, 1.06.
    let mut sc = small("flash-crowd-lan", 150, 64.0);
    sc.engine.peers_per_node = 16;
    // (The samples alone: ring neighbours would show a node where its arcs end, and links
    // to the hosts up would give the first nodes peers.)
    sc.engine.ring_peers = 0;
    sc.engine.online_peers = 0;
    let uniform = run(&sc, 1);
    sc.engine.peer_sample = do_sim::scenario::PeerSample::Swarm;
    let swarm = run(&sc, 1);
    check_healthy(&uniform);
    check_healthy(&swarm);
    assert!(uniform.origin_copies > 2.0, "{uniform}");
    assert!(swarm.origin_copies < 1.2, "{swarm}");
}

#[test]
fn a_host_up_from_the_start_waits_for_its_peers_before_going_to_the_origin() {
    // Two nodes, arriving about 30 s apart. Booting at its arrival, the first finds no peer
    // and takes its file from the origin at once; up from the start, it knows the other and
    // waits the fallback delay (1 s) first.
    let text = r#"
        name = "two"
        mode = "lan"
        files = [{ size_mib = 4 }]
        origin = { up_mbit = 1000, latency_ms = 10 }
        arrivals = { poisson_mean_gap_s = 30 }
        sites = [{ name = "lan", nodes = 2, hosts = [{ share = 1, up_mbit = 100, down_mbit = 100 }] }]
    "#;
    let mut sc = Scenario::parse(text).unwrap();
    // The first node's download time, and the gap to the second's arrival.
    let first_download_s = |sc: &Scenario, seed: u64| {
        let (_, outcome) = do_sim::run(sc, seed);
        let (a, b) = (&outcome.nodes[0], &outcome.nodes[1]);
        let first = if a.arrival_s <= b.arrival_s { 0 } else { 1 };
        let &(_, _, start, end) = outcome
            .completions
            .iter()
            .find(|c| c.0 == first)
            .expect("finished");
        (end - start, (a.arrival_s - b.arrival_s).abs())
    };
    // A seed whose second node comes well after the first one's download.
    let seed = (1..100)
        .find(|&seed| first_download_s(&sc, seed).1 > 3.0)
        .expect("a seed with a gap");
    let (booting, _) = first_download_s(&sc, seed);
    sc.arrivals.hosts_up_first = true;
    let (up, _) = first_download_s(&sc, seed);
    assert!(booting < 0.6, "{booting}");
    assert!(up > booting + 0.9, "{up} against {booting}");
}
