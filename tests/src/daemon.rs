//! A `donode run` daemon as a child process.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::donode_bin;

/// A `donode run` daemon with its own run and cache directories; stopped with SIGTERM on drop.
pub struct Daemon {
    child: Child,
    /// The port of its REST API on 127.0.0.1.
    pub port: u16,
    /// Its run dir (where the port file is).
    pub run_dir: PathBuf,
}

impl Daemon {
    /// Starts `donode run` and waits (up to 10 s) for its port file.
    pub fn start(run_dir: &Path, cache: &Path) -> Self {
        let child = Command::new(donode_bin())
            .arg("run")
            .arg("--run-dir")
            .arg(run_dir)
            .arg("--cache-dir")
            .arg(cache)
            .arg("--admin-config")
            .arg(run_dir.join("admin-config.json"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn donode run");
        let port_file = run_dir.join(format!("restport.{}", child.id()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not write its port file"
            );
            thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            port,
            run_dir: run_dir.to_path_buf(),
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it with SIGTERM and asserts a clean exit.
    pub fn stop(mut self) {
        let status = self.terminate();
        assert!(status.success(), "graceful shutdown: {status}");
    }

    /// Kills it with SIGKILL (a crash: nothing is flushed, the port file stays).
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL the daemon");
        let _ = self.child.wait();
    }

    /// Sends raw bytes on a fresh connection and reads until the daemon closes it.
    pub fn raw(&self, bytes: &[u8]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the daemon");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s.write_all(bytes).expect("send");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8(out).expect("the daemon answers UTF-8")
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait for the daemon")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}
