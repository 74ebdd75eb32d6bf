//! The libp2p layer of donode: a persisted node identity, LAN discovery over mDNS, and the
//! block exchange protocol ([`wire`]) over TCP with noise and yamux, and over QUIC; in Group
//! mode ([`Group`]), over TCP only, under libp2p's private-network layer keyed by the group's
//! secret.
//!
//! It carries bytes and makes no decision: which blocks to ask of whom is the engine's job,
//! and every block a peer sends is verified against a trusted manifest by the caller before
//! anything uses it. The driver (`do-driver`) uses it for downloads and serving. Not here yet:
//! Kademlia provider records (see `docs/p2p-design.md`).
#![warn(missing_docs)]

mod memory;
pub mod wire;

pub use memory::InMemory;

use std::{fmt, path::Path, time::Duration};

use libp2p::{
    Swarm, Transport as _,
    core::upgrade::Version,
    identity::Keypair,
    mdns, noise,
    pnet::{PnetConfig, PreSharedKey},
    request_response, tcp, yamux,
};

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
    /// Group mode: only the group's members can connect. Default `None` (LAN mode).
    pub group: Option<Group>,
    /// Carry QUIC besides TCP (outside Group mode: the private-network layer is TCP only).
    /// Default true.
    pub quic: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mdns: true,
            mdns_query_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            group: None,
            quic: true,
        }
    }
}

/// A group of nodes (DO's Group download mode): a group id and the secret its members share.
///
/// Every connection runs under libp2p's private-network layer (`pnet`, XSalsa20 with a
/// pre-shared key) keyed by both, below noise: a node without the id and the secret cannot
/// complete a handshake, so it can neither ask a member for anything nor be asked. TCP only;
/// the private-network layer does not combine with QUIC.
#[derive(Clone)]
pub struct Group {
    id: String,
    key: PreSharedKey,
}

impl Group {
    /// The group `id` whose members share `secret`. The pre-shared key is derived from both,
    /// so two groups with the same secret stay apart.
    pub fn new(id: &str, secret: &[u8]) -> Self {
        let mut key = blake3::Hasher::new_derive_key("donode group pre-shared key v1");
        key.update(&(id.len() as u64).to_le_bytes());
        key.update(id.as_bytes());
        key.update(secret);
        Self {
            id: id.to_owned(),
            key: PreSharedKey::new(*key.finalize().as_bytes()),
        }
    }

    /// The group id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The fingerprint of the group's key (as go-libp2p prints one): equal on two nodes when
    /// their ids and secrets are, and it reveals neither.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint().to_string()
    }
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("id", &self.id)
            .field("fingerprint", &self.fingerprint())
            .finish()
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
    let builder = libp2p::SwarmBuilder::with_existing_identity(key).with_tokio();
    let tcp_config = tcp::Config::default().nodelay(true);
    // Idle connections stay up: a fleet between downloads keeps its mesh, so that a flash crowd
    // finds its peers at once (the driver drops peers that mDNS no longer sees).
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::MAX);
    let swarm = match &config.group {
        None if config.quic => builder
            .with_tcp(tcp_config, noise::Config::new, yamux::Config::default)
            .map_err(transport_error)?
            .with_quic()
            .with_behaviour(|key| behaviour(key, config))
            .map_err(transport_error)?
            .with_swarm_config(idle)
            .build(),
        None => builder
            .with_tcp(tcp_config, noise::Config::new, yamux::Config::default)
            .map_err(transport_error)?
            .with_behaviour(|key| behaviour(key, config))
            .map_err(transport_error)?
            .with_swarm_config(idle)
            .build(),
        Some(group) => {
            let psk = group.key;
            builder
                .with_other_transport(|key| {
                    let noise = noise::Config::new(key)?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                        tcp::tokio::Transport::new(tcp_config)
                            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                            .upgrade(Version::V1Lazy)
                            .authenticate(noise)
                            .multiplex(yamux::Config::default()),
                    )
                })
                .map_err(transport_error)?
                .with_behaviour(|key| behaviour(key, config))
                .map_err(transport_error)?
                .with_swarm_config(idle)
                .build()
        }
    };
    Ok(swarm)
}

fn behaviour(
    key: &Keypair,
    config: &Config,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let protocol = libp2p::StreamProtocol::new(wire::PROTOCOL);
    let rr_config =
        request_response::Config::default().with_request_timeout(config.request_timeout);
    let mdns = if config.mdns {
        let mdns_config = mdns::Config {
            query_interval: config.mdns_query_interval,
            ..mdns::Config::default()
        };
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
}

fn transport_error(e: impl fmt::Display) -> Error {
    Error::Transport(e.to_string())
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
