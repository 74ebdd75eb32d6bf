//! `do-bench`: prints donode's speed next to the tools a user would compare it with.
//!
//! - hashing: `do-content` building the block manifest of a file (and so its content id)
//!   vs `b3sum` on the same file;
//! - download: `donode get` of the same file from a private nginx on loopback vs `curl -o`,
//!   with donode's peak RSS.
//!
//! Each measurement is the best of `--runs` runs (the page cache is warm for all of them).
//! Needs nginx, b3sum and curl on the PATH, and a built `donode` next to this binary.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use clap::Parser;
use do_content::Manifest;
use do_tests::{Nginx, NginxOptions, b3sum, write_random_file};

/// Benchmarks donode against b3sum and curl.
#[derive(Parser)]
struct Args {
    /// Test file size in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Runs per measurement (the best is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Work directory (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let root = dir.join("root");
    std::fs::create_dir_all(&root)?;
    let file = root.join("bench.bin");
    let size = args.size_mib << 20;
    write_random_file(&file, size, 42)?;
    println!("file: {} MiB at {}", args.size_mib, file.display());

    let expected = b3sum(&file)?;
    let b3 = best(args.runs, || {
        let out = Command::new("b3sum")
            .arg("--no-names")
            .arg(&file)
            .output()?;
        ensure!(out.status.success(), "b3sum failed");
        Ok(())
    })?;
    let ours = best(args.runs, || {
        let root = Manifest::from_file(&file)?.root();
        ensure!(
            root.to_string() == expected,
            "content id differs from b3sum"
        );
        Ok(())
    })?;
    println!();
    println!("hashing (content id of the file)");
    println!(
        "  b3sum          {:>8.3} s  {:>7.2} GiB/s",
        b3.as_secs_f64(),
        gib_s(size, b3)
    );
    println!(
        "  do-content     {:>8.3} s  {:>7.2} GiB/s",
        ours.as_secs_f64(),
        gib_s(size, ours)
    );
    println!(
        "  ratio          {:>8.3}   (do-content throughput / b3sum throughput; goal >= 0.9)",
        b3.as_secs_f64() / ours.as_secs_f64()
    );

    let nginx = Nginx::start_with(
        &root,
        NginxOptions {
            slow_rate_bytes_per_s: 0,
        },
    )?;
    let url = nginx.url("/files/bench.bin");
    let donode = donode_path()?;
    let out = dir.join("out.bin");
    let curl = best(args.runs, || {
        let _ = std::fs::remove_file(&out);
        let status = Command::new("curl")
            .args(["-sS", "-o"])
            .arg(&out)
            .arg(&url)
            .status()?;
        ensure!(status.success(), "curl failed");
        Ok(())
    })?;
    let mut peak_rss_kib = 0;
    let mut fresh_get = |connections: &str| {
        best(args.runs, || {
            let _ = std::fs::remove_file(&out);
            let cache = dir.join("cache");
            let _ = std::fs::remove_dir_all(&cache);
            let mut cmd = Command::new(&donode);
            cmd.arg("get").arg(&url).arg("-o").arg(&out);
            cmd.arg("--cache-dir").arg(&cache);
            cmd.args(["--connections", connections]);
            let (status, rss) = run_measured(&mut cmd)?;
            ensure!(status.success(), "donode get failed: {status}");
            peak_rss_kib = peak_rss_kib.max(rss);
            Ok(())
        })
    };
    let get_one = fresh_get("1")?;
    let get = fresh_get("4")?;
    ensure!(b3sum(&out)? == expected, "donode's output does not match");
    let hit = best(args.runs, || {
        let _ = std::fs::remove_file(&out);
        let mut cmd = Command::new(&donode);
        cmd.arg("get")
            .arg(&url)
            .arg("-o")
            .arg(&out)
            .arg("--cache-dir")
            .arg(dir.join("cache"));
        let (status, _) = run_measured(&mut cmd)?;
        ensure!(status.success(), "donode get (cached) failed");
        Ok(())
    })?;
    println!();
    println!("download from nginx on loopback");
    println!(
        "  curl -o        {:>8.3} s  {:>7.2} GiB/s",
        curl.as_secs_f64(),
        gib_s(size, curl)
    );
    let row = |name: &str, d: Duration, note: &str| {
        println!(
            "  {name:<14} {:>8.3} s  {:>7.2} GiB/s  {note}",
            d.as_secs_f64(),
            gib_s(size, d)
        );
    };
    row(
        "donode get -c1",
        get_one,
        "(one origin connection, like curl)",
    );
    row("donode get", get, "(4 connections, the default)");
    println!(
        "  peak RSS       {:>8} MiB (highest of all donode get runs; goal < 64)",
        peak_rss_kib / 1024
    );
    println!(
        "  ratio          {:>8.3}   (curl time / donode time, defaults; goal >= 0.9)",
        curl.as_secs_f64() / get.as_secs_f64()
    );
    println!(
        "  ratio -c1      {:>8.3}   (curl time / donode time, one connection each)",
        curl.as_secs_f64() / get_one.as_secs_f64()
    );
    println!(
        "  cached re-get  {:>8.3} s  (second get of the same URL: re-check + link)",
        hit.as_secs_f64()
    );
    Ok(())
}

/// The shortest of `runs` timed calls.
fn best(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed());
    }
    Ok(best)
}

/// Runs a command to completion and returns its status and peak RSS in KiB: the kernel's
/// high-water mark (`VmHWM` in `/proc/PID/status`), sampled every 5 ms while it runs; the
/// mark only grows, so the last sample is within 5 ms of the end of the run.
fn run_measured(cmd: &mut Command) -> anyhow::Result<(ExitStatus, u64)> {
    let mut child = cmd.spawn().context("spawn")?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Some(kib) = std::fs::read_to_string(&status_path)
            .ok()
            .and_then(|s| vm_hwm(&s))
        {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            return Ok((status, peak));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn donode_path() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().map(|d| d.join("donode")).unwrap_or_default();
    ensure!(
        Path::new(&path).exists(),
        "build donode first: cargo build --release -p donode"
    );
    Ok(path)
}

fn gib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / d.as_secs_f64()
}
