//! `do-p2p-probe`: one file over donode's p2p layer, for tests across network namespaces.
//!
//! - `serve FILE`: announces itself on the LAN (mDNS) and answers manifest, have and block
//!   requests for FILE.
//! - `fetch CONTENT_ID OUT`: finds a peer on the LAN, takes the manifest only if its root is
//!   CONTENT_ID, fetches every block, verifies each against the manifest and writes OUT; prints
//!   a JSON summary. Exit code 0 only when OUT is complete and verified.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use do_content::{BlockIndex, ContentId, Manifest, block_range};
use do_p2p::{
    BehaviourEvent, Config, InMemory,
    wire::{MAX_BLOCKS_PER_REQUEST, Request, Response},
};
use futures::StreamExt;
use libp2p::{identity::Keypair, mdns, request_response, swarm::SwarmEvent};

/// Serve or fetch one file over the p2p layer.
#[derive(Parser)]
enum Probe {
    /// Serve FILE to peers.
    Serve {
        /// The file.
        file: PathBuf,
        /// Lie: flip the first byte of every block sent (a corrupt peer, for tests).
        #[arg(long)]
        corrupt: bool,
    },
    /// Fetch the file with this content id from a LAN peer into OUT.
    Fetch {
        /// The content id (64 hex digits).
        content: ContentId,
        /// Where to write it.
        out: PathBuf,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 20)]
        timeout: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Probe::parse() {
        Probe::Serve { file, corrupt } => serve(file, corrupt).await,
        Probe::Fetch {
            content,
            out,
            timeout,
        } => tokio::time::timeout(Duration::from_secs(timeout), fetch(content, out))
            .await
            .context("timed out")?,
    }
}

async fn serve(file: PathBuf, corrupt: bool) -> anyhow::Result<()> {
    let data = std::fs::read(&file).with_context(|| file.display().to_string())?;
    let file = InMemory::new(data);
    let mut swarm = do_p2p::swarm(Keypair::generate_ed25519(), &Config::default())?;
    swarm.listen_on("/ip4/0.0.0.0/tcp/0".parse()?)?;
    let serving = file.manifest().root().to_string();
    println!(
        "{}",
        serde_json::json!({ "serving": serving, "peer": swarm.local_peer_id().to_string() })
    );
    file.serve(&mut swarm, corrupt).await;
    Ok(())
}

async fn fetch(content: ContentId, out: PathBuf) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut swarm = do_p2p::swarm(Keypair::generate_ed25519(), &Config::default())?;
    swarm.listen_on("/ip4/0.0.0.0/tcp/0".parse()?)?;
    let id = *content.as_bytes();
    let mut peer = None;
    let mut manifest: Option<Manifest> = None;
    let mut data = Vec::new();
    let mut pending = 0u64;
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found)))
                if peer.is_none() =>
            {
                if let Some((p, addr)) = found.into_iter().next() {
                    swarm.dial(addr)?;
                    peer = Some(p);
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. }
                if Some(peer_id) == peer && manifest.is_none() =>
            {
                swarm
                    .behaviour_mut()
                    .blocks
                    .send_request(&peer_id, Request::Manifest { content: id });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Blocks(request_response::Event::Message {
                peer: from,
                message: request_response::Message::Response { response, .. },
                ..
            })) => match response {
                Response::Manifest(bytes) => {
                    let m = Manifest::decode(&bytes)?;
                    ensure!(
                        m.root() == content,
                        "the peer's manifest is not for {content}"
                    );
                    let blocks = m.blocks().len() as u64;
                    data = vec![0u8; m.len() as usize];
                    for first in (0..blocks).step_by(MAX_BLOCKS_PER_REQUEST as usize) {
                        let count = (blocks - first).min(u64::from(MAX_BLOCKS_PER_REQUEST)) as u32;
                        swarm.behaviour_mut().blocks.send_request(
                            &from,
                            Request::Blocks {
                                content: id,
                                first,
                                count,
                            },
                        );
                        pending += 1;
                    }
                    manifest = Some(m);
                }
                Response::Blocks { first, data: bytes } => {
                    let m = manifest.as_ref().context("blocks before the manifest")?;
                    let mut at = 0usize;
                    let last =
                        (first + u64::from(MAX_BLOCKS_PER_REQUEST)).min(m.blocks().len() as u64);
                    for b in first..last {
                        let r = block_range(m.len(), BlockIndex(b));
                        let block = bytes
                            .get(at..at + r.len() as usize)
                            .context("short answer")?;
                        m.verify_block(BlockIndex(b), block)?;
                        data[r.start as usize..r.end as usize].copy_from_slice(block);
                        at += r.len() as usize;
                    }
                    pending -= 1;
                    if pending == 0 {
                        break;
                    }
                }
                other => bail!("unexpected answer {other:?}"),
            },
            SwarmEvent::Behaviour(BehaviourEvent::Blocks(
                request_response::Event::OutboundFailure { error, .. },
            )) => {
                bail!("request failed: {error}");
            }
            _ => {}
        }
    }
    std::fs::write(&out, &data).with_context(|| out.display().to_string())?;
    println!(
        "{}",
        serde_json::json!({
            "peer": peer.map(|p| p.to_string()),
            "bytes": data.len(),
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}
