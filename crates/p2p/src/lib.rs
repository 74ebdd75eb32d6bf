//! The libp2p layer of donode: a persisted node identity, LAN discovery over mDNS, discovery
//! beyond the LAN over Kademlia provider records keyed by content id, identify and ping, and
//! the block exchange protocol ([`wire`]) over TCP with noise and yamux, and over QUIC; in
//! Group mode ([`Group`]), over TCP only, under libp2p's private-network layer keyed by the
//! group's secret.
//!
//! It carries bytes and makes no decision: which blocks to ask of whom is the engine's job,
//! and every block a peer sends is verified against a trusted manifest by the caller before
//! anything uses it. The driver (`do-driver`) uses it for downloads and serving.
#![warn(missing_docs)]

pub mod lane;
mod memory;
pub mod wire;

pub use memory::InMemory;

use std::{fmt, path::Path, time::Duration};

use libp2p::{
    Swarm, Transport as _,
    core::upgrade::Version,
    identify,
    identity::Keypair,
    kad, mdns, noise, ping,
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
    /// Run Kademlia (in server mode, over donode's own protocol name, so that donode nodes
    /// form a DHT of their own) to find the holders of a file beyond the LAN. Default false.
    pub kademlia: bool,
}

/// The Kademlia protocol name: donode's DHT, apart from any other libp2p DHT.
pub const KAD_PROTOCOL: &str = "/donode/kad/1.0.0";
/// How long a provider record lives where it is stored (libp2p's default is 48 h: a node that
/// left would be named for two days).
pub const PROVIDER_RECORD_TTL: Duration = Duration::from_secs(60 * 60);
/// How often a node announces again what it provides (libp2p's default is 12 h; three times
/// per record lifetime keeps a live provider findable through the loss of a record holder).
pub const PROVIDER_REPUBLISH: Duration = Duration::from_secs(20 * 60);
/// The identify protocol version donode nodes send.
pub const IDENTIFY_PROTOCOL: &str = "/donode/id/1.0.0";

/// The Kademlia key of a file: its content id (32 bytes). One record per file, not per block.
pub fn provider_key(content: &[u8; 32]) -> kad::RecordKey {
    kad::RecordKey::new(content)
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mdns: true,
            mdns_query_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            group: None,
            quic: true,
            kademlia: false,
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
    use libp2p::{
        identify, kad, mdns, ping, request_response,
        swarm::{NetworkBehaviour, behaviour::toggle::Toggle},
    };

    use crate::wire;

    /// The composed behaviour: discovery and block exchange.
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        /// The block exchange protocol.
        pub blocks: request_response::Behaviour<wire::Codec>,
        /// LAN discovery (disabled when the config says so).
        pub mdns: Toggle<mdns::tokio::Behaviour>,
        /// Discovery beyond the LAN (when the config says so).
        pub kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
        /// Tells each peer the addresses this node listens on (Kademlia learns peers'
        /// addresses from it).
        pub identify: identify::Behaviour,
        /// Round-trip times, and a dead connection noticed.
        pub ping: ping::Behaviour,
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
    let me = key.public().to_peer_id();
    let kad = config.kademlia.then(|| {
        let mut kad_config = kad::Config::new(libp2p::StreamProtocol::new(KAD_PROTOCOL));
        kad_config
            .set_provider_record_ttl(Some(PROVIDER_RECORD_TTL))
            .set_provider_publication_interval(Some(PROVIDER_REPUBLISH))
            .set_query_timeout(Duration::from_secs(20));
        let mut kad = kad::Behaviour::with_config(me, kad::store::MemoryStore::new(me), kad_config);
        // A node serves the DHT whether or not it knows an external address (libp2p would
        // keep a node without one a client, and a LAN or a lab has none).
        kad.set_mode(Some(kad::Mode::Server));
        kad
    });
    Ok(Behaviour {
        blocks: request_response::Behaviour::new(
            wire::protocols().map(|p| (p, request_response::ProtocolSupport::Full)),
            rr_config,
        ),
        mdns: mdns.into(),
        kad: kad.into(),
        identify: identify::Behaviour::new(identify::Config::new(
            IDENTIFY_PROTOCOL.to_owned(),
            key.public(),
        )),
        ping: ping::Behaviour::default(),
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
    use futures::StreamExt;
    use libp2p::{Multiaddr, swarm::SwarmEvent};

    use super::*;

    /// A swarm on loopback with Kademlia and without mDNS, and the address it listens on.
    async fn dht_node() -> (Swarm<Behaviour>, Multiaddr) {
        let config = Config {
            mdns: false,
            quic: false,
            kademlia: true,
            ..Config::default()
        };
        let mut swarm = swarm(Keypair::generate_ed25519(), &config).unwrap();
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                return (swarm, address);
            }
        }
    }

    fn kad(swarm: &mut Swarm<Behaviour>) -> &mut kad::Behaviour<kad::store::MemoryStore> {
        swarm.behaviour_mut().kad.as_mut().expect("Kademlia on")
    }

    #[tokio::test]
    async fn a_provider_record_names_its_holder_to_a_node_two_hops_away() {
        let (mut holder, holder_addr) = dht_node().await;
        let (mut middle, middle_addr) = dht_node().await;
        let (mut asker, _) = dht_node().await;
        let (h, m) = (*holder.local_peer_id(), *middle.local_peer_id());
        // The middle node knows the holder; the asker knows only the middle node.
        kad(&mut middle).add_address(&h, holder_addr);
        kad(&mut holder).add_address(&m, middle_addr.clone());
        kad(&mut asker).add_address(&m, middle_addr);
        let key = provider_key(&[7; 32]);
        kad(&mut holder).start_providing(key.clone()).unwrap();
        let mut asked = false;
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                tokio::select! {
                    event = holder.select_next_some() => {
                        if let SwarmEvent::Behaviour(BehaviourEvent::Kad(
                            kad::Event::OutboundQueryProgressed {
                                result: kad::QueryResult::StartProviding(done), ..
                            },
                        )) = event
                        {
                            assert!(done.is_ok(), "announced: {done:?}");
                            kad(&mut asker).get_providers(key.clone());
                            asked = true;
                        }
                    }
                    _ = middle.select_next_some() => {}
                    event = asker.select_next_some() => {
                        if let SwarmEvent::Behaviour(BehaviourEvent::Kad(
                            kad::Event::OutboundQueryProgressed {
                                result: kad::QueryResult::GetProviders(Ok(
                                    kad::GetProvidersOk::FoundProviders { providers, .. },
                                )),
                                ..
                            },
                        )) = event
                        {
                            return providers;
                        }
                    }
                }
            }
        })
        .await
        .expect("the asker found the holder");
        assert!(asked);
        assert!(found.contains(&h), "{found:?}");
    }

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
