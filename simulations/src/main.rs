//! `dosim`: runs fleet scenarios through the real download engine on a simulated network.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use do_sim::{Scenario, plot, shipped};

/// The simulator allocates and frees many small sets per event (have-maps, runs, request
/// lists): mimalloc serves them faster than the system allocator, with the same results.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Command line.
#[derive(Parser)]
#[command(
    name = "dosim",
    version,
    about = "Simulates donode fleets through the real engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs a scenario: a TOML file, or the name of a shipped one (see `dosim list`).
    Run {
        /// The scenario file or name.
        scenario: String,
        /// Seed (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Scale the fleet to this many nodes (sites keep their proportions).
        #[arg(long)]
        nodes: Option<usize>,
        /// Simulate in blocks of this many KiB (a multiple of 64), a coarser model for large
        /// fleets (default: the scenario's `block_kib`, 64 unless it says otherwise).
        #[arg(long)]
        block_kib: Option<u64>,
        /// Write the summary as JSON to this file (`-` for standard output).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write plots (PNG and SVG) into this directory.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Lists the shipped scenarios.
    List,
}

fn load(name: &str) -> anyhow::Result<Scenario> {
    let path = PathBuf::from(name);
    if path.exists() {
        return Scenario::load(&path);
    }
    match shipped::find(name) {
        Some(text) => Scenario::parse(text).with_context(|| format!("shipped scenario {name}")),
        None => bail!("no scenario file or shipped scenario named {name:?} (see `dosim list`)"),
    }
}

/// Peak resident set size of this process, MiB (Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::List => {
            for (name, text) in shipped::SCENARIOS {
                let sc = Scenario::parse(text).with_context(|| format!("shipped {name}"))?;
                println!("{name:<20} {:>7} nodes  {}", sc.nodes(), sc.description);
            }
        }
        Cmd::Run {
            scenario,
            seed,
            nodes,
            block_kib,
            json,
            plot: plot_dir,
        } => {
            let mut sc = load(&scenario)?;
            if let Some(n) = nodes {
                anyhow::ensure!(n > 0, "--nodes must be positive");
                sc.scale_nodes(n);
            }
            if let Some(kib) = block_kib {
                sc.block_kib = kib;
                sc.check().context("--block-kib")?;
            }
            let seed = seed.unwrap_or(sc.seed);
            let (summary, outcome) = do_sim::run(&sc, seed);
            let json_to_stdout = json.as_deref() == Some(std::path::Path::new("-"));
            let mut value = serde_json::to_value(&summary)?;
            if let Some(rss) = peak_rss_mib() {
                value["peak_rss_mib"] = serde_json::json!(rss);
            }
            if json_to_stdout {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("{summary}");
                if let Some(rss) = peak_rss_mib() {
                    println!("  peak RSS {rss:.0} MiB");
                }
            }
            if let Some(path) = json.filter(|_| !json_to_stdout) {
                std::fs::write(&path, serde_json::to_string_pretty(&value)? + "\n")
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(dir) = plot_dir {
                let written = plot::write_all(&dir, &sc, &summary, &outcome)?;
                for w in written {
                    eprintln!("wrote {}", w.display());
                }
            }
            if summary.corrupt_bytes_committed > 0 || summary.efficiency > 1.0 + 1e-9 {
                bail!("invariant broken: corrupt bytes committed or the bound beaten");
            }
        }
    }
    Ok(())
}
