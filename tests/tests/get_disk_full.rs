//! `donode get` on a full disk: a 4 MiB tmpfs holds both the cache and the output, the file is
//! 8 MiB. The download must fail with "no space left on the device" (0xc0d0001c) and leave no
//! output file. Needs root (to mount the tmpfs); the test fails with a clear message otherwise.

use std::path::Path;
use std::process::Command;

use do_tests::{DonodeGet, Nginx, Outcome, assert_no_output, temp_dir, write_random_file};
use tempfile::TempDir;

/// A small tmpfs mounted on a fresh temporary directory; unmounted on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = temp_dir();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs on {} ({}): {} \
             (this test needs root, or CAP_SYS_ADMIN, to simulate a full disk)",
            dir.path().display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (should not happen: donode has exited): detach it lazily.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Downloads an 8 MiB file into a 4 MiB tmpfs (cache and output both there).
fn fill_the_disk() -> (Tmpfs, std::path::PathBuf, Outcome) {
    let root = temp_dir();
    write_random_file(&root.path().join("big.bin"), 8 << 20, 1).unwrap();
    let nginx = Nginx::start(root.path()).unwrap();
    let fs = Tmpfs::mount("4m");
    let out = fs.path().join("out.bin");
    let run = DonodeGet::new(&nginx.url("/files/big.bin"), &out, &fs.path().join("cache"))
        .args(["--no-progress-timeout", "10"])
        .run();
    (fs, out, run)
}

#[test]
fn no_space_left_fails_without_output() {
    let (_fs, out, run) = fill_the_disk();
    run.assert_code(1).assert_stderr_contains("donode: http://");
    assert_no_output(&out);
}

#[test]
fn no_space_left_is_reported_as_such() {
    let (_fs, out, run) = fill_the_disk();
    run.assert_code(1)
        .assert_stderr_contains("no space left on the device")
        .assert_stderr_contains("0xc0d0001c");
    assert_no_output(&out);
}
