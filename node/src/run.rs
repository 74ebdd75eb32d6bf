//! `donode run`: the long-running node with the Linux DO agent's REST API.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, atomic::AtomicBool, atomic::Ordering},
};

use anyhow::Context;
use do_driver::{Config, Node};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Arguments of `donode run`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The cache directory (default: `$DONODE_CACHE_DIR`, `$XDG_CACHE_HOME/donode` or
    /// `~/.cache/donode`).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Where the REST API's `restport.<pid>` file goes (as the Linux DO agent).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/var/run/deliveryoptimization-agent"
    )]
    run_dir: PathBuf,
    /// The Linux DO agent's admin config (JSON); `RestControllerValidateRemoteAddr` is honoured.
    /// Re-read on SIGHUP. A missing file means the defaults.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/etc/deliveryoptimization-agent/admin-config.json"
    )]
    admin_config: PathBuf,
    /// Ports tried for the REST API, `FIRST-LAST`.
    #[arg(long, value_name = "FIRST-LAST", default_value = "50000-60999", value_parser = parse_ports)]
    ports: std::ops::RangeInclusive<u16>,
}

/// Runs until SIGTERM or SIGINT; SIGHUP reloads the admin config.
pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let validate = Arc::new(AtomicBool::new(true));
    load_admin_config(&args.admin_config, &validate);
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(crate::default_cache_dir);
    let (node, node_task) =
        Node::start(Config::new(cache_dir.clone())).context("cannot start the node")?;
    let agent_config = do_agent::Config {
        run_dir: args.run_dir.clone(),
        ports: args.ports.clone(),
        validate_remote_addr: Arc::clone(&validate),
        // Non-volatile downloads live beside the cache they resume from.
        state_path: Some(cache_dir.join("downloads.redb")),
    };
    let server = do_agent::Server::bind(agent_config, node.clone()).await?;
    info!(addr = %server.local_addr()?, "donode running");
    let shutdown = CancellationToken::new();
    let server_task = tokio::spawn(server.run(shutdown.clone()));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                info!("SIGHUP: reloading the admin config");
                load_admin_config(&args.admin_config, &validate);
            }
        }
    }
    info!("shutting down");
    shutdown.cancel();
    server_task.await.context("agent task")?;
    node.shutdown().await?;
    node_task.await.context("node task")?;
    Ok(ExitCode::SUCCESS)
}

/// Reads `RestControllerValidateRemoteAddr` (default true) from the admin config.
fn load_admin_config(path: &Path, validate: &AtomicBool) {
    let value = match std::fs::read_to_string(path) {
        Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(json) => json
                .get("RestControllerValidateRemoteAddr")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(true),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "admin config is not valid JSON; using defaults");
                true
            }
        },
        Err(_) => true,
    };
    validate.store(value, Ordering::Relaxed);
}

fn parse_ports(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (a, b) = s.split_once('-').ok_or("expected FIRST-LAST")?;
    let (a, b): (u16, u16) = (
        a.parse().map_err(|_| "FIRST is not a port")?,
        b.parse().map_err(|_| "LAST is not a port")?,
    );
    if a > b || a == 0 {
        return Err("FIRST must be 1..=LAST".into());
    }
    Ok(a..=b)
}
