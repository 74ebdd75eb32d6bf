//! Peer-to-peer benchmarks on a LAN of network namespaces (needs root; build `donode` in the
//! same profile first: `cargo build --release -p donode -p do-fleet-bench`).
//!
//! 1. **Two nodes**: one 1 GiB file across the bridge, from a peer's cache (`donode get`
//!    through a daemon that takes it from the other daemon), against `curl` from nginx over
//!    the same path, over TCP and over QUIC (`--transport`). Goal: p2p ≥ 0.8 × curl.
//! 2. **Flash crowd**: N daemons start the same download at once behind an origin limited with
//!    `tc tbf`. The completion time of the last one is set against the lower bound
//!    `max(F/u_origin, F/d_min, N·F/(u_origin + Σu_i))`, where the LAN links' `u_i` and `d_i`
//!    are the bridge's capacity measured by the curl run of part 1. Goal: within 1.3×.

use std::time::Instant;

use anyhow::{Context, ensure};
use clap::Parser;
use do_tests::{Fleet, FleetOptions};

/// Command-line options.
#[derive(Parser)]
struct Args {
    /// File size for the two-node run, MiB.
    #[arg(long, default_value_t = 1024)]
    pair_mib: u64,
    /// File size for the flash crowd, MiB.
    #[arg(long, default_value_t = 256)]
    crowd_mib: u64,
    /// Nodes in the flash crowd.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// The origin's rate limit in the flash crowd, Mbit/s.
    #[arg(long, default_value_t = 200)]
    origin_mbit: u32,
    /// Runs of each measurement (the best is kept).
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// Keep each daemon's log: the crowd's as DIR/run-R-host-H.log, the two-node run's as
    /// DIR/run-R-TRANSPORT-host-H.log.
    #[arg(long, value_name = "DIR")]
    logs: Option<std::path::PathBuf>,
    /// Only the flash crowd (its `F/d_min` term then uses 940 Mbit/s for the LAN).
    #[arg(long, conflicts_with = "pair_only")]
    crowd_only: bool,
    /// Only the two-node run.
    #[arg(long)]
    pair_only: bool,
    /// The two-node run over this transport only (`tcp` or `quic`; default both).
    #[arg(long, value_name = "TRANSPORT")]
    transport: Option<String>,
    /// Profile both daemons of the two-node run with `perf record` (DWARF call graphs) while
    /// the second node takes the file, into DIR/run-R-TRANSPORT-host-H.data (and the whole
    /// machine into DIR/run-R-TRANSPORT-all.data).
    #[arg(long, value_name = "DIR")]
    perf: Option<std::path::PathBuf>,
    /// Run the daemons with `--no-data-lanes`: blocks travel over libp2p (the transport's
    /// noise or TLS and its multiplexer) instead of data lanes.
    #[arg(long)]
    no_data_lanes: bool,
    /// The two-node run on loopback: both daemons in one namespace (they reach each other over
    /// loopback), and curl from nginx inside the origin's namespace. With `--pair-only`.
    #[arg(long, requires = "pair_only")]
    loopback: bool,
    /// In the two-node run, the serving node (the first to take the file) runs this `donode`
    /// binary instead of the one beside this tool: another version, to measure a pair across
    /// versions (and check that they find a data lane both know). With `--pair-only`.
    #[arg(long, value_name = "PATH", requires = "pair_only")]
    serving_donode: Option<std::path::PathBuf>,
    /// The same for the receiving node.
    #[arg(long, value_name = "PATH", requires = "pair_only")]
    receiving_donode: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let lan_bytes_per_s = if args.crowd_only {
        940e6 / 8.0
    } else {
        pair(&args)?
    };
    if !args.pair_only {
        crowd(&args, lan_bytes_per_s)?;
    }
    Ok(())
}

/// CPU time (user and system) process `pid` has used, in seconds; 0 if it cannot be read.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): state is the 3rd field overall,
    // utime and stime the 14th and 15th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|t| t.parse::<f64>().ok()).sum()
    });
    // The kernel's USER_HZ is 100 on Linux.
    ticks / 100.0
}

fn mib_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / seconds / f64::from(1 << 20)
}

