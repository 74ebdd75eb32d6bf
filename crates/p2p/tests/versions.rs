//! A node of the block protocol's first version (`/donode/blocks/1`, up to 16 blocks per
//! request) and a current one on loopback: each fetches from the other, and a request larger
//! than the first version takes fails at the asker without reaching the old node.

mod common;

use std::time::Duration;

use do_content::{BLOCK_SIZE, BlockIndex, ContentId, Manifest, block_range};
use do_p2p::{
    BehaviourEvent, InMemory,
    wire::{Codec, MAX_BLOCKS_PER_REQUEST_V1, PROTOCOL_V1, Request, Response},
};
use futures::StreamExt;
use libp2p::{
    Multiaddr, StreamProtocol, Swarm, noise, request_response, swarm::SwarmEvent, tcp, yamux,
};

type OldBehaviour = request_response::Behaviour<Codec>;

/// A node that speaks only the first version of the block protocol.
fn old_node() -> Swarm<OldBehaviour> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::new(
                [(
                    StreamProtocol::new(PROTOCOL_V1),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default(),
            )
        })
        .unwrap()
        .build()
}

async fn next<B: libp2p::swarm::NetworkBehaviour>(swarm: &mut Swarm<B>) -> SwarmEvent<B::ToSwarm> {
    tokio::time::timeout(Duration::from_secs(10), swarm.select_next_some())
        .await
        .expect("an event within 10 s")
}

/// Dials `addr` and waits for the connection (requests name a peer, not an address).
async fn connect<B: libp2p::swarm::NetworkBehaviour>(swarm: &mut Swarm<B>, addr: Multiaddr) {
    swarm.dial(addr).unwrap();
    while !matches!(next(swarm).await, SwarmEvent::ConnectionEstablished { .. }) {}
}

fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

/// Checks that `data` holds blocks `first ..` of `file`, as many as `count`.
fn verify(file: &[u8], first: u64, count: u64, data: &[u8]) {
    let m = Manifest::from_bytes(file);
    let mut at = 0;
    for b in first..first + count {
        let r = block_range(m.len(), BlockIndex(b));
        let bytes = &data[at..at + r.len() as usize];
        m.verify_block(BlockIndex(b), bytes).unwrap();
        at += r.len() as usize;
    }
    assert_eq!(at, data.len(), "exactly the blocks asked for");
}

#[tokio::test]
async fn a_node_of_the_first_version_fetches_from_a_current_one() {
    let file = sample(20 * BLOCK_SIZE as usize);
    let content = *ContentId::of(&file).as_bytes();
    let mut current = common::node(None);
    let addr = common::listen(&mut current).await;
    let current_id = *current.local_peer_id();
    let served = InMemory::new(file.clone());
    tokio::spawn(async move { served.serve(&mut current, false).await });
    let mut old = old_node();
    connect(&mut old, addr).await;
    let count = MAX_BLOCKS_PER_REQUEST_V1;
    old.behaviour_mut().send_request(
        &current_id,
        Request::Blocks {
            content,
            first: 2,
            count,
        },
    );
    loop {
        match next(&mut old).await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            }) => {
                let Response::Blocks { first, data } = response else {
                    panic!("blocks expected, got {response:?}");
                };
                assert_eq!(first, 2);
                verify(&file, 2, u64::from(count), &data);
                return;
            }
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                panic!("the request failed: {error}")
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_current_node_asks_one_of_the_first_version_no_more_than_it_takes() {
    let file = sample(40 * BLOCK_SIZE as usize);
    let content = *ContentId::of(&file).as_bytes();
    let mut old = old_node();
    old.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = next(&mut old).await {
            break address;
        }
    };
    let old_id = *old.local_peer_id();
    let served = InMemory::new(file.clone());
    let (asked_tx, mut asked_rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            }) = old.select_next_some().await
            {
                let _ = asked_tx.try_send(request.clone());
                let answer = served.answer(&request, false);
                let _ = old.behaviour_mut().send_response(channel, answer);
            }
        }
    });
    let mut current = common::node(None);
    connect(&mut current, addr).await;
    let too_many = current.behaviour_mut().blocks.send_request(
        &old_id,
        Request::Blocks {
            content,
            first: 0,
            count: MAX_BLOCKS_PER_REQUEST_V1 + 1,
        },
    );
    let fits = current.behaviour_mut().blocks.send_request(
        &old_id,
        Request::Blocks {
            content,
            first: 20,
            count: MAX_BLOCKS_PER_REQUEST_V1,
        },
    );
    let (mut failed, mut answered) = (false, false);
    while !(failed && answered) {
        match next(&mut current).await {
            SwarmEvent::Behaviour(BehaviourEvent::Blocks(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            })) => {
                assert_eq!(request_id, fits, "only the request that fits is answered");
                let Response::Blocks { first, data } = response else {
                    panic!("blocks expected, got {response:?}");
                };
                verify(&file, first, u64::from(MAX_BLOCKS_PER_REQUEST_V1), &data);
                answered = true;
            }
            SwarmEvent::Behaviour(BehaviourEvent::Blocks(
                request_response::Event::OutboundFailure { request_id, .. },
            )) => {
                assert_eq!(request_id, too_many, "the request too large fails");
                failed = true;
            }
            _ => {}
        }
    }
    let mut seen = Vec::new();
    while let Ok(r) = asked_rx.try_recv() {
        seen.push(r);
    }
    assert_eq!(
        seen,
        vec![Request::Blocks {
            content,
            first: 20,
            count: MAX_BLOCKS_PER_REQUEST_V1
        }],
        "the old node saw only the request that fits"
    );
}
