//! The flow-level network: capacitated resources (host uplinks and downlinks, site WAN links,
//! the origin's uplink) and flows across paths of them, with max-min fair rates.
//!
//! When a flow starts or ends, the flows sharing a resource with it are re-allocated by
//! progressive filling (water-filling), against what the other flows on their paths leave
//! free. Flows further away keep their rates until an event of their own touches them, so
//! capacity freed two hops away may sit unused for a while: the model can only be slower than
//! the exact global max-min allocation, never faster, and never over-commits a resource.
//!
//! Time is integer nanoseconds; rates are bytes per second.

use std::{cmp::Reverse, collections::BinaryHeap};

/// A capacitated resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResId(pub u32);

/// A flow (index into the network's flow table; reused after the flow ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowId(pub u32);

/// Longest path of a flow: uplink, site egress, site ingress, downlink.
const MAX_PATH: usize = 4;

struct Flow {
    path: [u32; MAX_PATH],
    len: u8,
    rate: f64,
    /// Bytes left before the flow's next milestone.
    remaining: f64,
    /// When `remaining` was last brought up to date.
    updated: u64,
}

impl Flow {
    fn path(&self) -> &[u32] {
        &self.path[..usize::from(self.len)]
    }
}

/// A flow whose milestone moved: `at` (ns) is when it reaches it at its new rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eta {
    /// The flow.
    pub flow: FlowId,
    /// When it reaches its milestone, ns.
    pub at: u64,
}

/// The network.
#[derive(Default)]
pub struct Net {
    cap: Vec<f64>,
    alloc: Vec<f64>,
    at: Vec<Vec<u32>>,
    flows: Vec<Option<Flow>>,
    free: Vec<u32>,
    // Scratch space for a re-allocation, indexed by resource or flow, valid where the stamp
    // equals `epoch`.
    epoch: u32,
    res_stamp: Vec<u32>,
    avail: Vec<f64>,
    base: Vec<f64>,
    count: Vec<u32>,
    flow_stamp: Vec<u32>,
    frozen: Vec<bool>,
    touched_res: Vec<u32>,
    dirty: Vec<u32>,
    /// Scratch space for progressive filling, kept between re-allocations (one is made at
    /// every flow start and end: allocating afresh each time cost as much as the filling).
    heap: BinaryHeap<Reverse<(Share, u32)>>,
    members: Vec<u32>,
    active: usize,
}

/// An `f64` ordered totally (shares are never NaN).
#[derive(PartialEq)]
struct Share(f64);

impl Eq for Share {}

impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Share {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl Net {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a resource of `capacity` bytes/s (`f64::INFINITY`: unlimited).
    pub fn add_resource(&mut self, capacity: f64) -> ResId {
        self.cap.push(capacity);
        self.alloc.push(0.0);
        self.at.push(Vec::new());
        self.res_stamp.push(0);
        self.avail.push(0.0);
        self.base.push(0.0);
        self.count.push(0);
        ResId(u32::try_from(self.cap.len() - 1).expect("fewer than 2^32 resources"))
    }

    /// Flows in progress.
    pub fn active(&self) -> usize {
        self.active
    }

    /// A flow's current rate, bytes/s.
    pub fn rate(&self, flow: FlowId) -> f64 {
        self.flow(flow).rate
    }

    /// Starts a flow across `path` (at least one finite resource) with its first milestone
    /// `bytes` away; the flows whose milestone times changed, this one included, go to `out`.
    pub fn start(&mut self, now: u64, path: &[ResId], bytes: f64, out: &mut Vec<Eta>) -> FlowId {
        assert!(
            !path.is_empty() && path.len() <= MAX_PATH,
            "a path has 1 to 4 links"
        );
        assert!(
            path.iter().any(|r| self.cap[r.0 as usize].is_finite()),
            "a path needs a finite link"
        );
        let mut p = [0u32; MAX_PATH];
        for (slot, r) in p.iter_mut().zip(path) {
            *slot = r.0;
        }
        let flow = Flow {
            path: p,
            len: path.len() as u8,
            rate: 0.0,
            remaining: bytes,
            updated: now,
        };
        let index = match self.free.pop() {
            Some(i) => {
                self.flows[i as usize] = Some(flow);
                i
            }
            None => {
                self.flows.push(Some(flow));
                self.flow_stamp.push(0);
                self.frozen.push(false);
                u32::try_from(self.flows.len() - 1).expect("fewer than 2^32 flows")
            }
        };
        for r in path {
            self.at[r.0 as usize].push(index);
        }
        self.active += 1;
        self.reallocate(now, &p[..path.len()], out);
        FlowId(index)
    }

    /// Ends a flow (finished or cancelled); the flows whose milestone times changed go to
    /// `out`.
    pub fn remove(&mut self, now: u64, flow: FlowId, out: &mut Vec<Eta>) {
        let f = self.flows[flow.0 as usize].take().expect("live flow");
        let path = f.path;
        for &r in f.path() {
            let list = &mut self.at[r as usize];
            let pos = list.iter().position(|&x| x == flow.0).expect("listed");
            list.swap_remove(pos);
            self.alloc[r as usize] = (self.alloc[r as usize] - f.rate).max(0.0);
        }
        self.free.push(flow.0);
        self.active -= 1;
        self.reallocate(now, &path[..usize::from(f.len)], out);
    }

    /// The flow reached its milestone at `now`; its next one is `bytes` further (same rate).
    pub fn next_milestone(&mut self, now: u64, flow: FlowId, bytes: f64) -> Eta {
        let f = self.flows[flow.0 as usize].as_mut().expect("live flow");
        f.remaining = bytes;
        f.updated = now;
        Eta {
            flow,
            at: eta(now, f.remaining, f.rate),
        }
    }

    /// Bytes the flow still has to carry before its milestone, brought up to `now`.
    pub fn remaining(&self, now: u64, flow: FlowId) -> f64 {
        let f = self.flow(flow);
        (f.remaining - f.rate * (now - f.updated) as f64 * 1e-9).max(0.0)
    }

    /// When the flow reaches its milestone at its current rate, ns (`u64::MAX` at rate 0).
    pub fn eta(&self, now: u64, flow: FlowId) -> u64 {
        eta(now, self.remaining(now, flow), self.flow(flow).rate)
    }

    fn flow(&self, flow: FlowId) -> &Flow {
        self.flows[flow.0 as usize].as_ref().expect("live flow")
    }

    /// Re-allocates the flows on `resources` by progressive filling, within what the other
    /// flows on their paths leave free.
    fn reallocate(&mut self, now: u64, resources: &[u32], out: &mut Vec<Eta>) {
        self.epoch = self.epoch.wrapping_add(1);
        let epoch = self.epoch;
        self.dirty.clear();
        self.touched_res.clear();
        for &r in resources {
            for &fi in &self.at[r as usize] {
                if self.flow_stamp[fi as usize] != epoch {
                    self.flow_stamp[fi as usize] = epoch;
                    self.frozen[fi as usize] = false;
                    self.dirty.push(fi);
                }
            }
        }
        if self.dirty.is_empty() {
            return;
        }
        // Bring the dirty flows up to date and take their rates out of their links.
        for &fi in &self.dirty {
            let f = self.flows[fi as usize].as_mut().expect("live");
            f.remaining = (f.remaining - f.rate * (now - f.updated) as f64 * 1e-9).max(0.0);
            f.updated = now;
            for &r in f.path() {
                let r = r as usize;
                if self.res_stamp[r] != epoch {
                    self.res_stamp[r] = epoch;
                    self.base[r] = self.alloc[r];
                    self.count[r] = 0;
                    self.touched_res.push(r as u32);
                }
                self.base[r] -= f.rate;
                self.count[r] += 1;
            }
        }
        let mut heap = std::mem::take(&mut self.heap);
        let mut members = std::mem::take(&mut self.members);
        heap.clear();
        for &r in &self.touched_res {
            let r = r as usize;
            self.base[r] = self.base[r].max(0.0);
            self.avail[r] = (self.cap[r] - self.base[r]).max(0.0);
            heap.push(Reverse((
                Share(self.avail[r] / f64::from(self.count[r])),
                r as u32,
            )));
        }
        // Progressive filling: the tightest link fixes the rate of its unfrozen flows.
        let mut left = self.dirty.len();
        while left > 0 {
            let Some(Reverse((Share(share), r))) = heap.pop() else {
                break;
            };
            let r = r as usize;
            let count = self.count[r];
            if count == 0 {
                continue;
            }
            let current = self.avail[r] / f64::from(count);
            if current != share {
                continue; // stale entry; a fresher one is in the heap
            }
            let share = share.max(0.0);
            members.clear();
            members.extend(
                self.at[r].iter().copied().filter(|&fi| {
                    self.flow_stamp[fi as usize] == epoch && !self.frozen[fi as usize]
                }),
            );
            for &fi in &members {
                self.frozen[fi as usize] = true;
                left -= 1;
                let f = self.flows[fi as usize].as_mut().expect("live");
                f.rate = share;
                for &q in f.path() {
                    let q = q as usize;
                    self.avail[q] = (self.avail[q] - share).max(0.0);
                    self.count[q] -= 1;
                    if self.count[q] > 0 && q != r {
                        heap.push(Reverse((
                            Share(self.avail[q] / f64::from(self.count[q])),
                            q as u32,
                        )));
                    }
                }
            }
        }
        self.heap = heap;
        self.members = members;
        for &r in &self.touched_res {
            self.alloc[r as usize] = self.base[r as usize];
        }
        for &fi in &self.dirty {
            let f = self.flows[fi as usize].as_mut().expect("live");
            for &r in f.path() {
                self.alloc[r as usize] += f.rate;
            }
            out.push(Eta {
                flow: FlowId(fi),
                at: eta(now, f.remaining, f.rate),
            });
        }
    }
}

/// When `remaining` bytes at `rate` bytes/s are done, from `now` (ns); `u64::MAX` at rate 0.
fn eta(now: u64, remaining: f64, rate: f64) -> u64 {
    if remaining <= 0.0 {
        return now;
    }
    if rate <= 0.0 || !rate.is_finite() {
        return if rate.is_infinite() { now } else { u64::MAX };
    }
    let ns = (remaining / rate * 1e9).ceil();
    if ns >= (u64::MAX - now) as f64 {
        u64::MAX
    } else {
        now + ns as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: f64 = 1e6;

    #[test]
    fn flows_share_a_link_equally_and_take_it_back_when_one_ends() {
        let mut net = Net::new();
        let up = net.add_resource(10.0 * MB);
        let d1 = net.add_resource(100.0 * MB);
        let d2 = net.add_resource(100.0 * MB);
        let mut out = Vec::new();
        let a = net.start(0, &[up, d1], 10.0 * MB, &mut out);
        assert_eq!(net.rate(a), 10.0 * MB);
        let b = net.start(0, &[up, d2], 10.0 * MB, &mut out);
        assert_eq!(net.rate(a), 5.0 * MB);
        assert_eq!(net.rate(b), 5.0 * MB);
        // Half a second later `a` ends: `b` has 7.5 MB left, at the full 10 MB/s.
        net.remove(500_000_000, a, &mut out);
        assert_eq!(net.rate(b), 10.0 * MB);
        let last = out.last().unwrap();
        assert_eq!(last.flow, b);
        assert_eq!(last.at, 500_000_000 + 750_000_000);
    }

    #[test]
    fn a_flow_limited_elsewhere_leaves_its_share_to_the_others() {
        // Max-min: `slow` is held to 2 MB/s by its downlink; `fast` gets the other 8.
        let mut net = Net::new();
        let up = net.add_resource(10.0 * MB);
        let thin = net.add_resource(2.0 * MB);
        let wide = net.add_resource(100.0 * MB);
        let mut out = Vec::new();
        let slow = net.start(0, &[up, thin], MB, &mut out);
        let fast = net.start(0, &[up, wide], MB, &mut out);
        assert_eq!(net.rate(slow), 2.0 * MB);
        assert_eq!(net.rate(fast), 8.0 * MB);
    }

    #[test]
    fn no_link_is_ever_over_committed() {
        // A chain of shared links, flows started and ended in a fixed pseudo-random order.
        let mut net = Net::new();
        let links: Vec<ResId> = (0..8)
            .map(|i| net.add_resource((1 + i % 3) as f64 * MB))
            .collect();
        let mut live = Vec::new();
        let mut out = Vec::new();
        let mut x = 12345u64;
        for step in 0..2000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let now = step * 1_000_000;
            if live.len() < 3 || !x.is_multiple_of(3) {
                let a = links[(x >> 33) as usize % 8];
                let b = links[(x >> 40) as usize % 8];
                let path = if a == b { vec![a] } else { vec![a, b] };
                live.push((net.start(now, &path, MB, &mut out), path));
            } else {
                let (f, _) = live.swap_remove((x >> 20) as usize % live.len());
                net.remove(now, f, &mut out);
            }
            for &l in &links {
                let used: f64 = live
                    .iter()
                    .filter(|(_, p)| p.contains(&l))
                    .map(|(f, _)| net.rate(*f))
                    .sum();
                assert!(
                    used <= net.cap[l.0 as usize] * (1.0 + 1e-9),
                    "link {l:?} over"
                );
            }
        }
    }
}
