//! When to dial the peers that mDNS, the bootstrap list or the DHT name. Of two nodes that find
//! each other, the one with the lower peer id dials at once and the other only if no connection
//! came within a grace period: two simultaneous TCP dials between the same nodes both fail. A failed dial is retried with a
//! growing delay, and a lost connection is dialed again, for as long as mDNS sees the peer (a
//! bootstrap peer or a holder the DHT named: for the node's lifetime). A node that prefers a
//! transport (QUIC) waits a moment for a peer's address of it: an mDNS answer tells the listen
//! addresses its sender knew when it sent it, and a node that just started may not know its
//! QUIC one yet.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use libp2p::{Multiaddr, PeerId};

use crate::Transport;

/// How long the node with the higher peer id waits for the other's dial.
const GRACE: Duration = Duration::from_secs(2);
/// The first retry delay after a failed dial; it doubles per failure.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest retry delay.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long a peer found without an address of the preferred transport waits for one before
/// it is dialed over what it has.
const PREFERRED_WAIT: Duration = Duration::from_secs(1);

/// The peers found on the LAN and when each is next dialed.
pub(crate) struct Dialer {
    me: PeerId,
    /// The transport waited for (see [`PREFERRED_WAIT`]); `None`: dial whatever is known.
    prefer: Option<Transport>,
    found: HashMap<PeerId, Found>,
}

struct Found {
    addrs: Vec<Multiaddr>,
    /// When the peer was first found.
    found_at: Instant,
    /// `None` while connected or being dialed.
    due: Option<Instant>,
    retry: Duration,
}

impl Dialer {
    /// A dialer for node `me` that waits for addresses of `prefer` (see [`PREFERRED_WAIT`]).
    pub(crate) fn new(me: PeerId, prefer: Option<Transport>) -> Self {
        Self {
            me,
            prefer,
            found: HashMap::new(),
        }
    }

    /// mDNS found `peer` at `addrs`; `connected` when a connection to it is up already.
    pub(crate) fn found(
        &mut self,
        now: Instant,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        connected: bool,
    ) {
        let first = self.first_dial(now, peer);
        let entry = self.found.entry(peer).or_insert_with(|| Found {
            addrs: Vec::new(),
            found_at: now,
            due: (!connected).then_some(first),
            retry: FIRST_RETRY,
        });
        for addr in addrs {
            if !entry.addrs.contains(&addr) {
                entry.addrs.push(addr);
            }
        }
    }

    /// mDNS no longer sees `peer`: it is not dialed again.
    pub(crate) fn expired(&mut self, peer: &PeerId) {
        self.found.remove(peer);
    }

    /// A connection to `peer` is up.
    pub(crate) fn connected(&mut self, peer: &PeerId) {
        if let Some(f) = self.found.get_mut(peer) {
            f.due = None;
            f.retry = FIRST_RETRY;
        }
    }

    /// The last connection to `peer` closed: dial it again, as when first found.
    pub(crate) fn disconnected(&mut self, now: Instant, peer: &PeerId) {
        let first = self.first_dial(now, *peer);
        if let Some(f) = self.found.get_mut(peer) {
            f.due = Some(first);
        }
    }

    /// A dial to `peer` failed: try again later.
    pub(crate) fn failed(&mut self, now: Instant, peer: &PeerId) {
        if let Some(f) = self.found.get_mut(peer) {
            f.due = Some(now + f.retry);
            f.retry = (f.retry * 2).min(MAX_RETRY);
        }
    }

