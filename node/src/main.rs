//! `donode`: the standalone node binary and its CLI.

mod demo;
mod get;
mod hresult;
mod run;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// A peer-to-peer Delivery Optimization node.
#[derive(Parser)]
#[command(name = "donode", version, about)]
struct Cli {
    /// Log filter (tracing's `RUST_LOG` syntax), e.g. `info` or `do_driver=debug`.
    #[arg(long, global = true, env = "DONODE_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download a URL into a file, verified, through an embedded node.
    Get(get::Args),
    /// Run a self-contained demonstration: a local origin, a node, two downloads.
    Demo(demo::Args),
    /// Run the node as a daemon serving the Linux DO agent's REST API.
    Run(run::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
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
            Command::Run(args) => run::run(args).await,
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