/// Part 1; returns curl's throughput across the bridge (bytes/s), the LAN's capacity.
fn pair(args: &Args) -> anyhow::Result<f64> {
    let bytes = args.pair_mib << 20;
    let mut best_curl = f64::MAX;
    let mut best_p2p = [f64::MAX; 2];
    let wanted = |transport: &str| args.transport.as_deref().is_none_or(|t| t == transport);
    ensure!(
        wanted("tcp") || wanted("quic"),
        "--transport is tcp or quic"
    );
    for run in 0..args.runs {
        for (t, transport) in ["tcp", "quic"].into_iter().enumerate() {
            // curl runs beside the first transport measured.
            let first = if wanted("tcp") { 0 } else { 1 };
            if !wanted(transport) {
                continue;
            }
            let mut fleet = Fleet::without_daemons(FleetOptions {
                nodes: 2,
                spare_hosts: 0,
                file_bytes: bytes,
                origin_mbit: None,
                remote_hosts: 0,
            });
            fleet.colocated = args.loopback;
            for (host, bin) in [(2, &args.serving_donode), (3, &args.receiving_donode)] {
                if let Some(bin) = bin {
                    fleet.bins.insert(host, std::fs::canonicalize(bin)?);
                }
            }
            let mut daemons = Vec::new();
            for host in 2..=3 {
                let mut flags = vec!["--transport", transport];
                if args.no_data_lanes {
                    flags.push("--no-data-lanes");
                }
                fleet.start_daemon_with(host, &flags);
                daemons.push((host, fleet.lan.children.last().expect("daemon").id()));
            }
            fleet.wait_for_mesh();
            if t == first {
                // curl on host 3 from the origin on host 1 (on loopback: on host 1), writing a
                // file as donode does.
                let out = fleet.dir(3, "curl.bin");
                let url = format!("http://{}:8080/files/f.bin", do_tests::Lan::addr(1));
                let started = Instant::now();
                let status = fleet
                    .lan
                    .command(if args.loopback { 1 } else { 3 }, "curl")
                    .args(["-s", "-o"])
                    .arg(&out)
                    .arg(&url)
                    .status()?;
                ensure!(status.success(), "curl failed");
                best_curl = best_curl.min(started.elapsed().as_secs_f64());
                std::fs::remove_file(&out)?;
            }
            // Host 2 takes the file from the origin, then host 3 takes it from host 2.
            let first = fleet.spawn_get(2).wait_with_output()?;
            fleet.check(2, &first);
            let perfs = match &args.perf {
                Some(dir) => {
                    std::fs::create_dir_all(dir)?;
                    let mut perfs = daemons
                        .iter()
                        .map(|&(host, pid)| {
                            let out = dir.join(format!("run-{run}-{transport}-host-{host}.data"));
                            std::process::Command::new("perf")
                                .args(["record", "--call-graph", "dwarf,16384", "-F", "250"])
                                .args(["-q", "-o"])
                                .arg(out)
                                .args(["-p", &pid.to_string()])
                                .spawn()
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    // And the whole machine (the kernel's threads and the bridge included).
                    let out = dir.join(format!("run-{run}-{transport}-all.data"));
                    perfs.push(
                        std::process::Command::new("perf")
                            .args(["record", "-a", "-F", "250", "-q", "-o"])
                            .arg(out)
                            .spawn()?,
                    );
                    perfs
                }
                None => Vec::new(),
            };
            let cpu_before: Vec<f64> = daemons.iter().map(|&(_, pid)| cpu_seconds(pid)).collect();
            let started = Instant::now();
            let second = fleet.spawn_get(3).wait_with_output()?;
            let elapsed = started.elapsed().as_secs_f64();
            let cpu: Vec<f64> = daemons
                .iter()
                .zip(cpu_before)
                .map(|(&(_, pid), before)| cpu_seconds(pid) - before)
                .collect();
            eprintln!(
                "run {run}, {transport}: {elapsed:.2} s; CPU of the serving daemon {:.2} s, \
                 of the receiving one {:.2} s",
                cpu[0], cpu[1]
            );
            for mut perf in perfs {
                // SIGINT: perf writes its file and exits.
                let _ = std::process::Command::new("kill")
                    .args(["-INT", &perf.id().to_string()])
                    .status();
                perf.wait()?;
            }
            if let Some(dir) = &args.logs {
                std::fs::create_dir_all(dir)?;
                for host in 2..=3 {
                    let log = dir.join(format!("run-{run}-{transport}-host-{host}.log"));
                    std::fs::write(log, fleet.log(host))?;
                }
            }
            let summary = fleet.check(3, &second);
            ensure!(
                summary["BytesFromLanPeers"].as_u64() == Some(bytes),
                "host 3 did not take the whole file from its peer: {summary}"
            );
            // Which path the blocks took: data lanes, or libp2p.
            let lanes = fleet
                .stats(3)
                .map(|s| s["DataLanes"]["BytesIn"].as_u64().unwrap_or(0))
                .unwrap_or(0);
            eprintln!("  bytes over data lanes: {lanes} of {bytes}");
            ensure!(
                (lanes >= bytes) != args.no_data_lanes,
                "the blocks did not take the path asked for: {lanes} bytes over data lanes"
            );
            best_p2p[t] = best_p2p[t].min(elapsed);
        }
    }
    println!(
        "two nodes, {} MiB {}: curl from nginx {best_curl:.2} s ({:.0} MiB/s)",
        args.pair_mib,
        if args.loopback {
            "on loopback"
        } else {
            "across the bridge"
        },
        mib_s(bytes, best_curl),
    );
    for (t, transport) in ["TCP", "QUIC"].into_iter().enumerate() {
        if best_p2p[t] == f64::MAX {
            continue;
        }
        println!(
            "  donode from a peer ({}) over {transport}: {:.2} s ({:.0} MiB/s); p2p/curl throughput {:.2}",
            if args.no_data_lanes {
                "libp2p"
            } else {
                "data lanes beside libp2p"
            },
            best_p2p[t],
            mib_s(bytes, best_p2p[t]),
            best_curl / best_p2p[t]
        );
    }
    Ok(bytes as f64 / best_curl)
}

/// Part 2.
fn crowd(args: &Args, lan_bytes_per_s: f64) -> anyhow::Result<()> {
    let bytes = args.crowd_mib << 20;
    let n = args.nodes as f64;
    let f = bytes as f64;
    let u = f64::from(args.origin_mbit) * 1e6 / 8.0;
    let terms = [
        ("F/u_origin", f / u),
        ("F/d_min", f / lan_bytes_per_s),
        ("N·F/(u_origin+Σu_i)", n * f / (u + n * lan_bytes_per_s)),
    ];
    let (binding, t_min) = terms
        .iter()
        .copied()
        .fold(("", 0.0), |best, t| if t.1 > best.1 { t } else { best });
    let mut best: Option<(f64, u64)> = None;
    for run in 0..args.runs {
        let mut fleet = Fleet::without_daemons(FleetOptions {
            nodes: args.nodes,
            spare_hosts: 0,
            file_bytes: bytes,
            origin_mbit: Some(args.origin_mbit),
            remote_hosts: 0,
        });
        let flags: &[&str] = if args.no_data_lanes {
            &["--no-data-lanes"]
        } else {
            &[]
        };
        for host in 2..=args.nodes + 1 {
            fleet.start_daemon_with(host, flags);
        }
        fleet.wait_for_mesh();
        let started = Instant::now();
        let gets: Vec<_> = (2..=args.nodes + 1)
            .map(|h| (h, fleet.spawn_get(h)))
            .collect();
        for (host, child) in gets {
            let out = child.wait_with_output()?;
            fleet.check(host, &out);
        }
        let makespan = started.elapsed().as_secs_f64();
        let origin = fleet.origin_bytes();
        if let Some(dir) = &args.logs {
            std::fs::create_dir_all(dir)?;
            for host in 2..=args.nodes + 1 {
                let log = dir.join(format!("run-{run}-host-{host}.log"));
                std::fs::write(log, fleet.log(host))?;
            }
        }
        if best.is_none_or(|(m, _)| makespan < m) {
            best = Some((makespan, origin));
        }
    }
    let (makespan, origin) = best.context("no run")?;
    println!(
        "flash crowd, {} nodes × {} MiB, origin at {} Mbit/s: makespan {makespan:.2} s, \
         bound {t_min:.2} s ({binding} binds), makespan/bound {:.2}, origin sent {:.3} × the file",
        args.nodes,
        args.crowd_mib,
        args.origin_mbit,
        makespan / t_min,
        origin as f64 / f
    );
    // The whole crowd from the origin alone would take N·F/u.
    println!(
        "  (the origin alone would need {:.1} s; a single download {:.1} s)",
        n * f / u,
        f / u
    );
    Ok(())
}
