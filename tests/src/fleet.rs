//! A fleet of real donode daemons on a LAN of network namespaces: host 1 runs nginx (the
//! origin), the others run `donode run --p2p`, find each other by mDNS and download through
//! their daemons with `donode get`. Origin egress is measured from nginx's access log.
//!
//! The origin publishes the file's BLAKE3 digest beside it (`f.bin.b3`, `b3sum` format), the
//! trusted source of the content id in LAN mode.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value as Json;

use crate::{Lan, Nginx, NginxOptions, b3sum, donode_bin, temp_dir, write_random_file};

/// The file's path on the origin.
const PATH: &str = "/files/f.bin";

/// How a fleet is built.
#[derive(Debug, Clone, Copy)]
pub struct FleetOptions {
    /// Daemons (hosts 2 ..= nodes + 1).
    pub nodes: usize,
    /// More hosts after the daemons', for other programs.
    pub spare_hosts: usize,
    /// The origin's file size.
    pub file_bytes: u64,
    /// Limit what the origin sends into the LAN (Mbit/s), with `tc tbf`.
    pub origin_mbit: Option<u32>,
    /// The last hosts (daemons or spare) on a second site, routed to the origin's (see
    /// [`Lan::with_sites`]).
    pub remote_hosts: usize,
}

/// An origin and `nodes` daemons (hosts 2 ..= nodes + 1).
pub struct Fleet {
    /// The origin (taken to stop it).
    pub nginx: Option<Nginx>,
    /// The file's content id.
    pub content: String,
    /// The file's size.
    pub file_bytes: u64,
    /// Where hosts keep their state.
    pub work: tempfile::TempDir,
    /// Number of daemons.
    pub nodes: usize,
    /// Every daemon (and its commands) runs in host 2's namespace, each with its own
    /// directories: the daemons reach each other over loopback. Set before starting them.
    pub colocated: bool,
    /// The `donode` binary a host runs (its daemon and its commands), where it is not this
    /// build's: another version, to check that versions work together. Set before starting
    /// the daemons.
    pub bins: std::collections::BTreeMap<usize, PathBuf>,
    /// The namespaces (last: they go after everything running in them).
    pub lan: Lan,
}

impl Fleet {
    /// Builds the LAN, starts the origin and the daemons, and waits until every daemon is
    /// connected to every other.
    pub fn start(options: FleetOptions) -> Self {
        let mut fleet = Self::without_daemons(options);
        for host in 2..=fleet.nodes + 1 {
            fleet.start_daemon(host);
        }
        fleet.wait_for_mesh();
        fleet
    }

    /// Builds the LAN and starts the origin; the caller starts the daemons
    /// ([`Fleet::start_daemon_with`]).
    pub fn without_daemons(options: FleetOptions) -> Self {
        let FleetOptions {
            nodes,
            spare_hosts,
            file_bytes,
            origin_mbit,
            remote_hosts,
        } = options;
        let lan = Lan::with_sites(nodes + 1 + spare_hosts, remote_hosts);
        if let Some(mbit) = origin_mbit {
            lan.limit_egress(1, mbit);
        }
        let work = temp_dir();
        let root = work.path().join("origin");
        std::fs::create_dir_all(&root).unwrap();
        let file = root.join("f.bin");
        write_random_file(&file, file_bytes, 77).unwrap();
        let content = b3sum(&file).unwrap();
        std::fs::write(root.join("f.bin.b3"), format!("{content}  f.bin\n")).unwrap();
        let nginx =
            Nginx::start_in_netns(&root, NginxOptions::default(), lan.host(1), Lan::addr(1))
                .unwrap();
        Self {
            nginx: Some(nginx),
            content,
            file_bytes,
            work,
            nodes,
            colocated: false,
            bins: Default::default(),
            lan,
        }
    }

    /// Host `host`'s file or directory `what`.
    pub fn dir(&self, host: usize, what: &str) -> PathBuf {
        self.work.path().join(format!("h{host}")).join(what)
    }

    /// The namespace `host`'s daemon and commands run in.
    fn namespace(&self, host: usize) -> usize {
        if self.colocated && host >= 2 { 2 } else { host }
    }

    /// Starts the daemon of `host` (`donode run --p2p`).
    pub fn start_daemon(&mut self, host: usize) {
        self.start_daemon_with(host, &[]);
    }

