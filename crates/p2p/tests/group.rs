//! Group mode on loopback: members of a group connect; a node with the wrong secret, another
//! group id, or no group at all cannot complete a handshake with them.

mod common;

use std::time::Duration;

use common::node;
use do_p2p::{Behaviour, Group};
use futures::StreamExt;
use libp2p::{Multiaddr, swarm::SwarmEvent};

/// A group member listening on loopback; it counts the connections it accepted.
async fn member() -> (Multiaddr, tokio::sync::watch::Receiver<u32>) {
    let mut swarm = node(Some(Group::new("lab", b"right secret")));
    let addr = common::listen(&mut swarm).await;
    let (tx, rx) = tokio::sync::watch::channel(0);
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::ConnectionEstablished { .. } = swarm.select_next_some().await {
                tx.send_modify(|n| *n += 1);
            }
        }
    });
    (addr, rx)
}

/// Dials `addr`; the swarm when a connection is established (kept, so that the connection
/// stays up), `None` when the dial fails.
async fn connect(group: Option<Group>, addr: Multiaddr) -> Option<libp2p::Swarm<Behaviour>> {
    let mut swarm = node(group);
    swarm.dial(addr).unwrap();
    loop {
        // Past the swarm's 10 s connection timeout, which ends a stalled handshake.
        let event = tokio::time::timeout(Duration::from_secs(30), swarm.select_next_some())
            .await
            .expect("the dial ends one way or the other");
        match event {
            SwarmEvent::ConnectionEstablished { .. } => return Some(swarm),
            SwarmEvent::OutgoingConnectionError { .. } => return None,
            _ => {}
        }
    }
}

#[tokio::test]
async fn only_the_groups_members_complete_a_handshake() {
    let (addr, accepted) = member().await;
    let outsiders = [
        Some(Group::new("lab", b"wrong secret")),
        Some(Group::new("other lab", b"right secret")),
        None,
    ];
    // At once: a handshake under the wrong key may stall until the connection timeout.
    let shown: Vec<String> = outsiders.iter().map(|o| format!("{o:?}")).collect();
    let dials = outsiders.map(|o| connect(o, addr.clone()));
    for (outsider, connected) in shown.iter().zip(futures::future::join_all(dials).await) {
        assert!(connected.is_none(), "{outsider} connected");
    }
    assert_eq!(*accepted.borrow(), 0, "the member accepted no outsider");
    let mut peer = connect(Some(Group::new("lab", b"right secret")), addr)
        .await
        .expect("a member connects");
    // Drive the member's side of the connection until the other end has it too.
    let mut accepted = accepted;
    tokio::time::timeout(Duration::from_secs(10), async {
        while *accepted.borrow_and_update() == 0 {
            tokio::select! {
                _ = peer.select_next_some() => {}
                _ = accepted.changed() => {}
            }
        }
    })
    .await
    .expect("the member accepted its peer");
}

#[test]
fn the_key_depends_on_the_id_and_the_secret_and_is_not_shown() {
    let a = Group::new("lab", b"s");
    assert_eq!(a.fingerprint(), Group::new("lab", b"s").fingerprint());
    assert_ne!(a.fingerprint(), Group::new("lab", b"t").fingerprint());
    assert_ne!(a.fingerprint(), Group::new("lab2", b"s").fingerprint());
    // The id's length is part of the key: ("ab", "c") and ("a", "bc") differ.
    assert_ne!(
        Group::new("ab", b"c").fingerprint(),
        Group::new("a", b"bc").fingerprint()
    );
    let shown = format!("{a:?}");
    assert!(
        shown.contains("lab") && shown.contains(&a.fingerprint()),
        "{shown}"
    );
}
