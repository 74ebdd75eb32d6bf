//! Scenario files: sites, hosts, WAN links, the origin, files, arrivals, churn, faults and the
//! download mode, as TOML. Parsed once into [`Scenario`] and checked before a run starts.

use std::path::Path;

use anyhow::{Context, bail, ensure};
use serde::Deserialize;

/// Which peers a node may take bytes from (DO's download modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// HTTP only: no peers.
    Http,
    /// Peers on the same site's LAN.
    Lan,
    /// Peers of the node's group, on any site (LAN peers first).
    Group,
    /// Any peer (LAN peers first).
    Internet,
}

/// How peer blocks are verified (see [`EngineKnobs::verify`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    /// Once the whole file's block hashes are known and merge to the root (the node today;
    /// blocks that come before wait, unchecked, neither held nor served).
    #[default]
    Manifest,
    /// Each block with its own proof against the root (a what-if).
    Proofs,
}

/// How a node's peers are sampled when `peers_per_node` is set (see
/// [`EngineKnobs::peer_sample`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerSample {
    /// Among every node of the site.
    #[default]
    Uniform,
    /// Among the nodes of the site that arrived before it (for one file: the nodes already
    /// fetching or holding it, as a full mesh would show them), each pick the less connected
    /// of two drawn at random.
    Swarm,
}

/// A whole scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name (used for output files).
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// The download mode.
    pub mode: Mode,
    /// The default seed (`--seed` overrides it).
    #[serde(default = "one")]
    pub seed: u64,
    /// The files every node downloads, in order.
    pub files: Vec<FileSpec>,
    /// The HTTP origin.
    pub origin: Origin,
    /// Sites (LANs), each behind its WAN link.
    pub sites: Vec<Site>,
    /// When nodes start.
    #[serde(default)]
    pub arrivals: Arrivals,
    /// Nodes leaving, crashing and rejoining.
    #[serde(default)]
    pub churn: Churn,
    /// Misbehaving peers.
    #[serde(default)]
    pub faults: Faults,
    /// Engine and driver knobs.
    #[serde(default)]
    pub engine: EngineKnobs,
    /// Each node's cache quota, MiB (the store's `quota_bytes`). Before a download starts,
    /// finished files are evicted whole, least recently used first, until the new file fits;
    /// an evicted file is no longer served. Default: no quota.
    #[serde(default)]
    pub cache_mib: Option<f64>,
    /// Stop the run at this simulated time (seconds), finished or not. Default 86,400.
    #[serde(default = "day")]
    pub max_time_s: f64,
    /// The simulated block, KiB: a multiple of the node's 64 KiB block. Default 64, the
    /// node's. A larger block is a coarser model of the same engine, for fleets too large to
    /// simulate block by block: each engine block stands for `block_kib` KiB on the wire, and
    /// the engine's request and span sizes, given in blocks, are divided by the same factor so
    /// that they keep their sizes in bytes (`dosim run --block-kib` overrides it).
    #[serde(default = "node_block_kib")]
    pub block_kib: u64,
}

fn node_block_kib() -> u64 {
    do_content::BLOCK_SIZE / 1024
}

fn one() -> u64 {
    1
}

fn day() -> f64 {
    86_400.0
}

/// One file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Size in MiB (fractions allowed).
    pub size_mib: f64,
    /// Seconds after a node's arrival at which it starts this file. Default 0.
    #[serde(default)]
    pub start_s: f64,
}

impl FileSpec {
    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        (self.size_mib * 1_048_576.0).round() as u64
    }
}

/// The origin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// Upload capacity, Mbit/s.
    pub up_mbit: f64,
    /// One-way latency to every site's WAN edge, ms. Default 10.
    #[serde(default = "ten")]
    pub latency_ms: f64,
    /// Windows in which the origin answers nothing but errors.
    #[serde(default)]
    pub outages: Vec<Outage>,
}

fn ten() -> f64 {
    10.0
}

/// An origin outage: from `start_s` to `end_s` (never over if absent).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// Start, seconds.
    pub start_s: f64,
    /// End, seconds; absent: the origin never comes back.
    pub end_s: Option<f64>,
}

/// A site: a LAN of hosts behind one WAN link.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Name.
    pub name: String,
    /// Number of nodes.
    pub nodes: usize,
    /// WAN download capacity into the site, Mbit/s; absent: unlimited.
    pub wan_down_mbit: Option<f64>,
    /// WAN upload capacity out of the site, Mbit/s; absent: unlimited.
    pub wan_up_mbit: Option<f64>,
    /// One-way latency between the site's edge and the core, ms. Default 10.
    #[serde(default = "ten")]
    pub wan_latency_ms: f64,
    /// One-way latency between two hosts of the site, ms. Default 0.25.
    #[serde(default = "quarter")]
    pub lan_latency_ms: f64,
    /// Host classes; their shares are normalised. Default: one class, 100/100 Mbit/s.
    #[serde(default = "default_hosts")]
    pub hosts: Vec<HostClass>,
}

