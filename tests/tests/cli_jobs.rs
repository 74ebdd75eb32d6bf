//! `donode job ...` against a running daemon.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use do_tests::{Daemon, Nginx, b3sum, donode_bin, temp_dir, write_random_file};
use serde_json::Value;

fn job(run_dir: &Path, args: &[&str]) -> Output {
    Command::new(donode_bin())
        .arg("job")
        .args(args)
        .arg("--run-dir")
        .arg(run_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_job_from_the_command_line() {
    let root = temp_dir();
    write_random_file(&root.path().join("a.bin"), 2 << 20, 31).unwrap();
    write_random_file(&root.path().join("b.bin"), 1 << 20, 32).unwrap();
    let nginx = Nginx::start(root.path()).unwrap();
    let (run, cache, out) = (temp_dir(), temp_dir(), temp_dir());
    let _d = Daemon::start(run.path(), cache.path());
    let r = run.path();
    let id = ok(job(r, &["create", "nightly"]));
    let a = out.path().join("a.bin");
    let b = out.path().join("b.bin");
    assert_eq!(
        ok(job(
            r,
            &["add", &id, &nginx.url("/files/a.bin"), a.to_str().unwrap()]
        )),
        "0"
    );
    assert_eq!(
        ok(job(
            r,
            &[
                "add",
                &id,
                &nginx.url("/files/b.bin"),
                b.to_str().unwrap(),
                "--range",
                "10:20",
                "--range",
                "1000:eof"
            ]
        )),
        "1"
    );
    let e = job(r, &["error", &id]);
    assert_eq!(e.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("0x80d02014"),
        "no error object while SUSPENDED"
    );
    let mut watch = Command::new(donode_bin())
        .args(["job", "watch", &id, "--json", "--run-dir"])
        .arg(r)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The stream opens with the job as it is: once that line is here, nothing can be missed.
    let mut lines = std::io::BufReader::new(watch.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut lines, &mut first).unwrap();
    ok(job(r, &["resume", &id]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info: Value = serde_json::from_str(&ok(job(r, &["info", &id, "--json"]))).unwrap();
        if info["State"] == "TRANSFERRED" {
            assert_eq!(info["Progress"]["FilesTransferred"], 2);
            break;
        }
        assert!(Instant::now() < deadline, "{info}");
        thread::sleep(Duration::from_millis(50));
    }
    assert!(!a.exists(), "nothing under the local names before complete");
    ok(job(r, &["complete", &id]));
    assert_eq!(
        b3sum(&a).unwrap(),
        b3sum(&root.path().join("a.bin")).unwrap()
    );
    let whole = std::fs::read(root.path().join("b.bin")).unwrap();
    let mut want = whole[10..30].to_vec();
    want.extend_from_slice(&whole[1000..]);
    assert_eq!(
        std::fs::read(&b).unwrap(),
        want,
        "ranges concatenated in order"
    );
    let files: Value = serde_json::from_str(&ok(job(r, &["files", &id, "--json"]))).unwrap();
    assert_eq!(files[1]["Progress"]["Completed"], true);
    let list: Value = serde_json::from_str(&ok(job(r, &["list", "--json"]))).unwrap();
    assert_eq!(list[0]["State"], "ACKNOWLEDGED");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut lines, &mut rest).unwrap();
    assert!(watch.wait().unwrap().success());
    let events: Vec<Value> = std::iter::once(first.as_str())
        .chain(rest.lines())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events.iter().any(|e| e["Event"] == "JobTransferred"),
        "{events:?}"
    );
    // Default notify flags (TRANSFERRED | ERROR): no modification events; `watch` has ended
    // because the job did.
    assert!(
        events
            .iter()
            .all(|e| e["Event"] != "JobModification" || e == &events[0]),
        "{events:?}"
    );
    let again = job(r, &["resume", &id]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("0x80d02013"),
        "final state"
    );
}
