//! The summary of a run: the bound and efficiency, completion percentiles, bytes by source,
//! WAN ingress per site, safety counters, and the simulator's own cost.

use std::fmt;

use serde::Serialize;

use crate::{
    bound::{self, Bound, SiteCaps},
    scenario::{Mode, Scenario},
    sim::Outcome,
};

/// One site's WAN traffic.
#[derive(Debug, Clone, Serialize)]
pub struct SiteSummary {
    /// Name.
    pub name: String,
    /// Nodes.
    pub nodes: usize,
    /// Bytes into the site over its WAN link, in file sizes (ideal 1.0 with peers).
    pub wan_ingress_copies: f64,
    /// Bytes out of the site over its WAN link, in file sizes.
    pub wan_egress_copies: f64,
}

/// A run's summary (the JSON output of `dosim run --json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Download mode.
    pub mode: Mode,
    /// Nodes.
    pub nodes: usize,
    /// The simulated block, KiB (64, the node's, unless the scenario or `--block-kib` chose a
    /// coarser model).
    pub block_kib: u64,
    /// Bytes each node downloads (all files).
    pub file_bytes: u64,
    /// The lower bound on the makespan, seconds.
    pub t_min_s: f64,
    /// The term of the bound that binds.
    pub t_min_binding: String,
    /// Every term of the bound, seconds.
    pub bound_terms: Vec<(String, f64)>,
    /// When the last download finished, seconds from the start.
    pub makespan_s: f64,
    /// `t_min_s / makespan_s` (1.0 is optimal; above 1.0 would be a simulator bug).
    pub efficiency: f64,
    /// Download time (finish − start) percentiles, seconds.
    pub p50_s: f64,
    /// 90th percentile download time, seconds.
    pub p90_s: f64,
    /// 99th percentile download time, seconds.
    pub p99_s: f64,
    /// Mean slowdown: download time / (file bytes / the node's download capacity).
    pub mean_slowdown: f64,
    /// Downloads finished.
    pub completed: usize,
    /// Downloads that should have finished and did not (0 for a healthy run).
    pub unfinished: u64,
    /// Bytes the origin sent.
    pub origin_bytes: u64,
    /// `origin_bytes / file_bytes`.
    pub origin_copies: f64,
    /// Origin bytes sent to well-behaved nodes / `file_bytes` (the misbehaving ones, once
    /// banned, take the rest of their file from the origin).
    pub origin_copies_honest: f64,
    /// Of `origin_copies`, the blocks cut off in flight (a fetch cancelled or ended by an
    /// outage in the middle of a block) / `file_bytes`. With blocks coarser than the node's
    /// (`block_kib`), most of these bytes are whole 64 KiB blocks that the node would have
    /// kept.
    pub origin_cut_copies: f64,
    /// The least `origin_copies` can be (1 with peers across sites, one per site in LAN mode).
    pub min_origin_copies: f64,
    /// Verified bytes from peers.
    pub bytes_from_peers: u64,
    /// Of those, from LAN peers.
    pub bytes_from_lan_peers: u64,
    /// From group peers on other sites.
    pub bytes_from_group_peers: u64,
    /// From Internet peers on other sites.
    pub bytes_from_internet_peers: u64,
    /// Share of delivered bytes that did not come from the origin.
    pub saved_pct: f64,
    /// Per-site WAN traffic.
    pub sites: Vec<SiteSummary>,
    /// Bytes an engine assembled without a verified copy of them (never received, or only
    /// from a corrupt peer); must be 0.
    pub corrupt_bytes_committed: u64,
    /// Bytes of corrupt blocks received and dropped.
    pub corrupt_bytes_received: u64,
    /// Bytes moved and not kept (corrupt, cancelled, duplicate).
    pub wasted_bytes: u64,
    /// Files evicted from nodes' caches under the scenario's quota (`cache_mib`).
    pub evictions: u64,
    /// Bytes of the files evicted.
    pub evicted_bytes: u64,
    /// Most bytes one node's cache held at once (finished files and files under way).
    pub peak_cache_bytes: u64,
    /// Peers banned (by some node).
    pub bans: u64,
    /// When the first ban happened, seconds.
    pub first_ban_s: Option<f64>,
    /// Requests an engine sent to a peer it had banned (must be 0).
    pub requests_to_banned: u64,
    /// Most flows in progress at once.
    pub peak_flows: usize,
    /// Events processed.
    pub events: u64,
    /// Wall-clock time of the run, seconds (the one field that differs between equal runs).
    pub sim_wall_s: f64,
    /// Hash of the event sequence, hex (equal runs give equal hashes).
    pub trace_hash: String,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The bound for a scenario as it ran (nodes expected to finish, their arrivals).
