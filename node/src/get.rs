//! `donode get URL -o FILE`: one verified download through an embedded node.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use do_content::{ByteRange, ContentId};
use do_driver::{Config, Headers, Layout, Node, Progress, Request};
use do_engine::State;
use indicatif::{ProgressBar, ProgressStyle};

use crate::hresult::describe;

/// Arguments of `donode get`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The URL to download.
    pub(crate) url: String,
    /// The output file.
    #[arg(short, long)]
    pub(crate) output: PathBuf,
    /// The BLAKE3 content id (64 hex digits, as b3sum prints) the file must hash to.
    #[arg(long, value_name = "HEX")]
    pub(crate) content_id: Option<ContentId>,
    /// Download only this byte range, `OFFSET:LENGTH` (LENGTH may be `eof`). Repeatable;
    /// ranges are written to the output one after another, in the order given.
    #[arg(long = "range", value_name = "OFFSET:LENGTH", value_parser = parse_range)]
    pub(crate) ranges: Vec<ByteRange>,
    /// The cache directory (default: `$DONODE_CACHE_DIR`, `$XDG_CACHE_HOME/donode` or
    /// `~/.cache/donode`).
    #[arg(long, value_name = "DIR")]
    pub(crate) cache_dir: Option<PathBuf>,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub(crate) force: bool,
    /// An extra request header, `Name: value`. Repeatable.
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub(crate) headers: Vec<String>,
    /// Fail after this many seconds without progress.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub(crate) no_progress_timeout: u64,
    /// Parallel origin connections.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub(crate) connections: usize,
    /// Print a JSON summary on standard output when done.
    #[arg(long)]
    pub(crate) json: bool,
    /// Where a running daemon's port file is: when one runs, the download goes through it
    /// (whole files only; `--range` always runs embedded).
    #[arg(long, value_name = "DIR", default_value = crate::DEFAULT_RUN_DIR)]
    pub(crate) run_dir: PathBuf,
    /// Never use a daemon: download through a node embedded in this process.
    #[arg(long)]
    pub(crate) embedded: bool,
}

/// Runs `donode get`; the exit code is 0 only for a verified, complete output.
pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.content_id.is_some() && !args.ranges.is_empty() {
        bail!(
            "--content-id checks a whole file; with --range only some blocks are fetched and the \
             origin gives no hashes to check them against"
        );
    }
    check_output(&args.output, args.force)?;
    if !args.embedded
        && args.ranges.is_empty()
        && let Ok(manager) = do_api::Manager::connect(&args.run_dir).await
    {
        return crate::get_daemon::run(&args, &manager).await;
    }
    let headers = Headers::parse(
        &args
            .headers
            .iter()
            .map(|h| format!("{h}\r\n"))
            .collect::<String>(),
    )
    .context("bad --header")?;
    let mut config = Config::new(
        args.cache_dir
            .clone()
            .unwrap_or_else(crate::default_cache_dir),
    );
    config.engine.origin_connections = args.connections.max(1);
    let (node, task) = Node::start(config).context("cannot start the node")?;
    let request = Request {
        url: args.url.clone(),
        output: args.output.clone(),
        ranges: (!args.ranges.is_empty()).then(|| args.ranges.clone()),
        layout: Layout::Concatenated,
        content_id: args.content_id,
        overwrite: args.force,
        headers,
        no_progress_timeout: Some(Duration::from_secs(args.no_progress_timeout)),
        // An interactive download is what DO calls foreground.
        foreground: true,
        previous_url: None,
    };
    let started = Instant::now();
    let mut download = node.download(request).await?;
    let bar = progress_bar();
    let interrupt = interrupted();
    tokio::pin!(interrupt);
    let outcome = loop {
        tokio::select! {
            changed = download.progress.changed() => {
                let p = download.progress.borrow_and_update().clone();
                show(&bar, &p);
                if changed.is_err() || p.is_settled() { break Some(p); }
            }
            () = &mut interrupt => break None,
        }
    };
    bar.finish_and_clear();
    let code = match outcome {
        None => {
            node.shutdown().await?;
            eprintln!(
                "donode: interrupted; verified blocks stay in the cache and the next run resumes"
            );
            ExitCode::from(130)
        }
        Some(p) if p.status.state == State::Transferred => {
            node.finalize(download.id).await?;
            node.shutdown().await?;
            report(&args, &p, started.elapsed());
            ExitCode::SUCCESS
        }
        Some(p) => {
            node.shutdown().await?;
            let code = p.status.error;
            eprintln!(
                "donode: {}: {} (error {code:#010x})",
                args.url,
                describe(code)
            );
            ExitCode::FAILURE
        }
    };
    task.await.context("node task")?;
    Ok(code)
}

/// Refuses an existing output (without --force) and an output directory that cannot be
/// written, before any byte is fetched.
fn check_output(output: &Path, force: bool) -> anyhow::Result<()> {
    if output.is_dir() {
        bail!("{}: is a directory", output.display());
    }
    if output.exists() && !force {
        bail!(
            "{}: file exists (use --force to replace it)",
            output.display()
        );
    }
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    tempfile::Builder::new()
        .prefix(".donode-probe")
        .tempfile_in(&dir)
        .with_context(|| format!("{}: cannot write the output there", output.display()))?;
    Ok(())
}

pub(crate) fn progress_bar() -> ProgressBar {
    // Draws on standard error only when it is a terminal; elsewhere it stays silent.
    let bar = ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta} {msg}")
            .expect("valid template"),
    );
    bar
}

fn show(bar: &ProgressBar, p: &Progress) {
    bar.set_length(p.status.bytes_total);
    bar.set_position(p.status.bytes_transferred);
    if p.status.state == State::Paused && p.status.error == 0 && p.status.extended_error != 0 {
        bar.set_message(format!("retrying: {}", describe(p.status.extended_error)));
    } else {
        bar.set_message("");
    }
}

fn report(args: &Args, p: &Progress, elapsed: Duration) {
    let content_id = p.content_id.map(|c| c.to_string());
    if args.json {
        let summary = serde_json::json!({
            "url": args.url,
            "output": args.output,
            "content_id": content_id,
            "bytes_total": p.status.bytes_total,
            "BytesFromHttp": p.bytes_from_http,
            "BytesFromCache": p.bytes_from_cache,
            "seconds": elapsed.as_secs_f64(),
        });
        println!("{summary}");
    } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!(
            "{}  {} bytes in {:.2} s (from origin {}, from cache {})",
            content_id.as_deref().unwrap_or("(ranges)"),
            p.status.bytes_total,
            elapsed.as_secs_f64(),
            p.bytes_from_http,
            p.bytes_from_cache,
        );
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
pub(crate) async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn parse_range(s: &str) -> Result<ByteRange, String> {
    let (offset, len) = s.split_once(':').ok_or("expected OFFSET:LENGTH")?;
    let offset: u64 = offset
        .trim()
        .parse()
        .map_err(|_| "OFFSET is not a number")?;
    let len = match len.trim() {
        "eof" => u64::MAX,
        n => n.parse().map_err(|_| "LENGTH is not a number or `eof`")?,
    };
    if len == 0 {
        return Err("LENGTH must not be 0".into());
    }
    Ok(ByteRange::from_offset_len(offset, len))
}
