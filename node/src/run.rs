//! `donode run`: the long-running node with the Linux DO agent's REST API and the `/v1` API.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, atomic::AtomicBool, atomic::Ordering},
    time::Duration,
};

use anyhow::Context;
use do_driver::{Config, Node};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{self, LogFormat};

/// Arguments of `donode run`; each overrides the config file's key of the same name.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The config file (TOML; every key is documented in docs/donode.toml).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The cache directory (default: `$DONODE_CACHE_DIR`, `$XDG_CACHE_HOME/donode` or
    /// `~/.cache/donode`).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Where the REST API's `restport.<pid>` file goes [default:
    /// /var/run/deliveryoptimization-agent].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// The Linux DO agent's admin config (JSON); `RestControllerValidateRemoteAddr` is
    /// honoured and re-read on SIGHUP. A missing file means the defaults [default:
    /// /etc/deliveryoptimization-agent/admin-config.json].
    #[arg(long, value_name = "PATH")]
    admin_config: Option<PathBuf>,
    /// Ports tried for the REST API, `FIRST-LAST` [default: 50000-60999].
    #[arg(long, value_name = "FIRST-LAST")]
    ports: Option<String>,
    /// Log line format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Exchange files with LAN peers (mDNS discovery, verified blocks): downloads take blocks
    /// from peers, and the cache is served to them.
    #[arg(long)]
    p2p: bool,
    /// Group mode: exchange files only with the members of this group (they share its id and
    /// secret; nobody else can connect). Needs `--group-secret-file` or the config's
    /// `group.secret`; turns p2p on.
    #[arg(long, value_name = "ID")]
    group_id: Option<String>,
    /// The file holding the group's secret (its whole content; trailing whitespace and
    /// newlines are ignored).
    #[arg(long, value_name = "PATH")]
    group_secret_file: Option<PathBuf>,
    /// Most bytes per second of block data served to peers, on average; 0: no cap (DO's
    /// `DOMaxUploadBandwidth`) [default: 0].
    #[arg(long, value_name = "BYTES_PER_SECOND")]
    upload_max_rate: Option<u64>,
    /// The transport tried first when dialing a peer (the node listens on both; Group mode is
    /// TCP only) [default: tcp].
    #[arg(long, value_enum)]
    transport: Option<config::Transport>,
    /// The download mode (DO's `DODownloadMode`) [default: lan with --p2p, group with a group,
    /// else http-only].
    #[arg(long, value_enum)]
    download_mode: Option<config::DownloadMode>,
    /// A peer to join the DHT through, `/ip4/ADDRESS/tcp/PORT/p2p/PEER_ID` (Internet and Group
    /// modes); repeatable, added to the config's `bootstrap`.
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// The port peers connect to, TCP and UDP (QUIC); 0: any free port [default: 0].
    #[arg(long, value_name = "PORT")]
    p2p_port: Option<u16>,
    /// Ask peers for blocks over libp2p only, and offer them no data lanes (direct TCP
    /// connections sealed with AEGIS-128L) [default: lanes on].
    #[arg(long)]
    no_data_lanes: bool,
    /// The TCP port the node's data lanes are opened at; 0: any free port [default: 0].
    #[arg(long, value_name = "PORT")]
    data_lane_port: Option<u16>,
    /// The most peers a download polls for what they hold; 0: every connected peer
    /// [default: 64].
    #[arg(long, value_name = "N")]
    poll_peers: Option<usize>,
    /// On a LAN larger than `--poll-peers`, a download also polls its ring neighbours: for
    /// each of its points on the file's split ring, the first N LAN peers whose points follow
    /// it (they bound the share of the origin's work it takes); 0: none [default: 2].
    #[arg(long, value_name = "N")]
    ring_peers: Option<usize>,
}

