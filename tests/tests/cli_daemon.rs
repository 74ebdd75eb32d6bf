//! The CLI against a running daemon: `donode get` through it, and the control commands
//! (`list`, `status`, `prop`, `pause`, `resume`, `abort`, `finalize`, `watch`).

use std::{
    path::Path,
    process::{Command, Output, Stdio},
};

use do_tests::{Daemon, Nginx, NginxOptions, b3sum, donode_bin, temp_dir, write_random_file};
use serde_json::Value;

fn donode(run_dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(donode_bin());
    cmd.args(args);
    cmd.arg("--run-dir").arg(run_dir);
    cmd.stdin(Stdio::null()).output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn get_goes_through_the_daemon_when_one_runs() {
    let root = temp_dir();
    write_random_file(&root.path().join("f.bin"), 3 << 20, 21).unwrap();
    let nginx = Nginx::start(root.path()).unwrap();
    let (run, cache, out) = (temp_dir(), temp_dir(), temp_dir());
    let _d = Daemon::start(run.path(), cache.path());
    let url = nginx.url("/files/f.bin");
    let target = out.path().join("via-daemon.bin");
    let o = donode(
        run.path(),
        &["get", &url, "-o", target.to_str().unwrap(), "--json"],
    );
    let summary: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(summary["daemon"], true);
    let expected = b3sum(&root.path().join("f.bin")).unwrap();
    assert_eq!(summary["content_id"], expected.as_str());
    assert_eq!(b3sum(&target).unwrap(), expected);
    assert!(
        cache.path().join("index.redb").exists(),
        "the daemon's cache was used"
    );
    // A second get, to another file, comes from the daemon's cache.
    let again = out.path().join("again.bin");
    let o = donode(
        run.path(),
        &["get", &url, "-o", again.to_str().unwrap(), "--json"],
    );
    let summary: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (
            summary["BytesFromHttp"].as_u64(),
            summary["BytesFromCache"].as_u64()
        ),
        (Some(0), Some(3 << 20))
    );
    // `--embedded` bypasses the daemon.
    let local = out.path().join("local.bin");
    let own_cache = out.path().join("own-cache");
    let o = donode(
        run.path(),
        &[
            "get",
            &url,
            "-o",
            local.to_str().unwrap(),
            "--embedded",
            "--json",
            "--cache-dir",
            own_cache.to_str().unwrap(),
        ],
    );
    let summary: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(summary.get("daemon").is_none());
    assert!(own_cache.join("index.redb").exists());
    // A failing download through the daemon leaves no output.
    let missing = out.path().join("missing.bin");
    let o = donode(
        run.path(),
        &[
            "get",
            &nginx.url("/status/404"),
            "-o",
            missing.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("0x80190194"));
    assert!(!missing.exists());
}

#[test]
fn control_commands() {
    let root = temp_dir();
    write_random_file(&root.path().join("f.bin"), 24 << 20, 22).unwrap();
    let nginx = Nginx::start_with(
        root.path(),
        NginxOptions {
            slow_rate_bytes_per_s: 2 << 20,
        },
    )
    .unwrap();
    let (run, cache, out) = (temp_dir(), temp_dir(), temp_dir());
    let d = Daemon::start(run.path(), cache.path());
    let target = out.path().join("c.bin");
    let body = serde_json::json!({ "Uri": nginx.url("/slow/f.bin"), "LocalPath": target, "DisplayName": "ctl" }).to_string();
    let text = d.raw(
        format!(
            "POST /v1/downloads HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let id: String = serde_json::from_str::<Value>(text.split_once("\r\n\r\n").unwrap().1).unwrap()
        ["Id"]
        .as_str()
        .unwrap()
        .to_owned();

    let list: Value =
        serde_json::from_str(&stdout(&donode(run.path(), &["list", "--json"]))).unwrap();
    assert_eq!(list[0]["Id"], id.as_str());
    let filtered: Value = serde_json::from_str(&stdout(&donode(
        run.path(),
        &["list", "--json", "--filter", "DisplayName=nope"],
    )))
    .unwrap();
    assert_eq!(filtered.as_array().unwrap().len(), 0);

    // Node-wide stats as text: names and plain values (a daemon without --p2p is HTTP only).
    let stats = stdout(&donode(run.path(), &["stats"]));
    let first = stats.lines().next().unwrap_or("");
    assert_eq!(
        first.split_whitespace().collect::<Vec<_>>(),
        ["DownloadMode", "http-only"],
        "{stats}"
    );
    assert!(
        stats.lines().any(|l| l.starts_with("BytesFromHttp")),
        "{stats}"
    );

    stdout(&donode(
        run.path(),
        &["prop", "set", &id, "DisplayName", "renamed"],
    ));
    assert_eq!(
        stdout(&donode(run.path(), &["prop", "get", &id, "DisplayName"])),
        "renamed\n"
    );
    let by_id: Value = serde_json::from_str(&stdout(&donode(
        run.path(),
        &["prop", "get", &id, "10", "--json"],
    )))
    .unwrap();
    assert_eq!(by_id["Property"], "NoProgressTimeoutSeconds");
    let bad = donode(run.path(), &["prop", "set", &id, "Id", "x"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("0x80d02012"),
        "read-only"
    );

    // Watch in the background while the download runs.
    let mut watch = Command::new(donode_bin())
        .args(["watch", &id, "--json", "--run-dir"])
        .arg(run.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The first event is the status when the stream opens: wait for it before starting.
    let mut lines = std::io::BufReader::new(watch.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut lines, &mut first).unwrap();
    stdout(&donode(run.path(), &["resume", &id]));
    std::thread::sleep(std::time::Duration::from_millis(600));
    stdout(&donode(run.path(), &["pause", &id]));
    let paused: Value =
        serde_json::from_str(&stdout(&donode(run.path(), &["status", &id, "--json"]))).unwrap();
    assert_eq!(paused["State"], "Paused");
    stdout(&donode(run.path(), &["resume", &id]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let s: Value =
            serde_json::from_str(&stdout(&donode(run.path(), &["status", &id, "--json"]))).unwrap();
        if s["State"] == "Transferred" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stdout(&donode(run.path(), &["finalize", &id]));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut lines, &mut rest).unwrap();
    assert!(watch.wait().unwrap().success());
    let states: Vec<String> = std::iter::once(first.as_str())
        .chain(rest.lines())
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["State"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for want in ["Created", "Transferring", "Paused", "Transferred"] {
        assert!(states.iter().any(|s| s == want), "watch saw {states:?}");
    }
    assert_eq!(
        b3sum(&target).unwrap(),
        b3sum(&root.path().join("f.bin")).unwrap()
    );
    let gone = donode(run.path(), &["status", &id]);
    assert_eq!(gone.status.code(), Some(1), "finalized downloads are gone");
    drop(d);
    let none = donode(run.path(), &["list"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no donode daemon"));
}