fn quarter() -> f64 {
    0.25
}

fn default_hosts() -> Vec<HostClass> {
    vec![HostClass {
        share: 1.0,
        up_mbit: 100.0,
        down_mbit: 100.0,
    }]
}

/// A kind of host and its share of a site's nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostClass {
    /// Share of the site's nodes.
    pub share: f64,
    /// Upload capacity, Mbit/s.
    pub up_mbit: f64,
    /// Download capacity, Mbit/s.
    pub down_mbit: f64,
}

/// Arrival times: uniform over a window, or a Poisson process.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arrivals {
    /// Nodes arrive uniformly at random in `[0, window_s]`. Default 0: all at once.
    #[serde(default)]
    pub window_s: f64,
    /// Instead, a Poisson process with this mean gap between arrivals, seconds.
    pub poisson_mean_gap_s: Option<f64>,
    /// `true`: every node is up and connected to its peers from the start, and what arrives
    /// is its download (hosts that run the node all the time, asked for a file at different
    /// moments). Default `false`: a node comes up when it arrives (hosts booting into the
    /// crowd), so the first ones find no peer and go to the origin at once.
    #[serde(default)]
    pub hosts_up_first: bool,
}

/// Churn.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// Share of nodes that go away once, at a uniform time in `window_s`.
    #[serde(default)]
    pub leave_fraction: f64,
    /// When they go, seconds `[from, to]`.
    #[serde(default)]
    pub window_s: [f64; 2],
    /// `true`: they crash (in-flight work lost, verified blocks kept on disk); `false`: they
    /// leave cleanly. Either way they are gone until they rejoin.
    #[serde(default)]
    pub crash: bool,
    /// Seconds after leaving at which they come back and resume; absent: never.
    pub rejoin_after_s: Option<f64>,
    /// Seconds a node stays online after finishing its last file; absent: forever.
    pub linger_s: Option<f64>,
}

/// Misbehaving peers (never the origin).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Share of nodes whose served blocks fail verification (a corrupt cache or a liar).
    #[serde(default)]
    pub corrupt_fraction: f64,
    /// Share of nodes that accept requests and never answer them.
    #[serde(default)]
    pub stall_fraction: f64,
}

/// Engine and driver knobs the scenario may set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineKnobs {
    /// Peers a node is connected to on its own site: 0 (the default) for every one, as the
    /// node connects to every peer mDNS finds; otherwise a random sample averaging this many
    /// (cheaper to simulate, but the engine's co-fetching assumes it sees every co-fetcher).
    #[serde(default)]
    pub peers_per_node: usize,
    /// With `peers_per_node` set, whom a node's `peers_per_node / 2` picks are drawn from:
    /// `uniform` (the default), every node of its site; `swarm`, the nodes of its site that
    /// arrived before it. The node itself connects to every LAN peer, so a full mesh is the
    /// model of it; a sample is cheaper, and a uniform one leaves an early node's view of the
    /// crowd to peers that mostly have not started yet (see the docs).
    #[serde(default)]
    pub peer_sample: PeerSample,
    /// With `peers_per_node` set, each node is also linked to its ring neighbours on its
    /// own site: for each of its points on the split's ring of each file, the first this many
    /// other nodes whose points follow it (`do_engine::SplitRing`), as the node's polled set
    /// holds them (`donode run --ring-peers`). 0 (the default): the random sample alone.
    #[serde(default)]
    pub ring_peers: usize,
    /// With `peers_per_node` set, a node that comes up with fewer than this many of its
    /// sampled peers online on its site is linked to nodes of its site that are up, drawn at
    /// random, until it has that many (or every node up): the node finds every host that is
    /// up through mDNS and polls them while they are fewer than its bound, where a sample
    /// drawn before the run leaves the first nodes of a crowd alone, and so not peering, and
    /// at the origin at once. 0 (the default): the sample alone.
    #[serde(default)]
    pub online_peers: usize,
    /// Peers a node is connected to on other sites (Group and Internet mode: peers a WAN
    /// discovery would find). Default 4.
    #[serde(default = "four")]
    pub wan_peers_per_node: usize,
    /// The engine's origin fallback delay, seconds. Default 1, the node's default with peers.
    #[serde(default = "one_f")]
    pub origin_fallback_delay_s: f64,
    /// Upload slots per node (requests served at once; more wait in a queue). Default: the
    /// node's for the mode, 8 in LAN mode and 4 in Group and Internet mode (see
    /// [`EngineKnobs::upload_slots`]).
    #[serde(default)]
    pub upload_slots: Option<usize>,
    /// Requests a node keeps in flight to one peer (the engine's `peer_slots`). Default 4.
    #[serde(default = "four")]
    pub peer_slots: usize,
    /// Blocks asked of a LAN peer in one request (the engine's `peer_request_blocks`).
    /// Default: the engine's (64).
    #[serde(default = "peer_request_blocks")]
    pub peer_request_blocks: u64,
    /// How peer blocks are verified: `manifest` (the node today: once the hashes of the whole
    /// file are known; blocks that come before wait unchecked) or `proofs` (what-if: each block
    /// carries a proof against the root, so it is checked, held and served at once; not built
    /// in the node).
    #[serde(default)]
    pub verify: Verify,
    /// How often a node learns its peers' holdings, seconds (the driver's poll). Default 0.5.
    #[serde(default = "half")]
    pub have_interval_s: f64,
    /// The engine's minimum speed (DO's `DOMinBackgroundQoS`), bytes/s; 0 turns it off.
    /// Default: the engine's (0).
    #[serde(default = "min_qos")]
    pub min_background_qos: u64,
    /// The engine's endgame delay, seconds (a slow peer request is asked once more of
    /// another peer after it). Default: the engine's (2).
    #[serde(default = "endgame_s")]
    pub endgame_after_s: f64,
    /// The engine's wait for blocks its peers' peers hold, seconds (`Config::near_wait`; 0
    /// turns it off). Default: the engine's (3).
    #[serde(default = "near_wait_s")]
    pub near_wait_s: f64,
    /// A poll tells a peer's whole holdings each time they changed (`Input::PeerHas`, as the
    /// node's driver does) instead of the blocks gained since the last poll
    /// (`Input::PeerGained`, cheaper to simulate). The engine decides alike either way (a test
    /// checks the traces are equal). Default false.
    #[serde(default)]
    pub whole_have_reports: bool,
}

