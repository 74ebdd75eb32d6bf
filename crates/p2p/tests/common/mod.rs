//! Loopback nodes for the integration tests.

use do_p2p::{Behaviour, Config, Group};
use futures::StreamExt;
use libp2p::{Multiaddr, Swarm, identity::Keypair, swarm::SwarmEvent};

/// A node without mDNS (it skips loopback anyway; peers are dialled by address), in `group`
/// if given.
pub(crate) fn node(group: Option<Group>) -> Swarm<Behaviour> {
    let config = Config {
        mdns: false,
        group,
        ..Config::default()
    };
    do_p2p::swarm(Keypair::generate_ed25519(), &config).unwrap()
}

/// Makes `swarm` listen on a free loopback port; returns its address.
pub(crate) async fn listen(swarm: &mut Swarm<Behaviour>) -> Multiaddr {
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            return address;
        }
    }
}