/// Runs until SIGTERM or SIGINT; SIGHUP reloads the admin config.
pub(crate) async fn run(args: Args, log: Option<String>) -> anyhow::Result<ExitCode> {
    let (path, required) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_CONFIG), false),
    };
    let file = config::File::load(&path, required)?;
    let filter = log.or(file.log.clone()).unwrap_or_else(|| "info".into());
    crate::init_logging(
        &filter,
        args.log_format.or(file.log_format).unwrap_or_default(),
    );

    let cache_dir = args
        .cache_dir
        .or(file.cache_dir.clone())
        .unwrap_or_else(crate::default_cache_dir);
    let run_dir = args
        .run_dir
        .or(file.run_dir.clone())
        .unwrap_or_else(|| crate::DEFAULT_RUN_DIR.into());
    let admin_config = args
        .admin_config
        .or(file.admin_config.clone())
        .unwrap_or_else(|| "/etc/deliveryoptimization-agent/admin-config.json".into());
    let ports = parse_ports(
        args.ports
            .or(file.ports.clone())
            .as_deref()
            .unwrap_or("50000-60999"),
    )
    .map_err(anyhow::Error::msg)?;

    let mut node_config = Config::new(cache_dir.clone());
    if let Some(q) = file.cache.quota_bytes {
        node_config.store.quota_bytes = q;
    }
    if let Some(a) = file.cache.max_age_seconds {
        node_config.store.max_age = Duration::from_secs(a);
    }
    if let Some(c) = file.download.origin_connections {
        node_config.engine.origin_connections = c.max(1);
    }
    if let Some(t) = file.download.no_progress_timeout_seconds {
        node_config.engine.no_progress_timeout = Duration::from_secs(t);
    }
    if let Some(r) = file.download.background_yield_rate {
        node_config.background_yield_rate = r;
    }
    if let Some(q) = file.download.min_background_qos {
        node_config.engine.min_background_qos = q;
    }
    let group = group(
        args.group_id.or(file.group.id.clone()),
        args.group_secret_file.or(file.group.secret_file.clone()),
        file.group.secret.clone(),
    )?;
    let mode = match args.download_mode.or(file.download_mode) {
        Some(mode) => mode,
        None if group.is_some() => config::DownloadMode::Group,
        None if args.p2p || file.p2p.unwrap_or(false) => config::DownloadMode::Lan,
        None => config::DownloadMode::HttpOnly,
    };
    if mode == config::DownloadMode::Group && group.is_none() {
        anyhow::bail!("download mode group: needs a group id and secret");
    }
    let mut bootstrap = file.bootstrap.clone().unwrap_or_default();
    bootstrap.extend(args.bootstrap);
    let bootstrap = bootstrap
        .iter()
        .map(|a| {
            a.parse::<libp2p::Multiaddr>()
                .with_context(|| format!("bootstrap peer {a:?}: not a multiaddr"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if mode != config::DownloadMode::HttpOnly {
        let mut p2p = do_driver::P2pConfig::default();
        p2p.layer.group = group.filter(|_| mode == config::DownloadMode::Group);
        p2p.internet = mode == config::DownloadMode::Internet;
        if matches!(
            mode,
            config::DownloadMode::Internet | config::DownloadMode::Group
        ) {
            p2p.bootstrap = bootstrap;
        } else if !bootstrap.is_empty() {
            warn!("bootstrap peers are used in Internet and Group modes only: ignored");
        }
        if let Some(port) = args.p2p_port.or(file.p2p_port) {
            p2p.listen = format!("/ip4/0.0.0.0/tcp/{port}").parse()?;
            p2p.quic_listen = format!("/ip4/0.0.0.0/udp/{port}/quic-v1").parse()?;
        }
        p2p.dial_first = match args.transport.or(file.transport).unwrap_or_default() {
            config::Transport::Tcp => do_driver::Transport::Tcp,
            config::Transport::Quic => do_driver::Transport::Quic,
        };
        p2p.upload_slots = file.upload.slots_in(mode);
        p2p.data_lanes = !args.no_data_lanes && file.data_lanes.unwrap_or(true);
        if let Some(port) = args.data_lane_port.or(file.data_lane_port) {
            p2p.data_lane_listen.set_port(port);
        }
        if let Some(n) = args.poll_peers.or(file.poll_peers) {
            p2p.poll_peers = n;
        }
        if let Some(n) = args.ring_peers.or(file.ring_peers) {
            p2p.ring_peers = n;
        }
        p2p.upload_max_rate = args
            .upload_max_rate
            .or(file.upload.max_rate)
            .filter(|&rate| rate > 0);
        node_config.p2p = Some(p2p);
    }

    let validate = Arc::new(AtomicBool::new(true));
    load_admin_config(&admin_config, &validate);
    let (node, node_task) = Node::start(node_config).context("cannot start the node")?;
    let agent_config = do_agent::Config {
        run_dir,
        ports,
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
                info!("SIGHUP: reloading the admin config (other settings take effect at the next start)");
                load_admin_config(&admin_config, &validate);
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

/// Group mode from the id and the secret (a file's content, or the config's `group.secret`);
/// `None` when no id is given. A secret without an id, or an id without a secret, is an error.
fn group(
    id: Option<String>,
    secret_file: Option<PathBuf>,
    secret: Option<String>,
) -> anyhow::Result<Option<do_driver::Group>> {
    let secret = match (secret_file, secret) {
        (Some(path), _) => {
            let text = std::fs::read(&path)
                .with_context(|| format!("group secret file {}", path.display()))?;
            let end = text.trim_ascii_end().len();
            Some(text[..end].to_vec())
        }
        (None, secret) => secret.map(String::into_bytes),
    };
    match (id, secret) {
        (None, None) => Ok(None),
        (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
            Ok(Some(do_driver::Group::new(&id, &secret)))
        }
        (Some(_), Some(_)) => anyhow::bail!("group: the id and the secret must not be empty"),
        (Some(_), None) => {
            anyhow::bail!("group: an id needs a secret (group.secret or a secret file)")
        }
        (None, Some(_)) => anyhow::bail!("group: a secret needs a group id"),
    }
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
    let (a, b) = s.split_once('-').ok_or("ports: expected FIRST-LAST")?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| "ports: FIRST is not a port")?,
        b.trim().parse().map_err(|_| "ports: LAST is not a port")?,
    );
    if a > b || a == 0 {
        return Err("ports: FIRST must be 1..=LAST".into());
    }
    Ok(a..=b)
}