    /// Starts the daemon of `host` (`donode run --p2p`) with more arguments.
    pub fn start_daemon_with(&mut self, host: usize, more: &[&str]) {
        let run = self.dir(host, "run");
        std::fs::create_dir_all(&run).unwrap();
        let log = std::fs::File::create(self.dir(host, "daemon.log")).unwrap();
        let child = self
            .lan
            .command(self.namespace(host), self.bin(host))
            .args(["run", "--p2p", "--cache-dir"])
            .arg(self.dir(host, "cache"))
            .arg("--run-dir")
            .arg(&run)
            .arg("--admin-config")
            .arg(self.dir(host, "none.json"))
            .args(["--log", "info,do_driver=debug"])
            .args(more)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.lan.children.push(child);
    }

    /// The `donode` binary `host` runs.
    fn bin(&self, host: usize) -> PathBuf {
        self.bins.get(&host).cloned().unwrap_or_else(donode_bin)
    }

    /// `donode ARGS --run-dir RUN` on `host`, against its daemon.
    pub fn cli(&self, host: usize, args: &[&str]) -> Command {
        let mut c = self.lan.command(self.namespace(host), self.bin(host));
        c.args(args).arg("--run-dir").arg(self.dir(host, "run"));
        c
    }

    /// `donode stats --json` of `host`'s daemon.
    pub fn stats(&self, host: usize) -> Option<Json> {
        let out = self.cli(host, &["stats", "--json"]).output().ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until every daemon is up and connected to every other.
    pub fn wait_for_mesh(&self) {
        for host in 2..=self.nodes + 1 {
            self.wait_for_peers(host, self.nodes - 1);
        }
    }

    /// Waits (up to 30 s) until `host`'s daemon is up and connected to at least `peers` peers.
    pub fn wait_for_peers(&self, host: usize, peers: usize) {
        self.wait_for_stats(host, &format!("find {peers} peers"), |s| {
            s["NumPeers"].as_u64().is_some_and(|n| n as usize >= peers)
        });
    }

    /// Waits (up to 30 s) until `host` counts at least `peers` of its peers as LAN peers (found
    /// by mDNS: a peer that connected first is counted as one once mDNS finds it).
    pub fn wait_for_lan_peers(&self, host: usize, peers: usize) {
        self.wait_for_stats(host, &format!("count {peers} LAN peers"), |s| {
            s["Peers"]
                .as_array()
                .is_some_and(|all| all.iter().filter(|p| p["Class"] == "lan").count() >= peers)
        });
    }

    /// Polls `host`'s stats until `done` holds; fails after 30 s, saying it did not `what`.
    fn wait_for_stats(&self, host: usize, what: &str, done: impl Fn(&Json) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.stats(host).is_some_and(|s| done(&s)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "host {host} did not {what}: {:?}\n{}",
                self.stats(host),
                self.log(host)
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// `host`'s daemon log.
    pub fn log(&self, host: usize) -> String {
        std::fs::read_to_string(self.dir(host, "daemon.log")).unwrap_or_default()
    }

    /// The file as the origin serves it.
    pub fn origin_file(&self) -> PathBuf {
        self.work.path().join("origin").join("f.bin")
    }

    /// Where `host`'s get writes the file.
    pub fn output(&self, host: usize) -> PathBuf {
        self.dir(host, "f.bin")
    }

    /// Starts `donode get` of the file on `host`.
    pub fn spawn_get(&self, host: usize) -> Child {
        self.spawn_get_with(host, &[])
    }

    /// Starts `donode get` of the file on `host` with more arguments.
    pub fn spawn_get_with(&self, host: usize, more: &[&str]) -> Child {
        let output = self.output(host);
        let output = output.to_str().expect("UTF-8 path");
        let url = format!("http://{}:8080{PATH}", Lan::addr(1));
        self.cli(host, &["get", &url, "--json", "-o", output])
            .args(more)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Checks a finished get: success, and the output is the file.
    pub fn check(&self, host: usize, out: &Output) -> Json {
        assert!(
            out.status.success(),
            "get on host {host}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log(host)
        );
        assert_eq!(b3sum(&self.output(host)).unwrap(), self.content);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Body bytes the origin sent for the file (0 once it is stopped).
    pub fn origin_bytes(&self) -> u64 {
        let Some(nginx) = &self.nginx else { return 0 };
        nginx
            .log_lines()
            .iter()
            .filter(|l| l.uri == PATH && l.method == "GET")
            .map(|l| l.body_bytes_sent)
            .sum()
    }
}
