//! Two real libp2p nodes on loopback (TCP, noise, yamux) exchange a manifest and blocks; the
//! asker verifies the manifest against the content id and every block against the manifest,
//! and catches a peer that sends a changed byte.

mod common;

use std::time::Duration;

use common::node;
use do_content::{BLOCK_SIZE, BlockIndex, ContentId, Manifest, block_range};
use do_p2p::{
    BehaviourEvent,
    wire::{Request, Response},
};
use futures::StreamExt;
use libp2p::{Multiaddr, request_response, swarm::SwarmEvent};

/// Serves `data` from a node; a `corrupt` node flips one byte of every block it sends.
async fn serve(data: Vec<u8>, corrupt: bool) -> (libp2p::PeerId, Multiaddr) {
    let mut swarm = node(None);
    let addr = common::listen(&mut swarm).await;
    let peer = *swarm.local_peer_id();
    let file = do_p2p::InMemory::new(data);
    tokio::spawn(async move { file.serve(&mut swarm, corrupt).await });
    (peer, addr)
}

/// Asks `peer` for everything and returns (manifest verified?, blocks that verified, failed).
async fn fetch(
    peer: libp2p::PeerId,
    addr: Multiaddr,
    content: ContentId,
    blocks: u64,
) -> (bool, u64, u64) {
    let mut swarm = node(None);
    swarm.dial(addr).unwrap();
    // Ask once connected (the protocol does not know the address to dial by itself).
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), swarm.select_next_some())
            .await
            .expect("a connection");
        if matches!(event, SwarmEvent::ConnectionEstablished { .. }) {
            break;
        }
    }
    let id = content.as_bytes();
    swarm
        .behaviour_mut()
        .blocks
        .send_request(&peer, Request::Manifest { content: *id });
    let mut manifest = None;
    let (mut good, mut bad, mut answered) = (0, 0, 0);
    let total_requests = blocks.div_ceil(16);
    while answered < total_requests || manifest.is_none() {
        let event = tokio::time::timeout(Duration::from_secs(10), swarm.select_next_some())
            .await
            .expect("an answer");
        let SwarmEvent::Behaviour(BehaviourEvent::Blocks(request_response::Event::Message {
            message: request_response::Message::Response { response, .. },
            ..
        })) = event
        else {
            continue;
        };
        match response {
            Response::Manifest(bytes) => {
                let m = Manifest::decode(&bytes).unwrap();
                // Trust the manifest only if its root is the content id we asked for.
                assert_eq!(m.root(), content);
                for first in (0..blocks).step_by(16) {
                    let count = (blocks - first).min(16) as u32;
                    swarm.behaviour_mut().blocks.send_request(
                        &peer,
                        Request::Blocks {
                            content: *id,
                            first,
                            count,
                        },
                    );
                }
                manifest = Some(m);
            }
            Response::Blocks { first, data } => {
                answered += 1;
                let m = manifest.as_ref().expect("blocks after the manifest");
                let mut at = 0usize;
                for b in first..(first + 16).min(blocks) {
                    let r = block_range(m.len(), BlockIndex(b));
                    let bytes = &data[at..at + r.len() as usize];
                    at += r.len() as usize;
                    if m.verify_block(BlockIndex(b), bytes).is_ok() {
                        good += 1
                    } else {
                        bad += 1
                    }
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    (manifest.is_some(), good, bad)
}

fn sample(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()[0])
        .collect()
}

#[tokio::test]
async fn blocks_travel_between_two_nodes_and_verify() {
    let data = sample(40 * BLOCK_SIZE as usize + 123);
    let content = ContentId::of(&data);
    let (peer, addr) = serve(data, false).await;
    let (manifest, good, bad) = fetch(peer, addr, content, 41).await;
    assert!(manifest);
    assert_eq!((good, bad), (41, 0));
}

#[tokio::test]
async fn a_peer_that_changes_bytes_is_caught_block_by_block() {
    let data = sample(20 * BLOCK_SIZE as usize);
    let content = ContentId::of(&data);
    let (peer, addr) = serve(data, true).await;
    let (_, good, bad) = fetch(peer, addr, content, 20).await;
    // Each answer has its first block changed: those fail, the others pass.
    assert_eq!((good, bad), (18, 2));
}