pub fn bound_of(sc: &Scenario, outcome: &Outcome) -> Bound {
    let first_start = sc.files.iter().map(|f| f.start_s).fold(f64::MAX, f64::min);
    let mbit = |m: f64| m * 1e6 / 8.0;
    let mut sites: Vec<SiteCaps> = sc
        .sites
        .iter()
        .map(|s| SiteCaps {
            wan_down: s.wan_down_mbit.map_or(f64::INFINITY, mbit),
            wan_up: s.wan_up_mbit.map_or(f64::INFINITY, mbit),
            up: Vec::new(),
            down: Vec::new(),
        })
        .collect();
    for n in &outcome.nodes {
        sites[n.site].up.push(n.up);
        if n.must_finish {
            sites[n.site].down.push((n.down, n.arrival_s + first_start));
        }
    }
    let files: Vec<(f64, f64)> = sc
        .files
        .iter()
        .map(|f| (f.start_s, f.bytes() as f64))
        .collect();
    bound::lower_bound(sc.mode, &files, mbit(sc.origin.up_mbit), &sites)
}

/// Summarises a run.
pub fn summarise(sc: &Scenario, seed: u64, o: &Outcome, wall_s: f64) -> Summary {
    let bytes: u64 = sc.files.iter().map(|f| f.bytes()).sum();
    let b = bound_of(sc, o);
    let makespan = o.completions.iter().map(|c| c.3).fold(0.0, f64::max);
    let mut durations: Vec<f64> = o.completions.iter().map(|c| c.3 - c.2).collect();
    durations.sort_by(f64::total_cmp);
    let slowdowns: Vec<f64> = o
        .completions
        .iter()
        .map(|&(node, file, start, end)| {
            let f = sc.files[file].bytes() as f64;
            (end - start) / (f / o.nodes[node as usize].down)
        })
        .collect();
    let peers: u64 = o.peer_bytes.iter().sum();
    let delivered = peers + o.origin_bytes;
    let per_file = bytes as f64;
    let sites = sc
        .sites
        .iter()
        .enumerate()
        .map(|(k, s)| SiteSummary {
            name: s.name.clone(),
            nodes: s.nodes,
            wan_ingress_copies: o.wan_ingress[k] as f64 / per_file,
            wan_egress_copies: o.wan_egress[k] as f64 / per_file,
        })
        .collect();
    Summary {
        scenario: sc.name.clone(),
        seed,
        mode: sc.mode,
        block_kib: sc.block_kib,
        nodes: o.nodes.len(),
        file_bytes: bytes,
        t_min_s: b.t_min_s,
        t_min_binding: b.binding.clone(),
        bound_terms: b.terms.clone(),
        makespan_s: makespan,
        efficiency: if makespan > 0.0 {
            b.t_min_s / makespan
        } else {
            0.0
        },
        p50_s: percentile(&durations, 50.0),
        p90_s: percentile(&durations, 90.0),
        p99_s: percentile(&durations, 99.0),
        mean_slowdown: slowdowns.iter().sum::<f64>() / slowdowns.len().max(1) as f64,
        completed: o.completions.len(),
        unfinished: o.unfinished,
        origin_bytes: o.origin_bytes,
        origin_copies: o.origin_bytes as f64 / per_file,
        origin_copies_honest: (o.origin_bytes - o.origin_bytes_to_faulty) as f64 / per_file,
        origin_cut_copies: o.origin_cut_bytes as f64 / per_file,
        min_origin_copies: b.min_origin_bytes / per_file,
        bytes_from_peers: peers,
        bytes_from_lan_peers: o.peer_bytes[0],
        bytes_from_group_peers: o.peer_bytes[1],
        bytes_from_internet_peers: o.peer_bytes[2],
        saved_pct: if delivered > 0 {
            100.0 * peers as f64 / delivered as f64
        } else {
            0.0
        },
        sites,
        corrupt_bytes_committed: o.corrupt_bytes_committed,
        corrupt_bytes_received: o.corrupt_bytes_received,
        wasted_bytes: o.wasted_bytes,
        evictions: o.evictions,
        evicted_bytes: o.evicted_bytes,
        peak_cache_bytes: o.peak_cache_bytes,
        bans: o.bans,
        first_ban_s: o.first_ban_s,
        requests_to_banned: o.requests_to_banned,
        peak_flows: o.peak_flows,
        events: o.events,
        sim_wall_s: wall_s,
        trace_hash: format!("{:016x}", o.trace_hash),
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gib = |b: u64| b as f64 / f64::from(1 << 30);
        writeln!(
            f,
            "{} (seed {}, {:?} mode): {} nodes × {:.3} GiB, in {} KiB blocks",
            self.scenario,
            self.seed,
            self.mode,
            self.nodes,
            gib(self.file_bytes),
            self.block_kib
        )?;
        writeln!(
            f,
            "  makespan {:.2} s; bound {:.2} s ({} binds); efficiency {:.3}",
            self.makespan_s, self.t_min_s, self.t_min_binding, self.efficiency
        )?;
        writeln!(
            f,
            "  download time p50 {:.2} s, p90 {:.2} s, p99 {:.2} s; mean slowdown {:.2}; \
             {} finished, {} unfinished",
            self.p50_s, self.p90_s, self.p99_s, self.mean_slowdown, self.completed, self.unfinished
        )?;
        writeln!(
            f,
            "  origin sent {:.3} copies (least possible {:.0}; {:.3} to well-behaved nodes; \
             {:.3} in blocks cut off in flight); peers gave {:.2} GiB (LAN {:.2}, group {:.2}, \
             internet {:.2}); {:.1}% saved",
            self.origin_copies,
            self.min_origin_copies,
            self.origin_copies_honest,
            self.origin_cut_copies,
            gib(self.bytes_from_peers),
            gib(self.bytes_from_lan_peers),
            gib(self.bytes_from_group_peers),
            gib(self.bytes_from_internet_peers),
            self.saved_pct
        )?;
        for s in &self.sites {
            writeln!(
                f,
                "  site {} ({} nodes): WAN in {:.3} copies, out {:.3}",
                s.name, s.nodes, s.wan_ingress_copies, s.wan_egress_copies
            )?;
        }
        writeln!(
            f,
            "  corrupt bytes committed {}, received {}; wasted {:.3} GiB; bans {}{}; \
             requests to banned peers {}",
            self.corrupt_bytes_committed,
            self.corrupt_bytes_received,
            gib(self.wasted_bytes),
            self.bans,
            self.first_ban_s
                .map(|t| format!(" (first at {t:.2} s)"))
                .unwrap_or_default(),
            self.requests_to_banned
        )?;
        if self.evictions > 0 {
            writeln!(
                f,
                "  cache: {} files evicted ({:.3} GiB); a node held at most {:.1} MiB",
                self.evictions,
                gib(self.evicted_bytes),
                self.peak_cache_bytes as f64 / 1_048_576.0
            )?;
        }
        write!(
            f,
            "  simulated in {:.2} s wall: {} events ({:.0}/s), peak {} flows, trace {}",
            self.sim_wall_s,
            self.events,
            self.events as f64 / self.sim_wall_s.max(1e-9),
            self.peak_flows,
            self.trace_hash
        )
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 90.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