impl EngineKnobs {
    /// Upload slots per node in `mode`: the knob, or the node's default (`donode run`'s
    /// `[upload] slots`): 8 on a LAN, where a server's answers are limited by their receivers'
    /// downlinks (each shares its own among 16 requests) and 4 left most of an uplink idle
    /// (the 200-node crowd: efficiency 0.86, 0.96 with 8); 4 with peers beyond the LAN, where
    /// more answers at once share a site's thin uplink and outlast the stall timeout (sites in
    /// Group mode: 171 s and 1.23 origin copies with 4, 211 s and 1.38 with 8).
    pub fn upload_slots(&self, mode: Mode) -> usize {
        self.upload_slots
            .unwrap_or(if mode == Mode::Lan { 8 } else { 4 })
    }
}

fn min_qos() -> u64 {
    do_engine::Config::default().min_background_qos
}

fn peer_request_blocks() -> u64 {
    do_engine::Config::default().peer_request_blocks
}

fn near_wait_s() -> f64 {
    do_engine::Config::default().near_wait.as_secs_f64()
}

fn endgame_s() -> f64 {
    do_engine::Config::default().endgame_after.as_secs_f64()
}

fn four() -> usize {
    4
}

fn one_f() -> f64 {
    1.0
}

fn half() -> f64 {
    0.5
}

