//! `dosim-bench`: runs the simulator's scale and efficiency targets and prints each measured
//! number beside its target. Each run is a separate `dosim run` process, so that its wall time
//! and peak RSS are its own. Runs that do not finish within `--timeout-s` are reported as such.

use std::{
    io::Read,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::Value;

/// Command line.
#[derive(Parser)]
#[command(name = "dosim-bench")]
struct Args {
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
    /// Also run the 100,000-node flash crowds: `flash-crowd-100k` (64 MiB in 1 MiB blocks),
    /// then `flash-crowd-lan` grown to 100,000 nodes (1 GiB).
    #[arg(long)]
    huge: bool,
    /// Skip the 10,000-node flash crowd.
    #[arg(long)]
    no_10k: bool,
    /// Also run the 10,000-node flash crowd in 1 MiB blocks (a coarser model, 16 of the
    /// node's blocks per simulated block).
    #[arg(long)]
    coarse: bool,
    /// The `dosim` binary (default: beside this one).
    #[arg(long)]
    dosim: Option<PathBuf>,
}

/// The node's block, KiB: the simulator's default.
const NODE_BLOCK_KIB: u64 = do_content::BLOCK_SIZE / 1024;

/// One run and its targets.
struct Case {
    scenario: &'static str,
    nodes: usize,
    /// The simulated block, KiB ([`NODE_BLOCK_KIB`]: the node's).
    block_kib: u64,
    /// Most origin copies allowed.
    max_copies: f64,
    /// Least efficiency wanted (0: no target).
    min_efficiency: f64,
    /// Most wall seconds and MiB of RSS allowed (0: no target).
    max_wall_s: f64,
    max_rss_mib: f64,
}

fn run(dosim: &PathBuf, case: &Case, timeout: Duration) -> anyhow::Result<Option<Value>> {
    let mut child = Command::new(dosim)
        .args([
            "run",
            case.scenario,
            "--nodes",
            &case.nodes.to_string(),
            "--block-kib",
            &case.block_kib.to_string(),
            "--json",
            "-",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", dosim.display()))?;
    let started = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() > timeout {
            child.kill()?;
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .context("stdout")?
        .read_to_string(&mut out)?;
    let value: Value = serde_json::from_str(&out).with_context(|| format!("dosim said: {out}"))?;
    Ok(Some(value))
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dosim = match args.dosim {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("dosim"),
    };
    if !dosim.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p do-sim)",
            dosim.display()
        );
    }
    let mut cases = vec![
        Case {
            scenario: "flash-crowd-lan",
            nodes: 1_000,
            block_kib: NODE_BLOCK_KIB,
            max_copies: 1.05,
            min_efficiency: 0.85,
            max_wall_s: 0.0,
            max_rss_mib: 0.0,
        },
        Case {
            scenario: "sites-lan",
            nodes: 1_000,
            block_kib: NODE_BLOCK_KIB,
            max_copies: 5.0 * 1.05,
            min_efficiency: 0.0,
            max_wall_s: 0.0,
            max_rss_mib: 0.0,
        },
        Case {
            scenario: "sites-group",
            nodes: 1_000,
            block_kib: NODE_BLOCK_KIB,
            max_copies: 1.05,
            min_efficiency: 0.0,
            max_wall_s: 0.0,
            max_rss_mib: 0.0,
        },
        Case {
            scenario: "sites-internet",
            nodes: 1_000,
            block_kib: NODE_BLOCK_KIB,
            max_copies: 1.05,
            min_efficiency: 0.0,
            max_wall_s: 0.0,
            max_rss_mib: 0.0,
        },
    ];
    if !args.no_10k {
        cases.push(Case {
            scenario: "flash-crowd-lan",
            nodes: 10_000,
            block_kib: NODE_BLOCK_KIB,
            max_copies: 1.05,
            min_efficiency: 0.85,
            max_wall_s: 60.0,
            max_rss_mib: 2048.0,
        });
    }
    if args.coarse {
        cases.push(Case {
            scenario: "flash-crowd-lan",
            nodes: 10_000,
            block_kib: 1024,
            max_copies: 1.05,
            min_efficiency: 0.85,
            max_wall_s: 60.0,
            max_rss_mib: 2048.0,
        });
    }
    if args.huge {
        // 100,000 nodes with a file that lets the run finish here (64 MiB, 1 MiB blocks).
        cases.push(Case {
            scenario: "flash-crowd-100k",
            nodes: 100_000,
            block_kib: 1024,
            max_copies: 1.05,
            min_efficiency: 0.0,
            max_wall_s: 0.0,
            max_rss_mib: 0.0,
        });
        cases.push(Case {
            scenario: "flash-crowd-lan",
            nodes: 100_000,
            block_kib: NODE_BLOCK_KIB,
            max_copies: 1.05,
            min_efficiency: 0.0,
            max_wall_s: 0.0,
            max_rss_mib: 0.0,
        });
    }
    let timeout = Duration::from_secs(args.timeout_s);
    for case in &cases {
        print!("{} × {} nodes", case.scenario, case.nodes);
        if case.block_kib != NODE_BLOCK_KIB {
            print!(" in {} KiB blocks (a coarser model)", case.block_kib);
        }
        print!(": ");
        let Some(v) = run(&dosim, case, timeout)? else {
            println!("did not finish within {} s wall (MISSED)", args.timeout_s);
            continue;
        };
        let num = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let (eff, copies, wall, rss) = (
            num("efficiency"),
            num("origin_copies"),
            num("sim_wall_s"),
            num("peak_rss_mib"),
        );
        print!(
            "efficiency {eff:.3} (bound {:.1} s, makespan {:.1} s, {} binds)",
            num("t_min_s"),
            num("makespan_s"),
            v["t_min_binding"].as_str().unwrap_or("?")
        );
        if case.min_efficiency > 0.0 {
            print!(
                " [target ≥ {}: {}]",
                case.min_efficiency,
                verdict(eff >= case.min_efficiency)
            );
        }
        print!(
            "; origin copies {copies:.3}, {:.3} of them in blocks cut off in flight \
             [target ≤ {:.2}: {}]",
            num("origin_cut_copies"),
            case.max_copies,
            verdict(copies <= case.max_copies)
        );
        print!("; wall {wall:.1} s");
        if case.max_wall_s > 0.0 {
            print!(
                " [target < {} s: {}]",
                case.max_wall_s,
                verdict(wall < case.max_wall_s)
            );
        }
        print!("; peak RSS {rss:.0} MiB");
        if case.max_rss_mib > 0.0 {
            print!(
                " [target < {} MiB: {}]",
                case.max_rss_mib,
                verdict(rss < case.max_rss_mib)
            );
        }
        println!("; {} events; unfinished {}", v["events"], v["unfinished"]);
    }
    Ok(())
}
