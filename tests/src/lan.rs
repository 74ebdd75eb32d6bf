//! A LAN of network namespaces: one bridge namespace and host namespaces joined to it by
//! veth pairs, on 10.253.0.0/24 (host `i` is 10.253.0.`i`). mDNS multicast crosses the bridge.
//! Everything is deleted on drop, processes started in it first.

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

impl Lan {
    /// A bridge and `hosts` hosts, named uniquely for this process and call.
    pub fn new(hosts: usize) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{}", std::process::id(), (b'a' + (n % 26) as u8) as char);
        let bridge = format!("dn{tag}b");
        let mut lan = Self {
            names: vec![bridge.clone()],
            children: Vec::new(),
        };
        ip(&["netns", "add", &bridge]);
        // Without snooping the bridge floods multicast to every port: mDNS always crosses.
        ip(&[
            "-n",
            &bridge,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &bridge, "link", "set", "br0", "up"]);
        for i in 1..=hosts {
            let host = format!("dn{tag}h{i}");
            ip(&["netns", "add", &host]);
            lan.names.push(host.clone());
            let port = format!("p{i}");
            ip(&[
                "-n", &host, "link", "add", "e0", "type", "veth", "peer", "name", &port, "netns",
                &bridge,
            ]);
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &bridge, "link", "set", &port, "up"]);
            let addr = format!("{}/24", Self::addr(i));
            ip(&["-n", &host, "addr", "add", &addr, "dev", "e0"]);
            ip(&["-n", &host, "link", "set", "e0", "up"]);
            ip(&["-n", &host, "link", "set", "lo", "up"]);
        }
        lan
    }

    /// Host `i`'s namespace.
    pub fn host(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// Host `i`'s address.
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