impl Default for EngineKnobs {
    fn default() -> Self {
        Self {
            peers_per_node: 0,
            peer_sample: PeerSample::Uniform,
            ring_peers: 0,
            online_peers: 0,
            wan_peers_per_node: 4,
            origin_fallback_delay_s: 1.0,
            upload_slots: None,
            peer_slots: 4,
            peer_request_blocks: peer_request_blocks(),
            verify: Verify::Manifest,
            have_interval_s: 0.5,
            min_background_qos: min_qos(),
            endgame_after_s: endgame_s(),
            near_wait_s: near_wait_s(),
            whole_have_reports: false,
        }
    }
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses and checks a scenario.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let scenario: Self = toml::from_str(text)?;
        scenario.check()?;
        Ok(scenario)
    }

    /// Total nodes.
    pub fn nodes(&self) -> usize {
        self.sites.iter().map(|s| s.nodes).sum()
    }

    /// Scales every site's node count so that the total is `nodes` (at least one per site).
    pub fn scale_nodes(&mut self, nodes: usize) {
        let total = self.nodes().max(1) as f64;
        let mut left = nodes;
        let sites = self.sites.len();
        for (i, site) in self.sites.iter_mut().enumerate() {
            let n = if i + 1 == sites {
                left.max(1)
            } else {
                ((site.nodes as f64 / total * nodes as f64).round() as usize).clamp(1, left.max(1))
            };
            left = left.saturating_sub(n);
            site.nodes = n;
        }
    }

    /// How many of the node's blocks one simulated block stands for (`block_kib` / 64).
    pub fn grain(&self) -> u64 {
        self.block_kib / node_block_kib()
    }

    /// Checks a scenario: the parser calls it, and so should whoever changes one.
    pub fn check(&self) -> anyhow::Result<()> {
        ensure!(!self.files.is_empty(), "a scenario needs at least one file");
        ensure!(
            self.block_kib >= node_block_kib() && self.block_kib.is_multiple_of(node_block_kib()),
            "block_kib must be a multiple of the node's block, {} KiB",
            node_block_kib()
        );
        for f in &self.files {
            ensure!(
                f.size_mib > 0.0 && f.bytes() > 0,
                "file sizes must be positive"
            );
            ensure!(f.start_s >= 0.0, "file start_s must not be negative");
        }
        ensure!(!self.sites.is_empty(), "a scenario needs at least one site");
        ensure!(self.origin.up_mbit > 0.0, "origin.up_mbit must be positive");
        for site in &self.sites {
            ensure!(site.nodes > 0, "site {}: nodes must be positive", site.name);
            ensure!(!site.hosts.is_empty(), "site {}: no host class", site.name);
            for h in &site.hosts {
                ensure!(
                    h.share > 0.0 && h.up_mbit > 0.0 && h.down_mbit > 0.0,
                    "site {}: host shares and capacities must be positive",
                    site.name
                );
            }
            for cap in [site.wan_down_mbit, site.wan_up_mbit].into_iter().flatten() {
                ensure!(
                    cap > 0.0,
                    "site {}: WAN capacities must be positive",
                    site.name
                );
            }
        }
        for o in &self.origin.outages {
            if let Some(end) = o.end_s {
                ensure!(end > o.start_s, "an outage must end after it starts");
            }
        }
        let fraction = |x: f64| (0.0..=1.0).contains(&x);
        ensure!(
            fraction(self.churn.leave_fraction)
                && fraction(self.faults.corrupt_fraction)
                && fraction(self.faults.stall_fraction),
            "fractions must lie in [0, 1]"
        );
        if self.churn.window_s[1] < self.churn.window_s[0] {
            bail!("churn.window_s must be [from, to] with from <= to");
        }
        ensure!(
            self.engine.have_interval_s > 0.0 && self.engine.upload_slots != Some(0),
            "engine.have_interval_s and engine.upload_slots must be positive"
        );
        let delay = |x: f64| (0.0..1e9).contains(&x);
        ensure!(
            delay(self.engine.origin_fallback_delay_s)
                && delay(self.engine.endgame_after_s)
                && delay(self.engine.near_wait_s),
            "engine.origin_fallback_delay_s, engine.endgame_after_s and engine.near_wait_s must be \
             seconds, 0 or more"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        name = "t"
        mode = "lan"
        files = [{ size_mib = 4 }]
        origin = { up_mbit = 100 }
        sites = [{ name = "a", nodes = 10 }]
    "#;

    #[test]
    fn a_minimal_scenario_gets_defaults() {
        let s = Scenario::parse(MINIMAL).unwrap();
        assert_eq!(s.nodes(), 10);
        assert_eq!(s.files[0].bytes(), 4 << 20);
        assert_eq!(s.sites[0].hosts[0].up_mbit, 100.0);
        assert_eq!(s.engine.peers_per_node, 0);
        assert_eq!((s.block_kib, s.grain()), (64, 1));
    }

    #[test]
    fn a_simulated_block_is_a_multiple_of_the_node_block() {
        let coarse = Scenario::parse(&format!("block_kib = 4096\n{MINIMAL}")).unwrap();
        assert_eq!(coarse.grain(), 64);
        for bad in [0, 32, 100] {
            let err = Scenario::parse(&format!("block_kib = {bad}\n{MINIMAL}")).unwrap_err();
            assert!(format!("{err:#}").contains("block_kib"), "{err:#}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_values_are_errors() {
        let typo = MINIMAL.replace("nodes = 10", "node = 10");
        assert!(Scenario::parse(&typo).is_err());
        let empty = MINIMAL.replace("nodes = 10", "nodes = 0");
        let err = Scenario::parse(&empty).unwrap_err();
        assert!(
            format!("{err:#}").contains("nodes must be positive"),
            "{err:#}"
        );
    }

    #[test]
    fn scaling_keeps_the_total_and_every_site() {
        let mut s = Scenario::parse(&MINIMAL.replace(
            r#"sites = [{ name = "a", nodes = 10 }]"#,
            r#"sites = [{ name = "a", nodes = 10 }, { name = "b", nodes = 30 }]"#,
        ))
        .unwrap();
        s.scale_nodes(1000);
        assert_eq!(s.nodes(), 1000);
        assert_eq!(s.sites[0].nodes, 250);
        s.scale_nodes(1);
        assert!(s.sites.iter().all(|site| site.nodes >= 1));
    }
}
