//! `donode`: the standalone node binary and its CLI.

mod config;
mod ctl;
mod demo;
mod get;
mod get_daemon;
mod hresult;
mod job;
mod run;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// A peer-to-peer Delivery Optimization node.
#[derive(Parser)]
#[command(name = "donode", version, about)]
struct Cli {
    /// Log filter (tracing's `RUST_LOG` syntax), e.g. `info` or `do_driver=debug`. Default
    /// `warn`; for `run`, the config file's `log`, else `info`.
    #[arg(long, global = true, env = "DONODE_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download a URL into a file, verified, through an embedded node.
    Get(get::Args),
    /// Run a self-contained demonstration: a local origin, a node, two downloads.
    Demo(demo::Args),
    /// Run the node as a daemon serving the Linux DO agent's REST API and the /v1 API.
    Run(run::Args),
    /// List the daemon's downloads.
    List(ctl::ListArgs),
    /// Print a download's status.
    Status(ctl::IdArgs),
    /// Pause a download.
    Pause(ctl::IdArgs),
    /// Resume a paused download.
    Resume(ctl::IdArgs),
    /// Abort a download (its output is removed).
    Abort(ctl::IdArgs),
    /// Finalize a transferred download.
    Finalize(ctl::IdArgs),
    /// Get or set a download property.
    #[command(subcommand)]
    Prop(ctl::PropCommand),
    /// Print a download's status events as they happen.
    Watch(ctl::IdArgs),
    /// Node-wide bytes by source and destination (DO's performance snapshot).
    Stats(ctl::NodeArgs),
    /// This node's peer id and its connected peers.
    Peers(ctl::NodeArgs),
    /// BITS-compatible jobs: create, add, resume, suspend, cancel, complete, info, files,
    /// error, list, watch.
    #[command(subcommand)]
    Job(job::JobCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` sets up logging itself, once its config file is read.
    if !matches!(cli.command, Command::Run(_)) {
        init_logging(
            cli.log.as_deref().unwrap_or("warn"),
            config::LogFormat::Text,
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("donode: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Get(args) => get::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Run(args) => run::run(args, cli.log).await,
            Command::List(args) => ctl::list(args).await,
            Command::Status(args) => ctl::status(args).await,
            Command::Pause(args) => ctl::act(args, ctl::Action::Pause).await,
            Command::Resume(args) => ctl::act(args, ctl::Action::Resume).await,
            Command::Abort(args) => ctl::act(args, ctl::Action::Abort).await,
            Command::Finalize(args) => ctl::act(args, ctl::Action::Finalize).await,
            Command::Prop(command) => ctl::prop(command).await,
            Command::Watch(args) => ctl::watch(args).await,
            Command::Job(command) => job::run(command).await,
            Command::Stats(args) => ctl::stats(args).await,
            Command::Peers(args) => ctl::peers(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("donode: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to standard error with `filter`, in `format`.
fn init_logging(filter: &str, format: config::LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text => builder.init(),
        config::LogFormat::Json => builder.json().init(),
    }
}

/// Where the daemon's port file goes by default (as the Linux DO agent).
const DEFAULT_RUN_DIR: &str = "/var/run/deliveryoptimization-agent";

/// The default cache directory: `$DONODE_CACHE_DIR`, else `$XDG_CACHE_HOME/donode`, else
/// `~/.cache/donode`, else `/var/cache/donode`.
fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DONODE_CACHE_DIR") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("donode");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache/donode"),
        None => PathBuf::from("/var/cache/donode"),
    }
}
