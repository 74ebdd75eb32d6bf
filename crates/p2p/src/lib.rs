//! The libp2p layer of donode: a persisted node identity, LAN discovery over mDNS, and the
//! block exchange protocol ([`wire`]) over TCP with noise and yamux.
//!
//! It carries bytes and makes no decision: which blocks to ask of whom is the engine's job,
//! and every block a peer sends is verified against a trusted manifest by the caller before
//! anything uses it. The driver (`do-driver`) uses it for downloads and serving. Not here yet:
//! QUIC, Kademlia provider records, Group mode's pre-shared key (see `docs/p2p-design.md`).
#![warn(missing_docs)]

mod memory;
pub mod wire;

pub use memory::InMemory;

use std::{path::Path, time::Duration};

use libp2p::{Swarm, identity::Keypair, mdns, noise, request_response, tcp, yamux};

/// Layer configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Look for peers on the LAN with mDNS. Default true.
    pub mdns: bool,
    /// How often mDNS asks who is there. Default 5 s: a fleet that boots together finds
    /// itself at once (libp2p's default is 5 minutes).
    pub mdns_query_interval: Duration,
    /// A request without an answer for this long fails. Default 30 s.
    pub request_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mdns: true,
            mdns_query_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

pub use composed::{Behaviour, BehaviourEvent};

// The derive also generates `BehaviourEvent`, whose variants it does not document.
#[allow(missing_docs)]
mod composed {
    use libp2p::{mdns, request_response, swarm::NetworkBehaviour};

    use crate::wire;

    /// The composed behaviour: discovery and block exchange.
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        /// The block exchange protocol.
        pub blocks: request_response::Behaviour<wire::Codec>,
        /// LAN discovery (disabled when the config says so).
        pub mdns: libp2p::swarm::behaviour::toggle::Toggle<mdns::tokio::Behaviour>,
    }
}

/// Why the layer could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The identity file could not be read or written.
    #[error("node identity {path}: {source}")]
    Identity {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The identity file does not hold a key.
    #[error("node identity {0}: not a key")]
    BadIdentity(String),
    /// The transport could not be set up.
    #[error("transport: {0}")]
    Transport(String),
}

/// The node's key, kept in `dir/node.key` (protobuf encoding, mode 0600) so that the node keeps
/// its peer id across restarts; created on first use.
pub fn load_or_create_identity(dir: &Path) -> Result<Keypair, Error> {
    let path = dir.join("node.key");
    let shown = path.display().to_string();
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|_| Error::BadIdentity(shown)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|_| Error::BadIdentity(shown.clone()))?;
            write_private(&path, &bytes).map_err(|source| Error::Identity {
                path: shown,
                source,
            })?;
            Ok(key)
        }
        Err(source) => Err(Error::Identity {
            path: shown,
            source,
        }),
    }
}

/// A peer's rank key: the first 8 bytes of the BLAKE3 hash of its peer id. Every node
/// computes the same key for a peer, so nodes fetching one file agree on who fetches which
/// part from the origin without talking about it.
pub fn rank_key(peer: &libp2p::PeerId) -> u64 {
    let hash = blake3::hash(&peer.to_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// Builds a swarm with this layer's behaviour on the current tokio runtime.
pub fn swarm(key: Keypair, config: &Config) -> Result<Swarm<Behaviour>, Error> {
    let protocol = libp2p::StreamProtocol::new(wire::PROTOCOL);
    let rr_config =
        request_response::Config::default().with_request_timeout(config.request_timeout);
    let mdns_config = mdns::Config {
        query_interval: config.mdns_query_interval,
        ..mdns::Config::default()
    };
    let use_mdns = config.mdns;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_behaviour(|key| {
            let mdns = if use_mdns {
                Some(mdns::tokio::Behaviour::new(
                    mdns_config,
                    key.public().to_peer_id(),
                )?)
            } else {
                None
            };
            Ok(Behaviour {
                blocks: request_response::Behaviour::new(
                    [(protocol, request_response::ProtocolSupport::Full)],
                    rr_config,
                ),
                mdns: mdns.into(),
            })
        })
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_is_stable_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_identity(dir.path()).unwrap();
        let b = load_or_create_identity(dir.path()).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        std::fs::write(dir.path().join("node.key"), b"garbage").unwrap();
        assert!(matches!(
            load_or_create_identity(dir.path()),
            Err(Error::BadIdentity(_))
        ));
    }
}
