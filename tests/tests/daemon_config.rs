//! `donode run` configuration: the TOML file, and the admin config's
//! `RestControllerValidateRemoteAddr` (a caller from a non-loopback address, inside a network
//! namespace this test creates, is refused until the admin config allows it and SIGHUP
//! reloads it).

use std::{
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use do_tests::{Daemon, donode_bin, temp_dir};

#[test]
fn the_config_file_sets_ports_and_cache_and_flags_override_it() {
    let (run, cache, other) = (temp_dir(), temp_dir(), temp_dir());
    let config = run.path().join("donode.toml");
    std::fs::write(
        &config,
        format!(
            "cache_dir = {:?}\nports = \"58100-58199\"\nlog = \"warn\"\n[cache]\nquota_bytes = 1000000\n",
            cache.path()
        ),
    )
    .unwrap();
    let mut child = Command::new(donode_bin())
        .args(["run", "--config"])
        .arg(&config)
        .arg("--run-dir")
        .arg(run.path())
        .arg("--admin-config")
        .arg(run.path().join("none.json"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let port_file = run.path().join(format!("restport.{}", child.id()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !port_file.exists() {
        assert!(Instant::now() < deadline, "no port file");
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(50));
    let port: u16 = std::fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        (58100..=58199).contains(&port),
        "port {port} from the config file"
    );
    assert!(
        cache.path().join("index.redb").exists(),
        "cache_dir from the config file"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    // A flag overrides the file.
    let d = Daemon::start(run.path(), other.path());
    assert!(other.path().join("index.redb").exists());
    drop(d);
    // A config file with an unknown key is refused with a clear error.
    std::fs::write(&config, "colour = \"blue\"\n").unwrap();
    let out = Command::new(donode_bin())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("colour"));
}

/// Runs `cmd` inside network namespace `ns`.
fn in_ns(ns: &str, cmd: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(cmd);
    c
}

fn sh(ns: &str, cmd: &[&str]) {
    let status = in_ns(ns, cmd).status().unwrap();
    assert!(status.success(), "{cmd:?} in {ns}");
}

/// Removes the namespace (and so everything in it) when dropped.
struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// POSTs `download/create` from `source` to the daemon at 127.0.0.1:`port`, inside `ns`;
/// returns the status line.
fn create_from(ns: &str, source: &str, port: u16) -> String {
    let script = format!(
        "import socket\ns=socket.socket()\ns.bind(('{source}',0))\ns.connect(('127.0.0.1',{port}))\n\
         s.sendall(b'POST download/create HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n')\n\
         print(s.makefile('rb').readline().decode().strip())"
    );
    let out = in_ns(ns, &["python3", "-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn non_loopback_callers_are_refused_unless_the_admin_config_allows_them() {
    let ns = Namespace(format!("donode-t{}", std::process::id()));
    let added = Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .unwrap();
    assert!(
        added.success(),
        "this test creates a network namespace (needs root)"
    );
    sh(&ns.0, &["ip", "link", "set", "lo", "up"]);
    // A veth pair gives the namespace a non-loopback address of its own.
    sh(
        &ns.0,
        &[
            "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
        ],
    );
    sh(&ns.0, &["ip", "addr", "add", "10.251.0.1/24", "dev", "v0"]);
    sh(&ns.0, &["ip", "link", "set", "v0", "up"]);
    sh(&ns.0, &["ip", "link", "set", "v1", "up"]);
    let (run, cache) = (temp_dir(), temp_dir());
    let admin = run.path().join("admin-config.json");
    let mut daemon = in_ns(&ns.0, &[donode_bin().to_str().unwrap(), "run"])
        .arg("--run-dir")
        .arg(run.path())
        .arg("--cache-dir")
        .arg(cache.path())
        .arg("--admin-config")
        .arg(&admin)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let port: u16 = loop {
        let file = std::fs::read_dir(run.path())
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("restport"));
        if let Some(p) = file
            .and_then(|f| std::fs::read_to_string(f.path()).ok())
            .and_then(|s| s.trim().parse().ok())
        {
            break p;
        }
        assert!(Instant::now() < deadline, "no port file");
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(create_from(&ns.0, "127.0.0.1", port), "HTTP/1.1 200 OK");
    assert_eq!(
        create_from(&ns.0, "10.251.0.1", port),
        "HTTP/1.1 400 BadRequest"
    );
    std::fs::write(&admin, r#"{"RestControllerValidateRemoteAddr": false}"#).unwrap();
    // The daemon runs under `ip netns exec`, which execs it: the child's pid is the daemon's.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGHUP) };
    thread::sleep(Duration::from_millis(300));
    assert_eq!(create_from(&ns.0, "10.251.0.1", port), "HTTP/1.1 200 OK");
    // SAFETY: as above.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
}
