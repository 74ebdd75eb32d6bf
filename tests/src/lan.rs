//! A LAN of network namespaces: one bridge namespace and host namespaces joined to it by
//! veth pairs, on 10.253.0.0/24 (host `i` is 10.253.0.`i`). mDNS multicast crosses the bridge.
//! Optionally a second site: the last hosts on a second bridge, 10.253.1.0/24, which the bridge
//! namespace routes to the first (so they reach each other by IP, but mDNS, link-local
//! multicast, stays on each site). Everything is deleted on drop, processes started in it
//! first.

use std::{
    net::Ipv4Addr,
    process::{Child, Command},
    sync::atomic::{AtomicU32, Ordering},
};

/// The namespaces (and the processes a test started in them).
pub struct Lan {
    /// `names[0]` is the bridge; `names[i]` is host `i`.
    pub names: Vec<String>,
    /// Processes to kill before the namespaces go.
    pub children: Vec<Child>,
    /// Host `i`'s address is `addrs[i]` (`addrs[0]` is unused).
    addrs: Vec<Ipv4Addr>,
}

impl Drop for Lan {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?}");
}

/// Adds bridge `name` in namespace `ns` and brings it up. Without snooping the bridge floods
/// multicast to every port: mDNS always crosses.
fn add_bridge(ns: &str, name: &str) {
    ip(&[
        "-n",
        ns,
        "link",
        "add",
        name,
        "type",
        "bridge",
        "mcast_snooping",
        "0",
    ]);
    ip(&["-n", ns, "link", "set", name, "up"]);
}

impl Lan {
    /// A bridge and `hosts` hosts, named uniquely for this process and call.
    pub fn new(hosts: usize) -> Self {
        Self::with_sites(hosts, 0)
    }

    /// `hosts` hosts of which the last `remote` are on a second site, routed to the first
    /// through the bridge namespace (its addresses .254 on both).
    pub fn with_sites(hosts: usize, remote: usize) -> Self {
        assert!(remote <= hosts);
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{}", std::process::id(), (b'a' + (n % 26) as u8) as char);
        let bridge = format!("dn{tag}b");
        let mut lan = Self {
            names: vec![bridge.clone()],
            children: Vec::new(),
            addrs: vec![Ipv4Addr::UNSPECIFIED],
        };
        ip(&["netns", "add", &bridge]);
        add_bridge(&bridge, "br0");
        if remote > 0 {
            add_bridge(&bridge, "br1");
            for (br, net) in [("br0", 0), ("br1", 1)] {
                let gw = format!("10.253.{net}.254/24");
                ip(&["-n", &bridge, "addr", "add", &gw, "dev", br]);
            }
            ip(&[
                "netns",
                "exec",
                &bridge,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]);
        }
        for i in 1..=hosts {
            let site = u8::from(i > hosts - remote);
            let host = format!("dn{tag}h{i}");
            ip(&["netns", "add", &host]);
            lan.names.push(host.clone());
            let port = format!("p{i}");
            ip(&[
                "-n", &host, "link", "add", "e0", "type", "veth", "peer", "name", &port, "netns",
                &bridge,
            ]);
            let br = if site == 0 { "br0" } else { "br1" };
            ip(&["-n", &bridge, "link", "set", &port, "master", br]);
            ip(&["-n", &bridge, "link", "set", &port, "up"]);
            let host_addr = Ipv4Addr::new(10, 253, site, u8::try_from(i).expect("< 254 hosts"));
            lan.addrs.push(host_addr);
            let addr = format!("{host_addr}/24");
            ip(&["-n", &host, "addr", "add", &addr, "dev", "e0"]);
            ip(&["-n", &host, "link", "set", "e0", "up"]);
            ip(&["-n", &host, "link", "set", "lo", "up"]);
            if remote > 0 {
                let gw = format!("10.253.{site}.254");
                ip(&["-n", &host, "route", "add", "default", "via", &gw]);
            }
        }
        lan
    }

    /// Host `i`'s address (on its site's network).
    pub fn host_addr(&self, i: usize) -> Ipv4Addr {
        self.addrs[i]
    }

    /// Host `i`'s namespace.
    pub fn host(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// Host `i`'s address on a LAN of one site.
    pub fn addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 253, 0, u8::try_from(i).expect("at most 254 hosts"))
    }

    /// A command that runs `program` inside host `i`'s namespace.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.host(i)]).arg(program);
        c
    }

    /// Isolates host `i`'s bridge port: isolated hosts reach the others but not each other
    /// (multicast included, so mDNS never shows them to each other).
    pub fn isolate(&self, i: usize) {
        let port = format!("p{i}");
        ip(&[
            "-n",
            &self.names[0],
            "link",
            "set",
            &port,
            "type",
            "bridge_slave",
            "isolated",
            "on",
        ]);
    }

    /// Limits what host `i` sends into the LAN to `mbit` Mbit/s (a `tbf` qdisc on its link).
    pub fn limit_egress(&self, i: usize, mbit: u32) {
        let rate = format!("{mbit}mbit");
        ip(&[
            "netns",
            "exec",
            self.host(i),
            "tc",
            "qdisc",
            "add",
            "dev",
            "e0",
            "root",
            "tbf",
            "rate",
            &rate,
            "burst",
            "256kb",
            "latency",
            "100ms",
        ]);
    }
}
