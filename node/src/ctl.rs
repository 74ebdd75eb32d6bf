//! Commands that talk to a running daemon through its `/v1` API: `list`, `status`, `pause`,
//! `resume`, `abort`, `finalize`, `prop get|set`, `watch`, `stats`, `peers`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, bail};
use do_api::{Kind, Manager, Property, Status};
use serde_json::{Value as Json, json};

/// Where to find the daemon.
#[derive(clap::Args)]
pub(crate) struct Daemon {
    /// The daemon's run dir (where its `restport.<pid>` file is).
    #[arg(long, value_name = "DIR", default_value = crate::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
}

impl Daemon {
    pub(crate) async fn connect(&self) -> anyhow::Result<Manager> {
        Ok(Manager::connect(&self.run_dir).await?)
    }
}

/// `donode list`.
#[derive(clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    daemon: Daemon,
    /// Only downloads whose CATEGORY (Id, Uri, ContentId, DisplayName, LocalPath) is VALUE.
    #[arg(long, value_name = "CATEGORY=VALUE")]
    filter: Option<String>,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// Node-wide commands (`stats`, `peers`).
#[derive(clap::Args)]
pub(crate) struct NodeArgs {
    #[command(flatten)]
    daemon: Daemon,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// `donode stats`: bytes by source and destination, node-wide, with DO's names.
pub(crate) async fn stats(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let stats = args.daemon.connect().await?.node_stats().await?;
    if args.json {
        println!("{stats}");
        return Ok(ExitCode::SUCCESS);
    }
    const FIELDS: [&str; 10] = [
        "DownloadMode",
        "NumPeers",
        "BytesFromHttp",
        "BytesFromLanPeers",
        "BytesFromGroupPeers",
        "BytesFromInternetPeers",
        "BytesToLanPeers",
        "BytesToGroupPeers",
        "BytesToInternetPeers",
        "PeersBanned",
    ];
    for field in FIELDS {
        let value = match &stats[field] {
            // Without a peer layer the node is HTTP only.
            serde_json::Value::Null if field == "DownloadMode" => "http-only".to_owned(),
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        println!("{field:<24}{value}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `donode peers`: this node's peer id and the peers it is connected to.
pub(crate) async fn peers(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let stats = args.daemon.connect().await?.node_stats().await?;
    if args.json {
        let listed = json!({ "PeerId": stats["PeerId"], "Peers": stats["Peers"] });
        println!("{listed}");
        return Ok(ExitCode::SUCCESS);
    }
    match stats["PeerId"].as_str() {
        Some(me) => println!("this node: {me}"),
        None => println!("this node does not exchange with peers (HTTP only; see `run --p2p`)"),
    }
    for peer in stats["Peers"].as_array().into_iter().flatten() {
        let text = |k: &str| peer[k].as_str().unwrap_or("").to_owned();
        println!("{}  {}  {}", text("PeerId"), text("Address"), text("Class"));
    }
    Ok(ExitCode::SUCCESS)
}

/// Commands on one download.
#[derive(clap::Args)]
pub(crate) struct IdArgs {
    #[command(flatten)]
    daemon: Daemon,
    /// The download's id.
    id: String,
    /// JSON output (read commands).
    #[arg(long)]
    json: bool,
}

/// `donode prop get|set`.
#[derive(clap::Subcommand)]
pub(crate) enum PropCommand {
    /// Print a property (by name or DO id).
    Get {
        #[command(flatten)]
        daemon: Daemon,
        /// The download's id.
        id: String,
        /// The property's name or numeric id.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Set a property (by name or DO id).
    Set {
        #[command(flatten)]
        daemon: Daemon,
        /// The download's id.
        id: String,
        /// The property's name or numeric id.
        name: String,
        /// The value (a string, a number, or true/false, by the property's type).
        value: String,
    },
}

/// The actions without output.
#[derive(Clone, Copy)]
pub(crate) enum Action {
    Pause,
    Resume,
    Abort,
    Finalize,
}

pub(crate) async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let manager = args.daemon.connect().await?;
    let filter = match &args.filter {
        Some(f) => {
            let (k, v) = f.split_once('=').context("--filter takes CATEGORY=VALUE")?;
            let p = Property::parse(k).with_context(|| format!("unknown property {k}"))?;
            Some((p, v))
        }
        None => None,
    };
    let list = manager.enumerate(filter).await?;
    if args.json {
        let items: Vec<Json> = list
            .iter()
            .map(|l| {
                let mut m = l.properties.clone();
                m.insert("Id".into(), Json::from(l.id.clone()));
                Json::Object(m)
            })
            .collect();
        println!("{}", Json::from(items));
    } else {
        for l in list {
            let text = |k: &str| {
                l.properties
                    .get(k)
                    .and_then(Json::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            println!("{}  {}  {}", l.id, text("Uri"), text("LocalPath"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn status(args: IdArgs) -> anyhow::Result<ExitCode> {
    let download = args.daemon.connect().await?.download(&args.id);
    let s = download.status().await?;
    print_status(&s, args.json);
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn act(args: IdArgs, action: Action) -> anyhow::Result<ExitCode> {
    let download = args.daemon.connect().await?.download(&args.id);
    match action {
        Action::Pause => download.pause().await?,
        Action::Resume => download.resume().await?,
        Action::Abort => download.abort().await?,
        Action::Finalize => download.finalize().await?,
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn prop(command: PropCommand) -> anyhow::Result<ExitCode> {
    match command {
        PropCommand::Get {
            daemon,
            id,
            name,
            json,
        } => {
            let p = Property::parse(&name).with_context(|| format!("unknown property {name}"))?;
            let value = daemon.connect().await?.download(&id).property(p).await?;
            if json {
                println!(
                    "{}",
                    json!({ "Property": p.name(), "Id": p.id(), "Value": value })
                );
            } else {
                match value {
                    Json::String(s) => println!("{s}"),
                    other => println!("{other}"),
                }
            }
        }
        PropCommand::Set {
            daemon,
            id,
            name,
            value,
        } => {
            let p = Property::parse(&name).with_context(|| format!("unknown property {name}"))?;
            let value = typed(p, &value)?;
            daemon
                .connect()
                .await?
                .download(&id)
                .set_property(p, value)
                .await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn watch(args: IdArgs) -> anyhow::Result<ExitCode> {
    let download = args.daemon.connect().await?.download(&args.id);
    let mut events = download.events().await?;
    while let Some(s) = events.next().await? {
        print_status(&s, args.json);
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses a command-line value by the property's type.
fn typed(p: Property, value: &str) -> anyhow::Result<Json> {
    Ok(match p.kind() {
        Kind::Str => Json::from(value),
        Kind::U32 | Kind::U64 => Json::from(
            value
                .parse::<u64>()
                .with_context(|| format!("{p} takes a number"))?,
        ),
        Kind::Bool => match value.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Json::from(true),
            "false" | "0" | "no" => Json::from(false),
            _ => bail!("{p} takes true or false"),
        },
        Kind::Bytes => Json::from(
            (0..value.len())
                .step_by(2)
                .map(|i| {
                    value
                        .get(i..i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .with_context(|| format!("{p} takes hex bytes"))?,
        ),
        Kind::Interface => {
            bail!("{p} is an interface pointer; use `donode watch` for status events")
        }
    })
}

fn print_status(s: &Status, json: bool) {
    if json {
        println!("{}", serde_json::to_string(s).expect("status serialises"));
    } else {
        println!(
            "{:?} {}/{} bytes error {:#010x} extended {:#010x}",
            s.state, s.bytes_transferred, s.bytes_total, s.error, s.extended_error
        );
    }
}