    /// The peers to dial now, with their addresses; each is then not due again until its
    /// dial ends ([`Dialer::connected`] or [`Dialer::failed`]).
    pub(crate) fn due(&mut self, now: Instant) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let mut dials = Vec::new();
        for (peer, f) in &mut self.found {
            let addressed = self
                .prefer
                .is_none_or(|t| f.addrs.iter().any(|a| Transport::of(a) == t))
                || now >= f.found_at + PREFERRED_WAIT;
            if addressed && f.due.is_some_and(|t| t <= now) {
                f.due = None;
                dials.push((*peer, f.addrs.clone()));
            }
        }
        dials
    }

    fn first_dial(&self, now: Instant, peer: PeerId) -> Instant {
        if self.me < peer { now } else { now + GRACE }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (PeerId, PeerId) {
        let (a, b) = (PeerId::random(), PeerId::random());
        if a < b { (a, b) } else { (b, a) }
    }

    fn addr() -> Vec<Multiaddr> {
        vec!["/ip4/10.0.0.2/tcp/4000".parse().unwrap()]
    }

    #[test]
    fn the_lower_id_dials_at_once_and_the_higher_after_the_grace() {
        let (low, high) = pair();
        let now = Instant::now();
        let mut at_low = Dialer::new(low, None);
        at_low.found(now, high, addr(), false);
        assert_eq!(at_low.due(now).len(), 1);
        assert!(at_low.due(now).is_empty(), "one dial at a time");
        let mut at_high = Dialer::new(high, None);
        at_high.found(now, low, addr(), false);
        assert!(at_high.due(now).is_empty());
        assert_eq!(at_high.due(now + GRACE).len(), 1);
    }

    #[test]
    fn failed_dials_back_off_and_lost_connections_are_dialed_again() {
        let (low, high) = pair();
        let now = Instant::now();
        let mut d = Dialer::new(low, None);
        d.found(now, high, addr(), false);
        assert_eq!(d.due(now).len(), 1);
        d.failed(now, &high);
        assert!(d.due(now).is_empty());
        assert_eq!(d.due(now + FIRST_RETRY).len(), 1);
        d.failed(now, &high);
        assert!(d.due(now + FIRST_RETRY).is_empty(), "the delay doubled");
        assert_eq!(d.due(now + 2 * FIRST_RETRY).len(), 1);
        d.connected(&high);
        assert!(
            d.due(now + MAX_RETRY).is_empty(),
            "connected: nothing to dial"
        );
        d.disconnected(now, &high);
        assert_eq!(d.due(now).len(), 1);
        d.expired(&high);
        d.failed(now, &high);
        assert!(
            d.due(now + MAX_RETRY).is_empty(),
            "gone from mDNS: never again"
        );
    }

    #[test]
    fn a_peer_without_an_address_of_the_preferred_transport_is_dialed_once_it_has_one() {
        let (low, high) = pair();
        let now = Instant::now();
        let quic: Multiaddr = "/ip4/10.0.0.2/udp/4000/quic-v1".parse().unwrap();
        let mut d = Dialer::new(low, Some(Transport::Quic));
        d.found(now, high, addr(), false);
        assert!(d.due(now).is_empty(), "no QUIC address yet: it waits");
        d.found(now + PREFERRED_WAIT / 2, high, vec![quic.clone()], false);
        let dials = d.due(now + PREFERRED_WAIT / 2);
        assert_eq!(dials.len(), 1);
        assert!(dials[0].1.contains(&quic));
        // A peer that never tells one is dialed over what it has, after the wait.
        let (low, high) = pair();
        let mut d = Dialer::new(low, Some(Transport::Quic));
        d.found(now, high, addr(), false);
        assert!(d.due(now + PREFERRED_WAIT / 2).is_empty());
        assert_eq!(d.due(now + PREFERRED_WAIT).len(), 1);
        // Without a preference, at once.
        let mut d = Dialer::new(low, None);
        d.found(now, high, addr(), false);
        assert_eq!(d.due(now).len(), 1);
    }

    #[test]
    fn a_peer_found_while_connected_is_not_dialed() {
        let (low, high) = pair();
        let now = Instant::now();
        let mut d = Dialer::new(low, None);
        d.found(now, high, addr(), true);
        assert!(d.due(now + MAX_RETRY).is_empty());
    }
}
