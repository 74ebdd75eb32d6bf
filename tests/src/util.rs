//! Small helpers: locating the `donode` binary, deterministic random files,
//! BLAKE3 via `b3sum`, temp dirs and free ports.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

/// Path of the `donode` binary in the same cargo target directory (and
/// profile) as the running test executable.
///
/// Starting from [`std::env::current_exe`] (e.g.
/// `target/debug/deps/harness-0123abcd`), this leaves `deps/` for the profile
/// directory and joins `donode`.
///
/// # Panics
///
/// Panics with an explanatory message if the binary does not exist (build it
/// first, e.g. `cargo build -p donode`).
pub fn donode_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot determine the current test executable");
    let mut dir = exe
        .parent()
        .expect("test executable has no parent directory")
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let bin = dir.join(format!("donode{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "donode binary not found at {} (derived from test executable {}); \
         build it first with `cargo build -p donode` using the same profile and target dir",
        bin.display(),
        exe.display()
    );
    bin
}

/// SplitMix64 step: advances `state` and returns the next output.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Deterministic pseudo-random generator state for a stream of bytes.
struct ByteStream {
    state: u64,
}

impl ByteStream {
    fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// Fills `buf` with the next bytes of the stream. `buf.len()` must be a
    /// multiple of 8 except for the final call.
    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&splitmix64(&mut self.state).to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let word = splitmix64(&mut self.state).to_le_bytes();
            rest.copy_from_slice(&word[..rest.len()]);
        }
    }
}

/// Fills `buf` with the deterministic pseudo-random stream for `seed`.
///
/// Identical to the first `buf.len()` bytes of [`random_bytes`]`(len, seed)`
/// and of a file written by [`write_random_file`] with the same seed.
pub fn fill_random(buf: &mut [u8], seed: u64) {
    ByteStream::new(seed).fill(buf);
}

/// Returns `len` deterministic pseudo-random bytes for `seed` (the same
/// bytes [`write_random_file`] writes).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_random(&mut v, seed);
    v
}

/// Writes `len` deterministic pseudo-random bytes (SplitMix64 stream seeded
/// with `seed`) to `path`, creating or truncating it.
///
/// The content depends only on `seed`; a shorter file is a prefix of a
/// longer one with the same seed.
pub fn write_random_file(path: &Path, len: u64, seed: u64) -> anyhow::Result<()> {
    const BUF: usize = 1 << 20;
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::with_capacity(BUF, file);
    let mut rng = ByteStream::new(seed);
    let mut buf = vec![0u8; BUF];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(BUF as u64)).expect("chunk fits usize");
        rng.fill(&mut buf[..n]);
        out.write_all(&buf[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("flushing {}", path.display()))?;
    file.sync_all().ok();
    Ok(())
}

/// BLAKE3 hash of the file at `path` as 64 lowercase hex characters, computed
/// by `/usr/bin/b3sum --no-names`.
pub fn b3sum(path: &Path) -> anyhow::Result<String> {
    let out = Command::new("/usr/bin/b3sum")
        .arg("--no-names")
        .arg(path)
        .output()
        .context("running /usr/bin/b3sum")?;
    if !out.status.success() {
        bail!(
            "b3sum {} failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let hex = String::from_utf8(out.stdout)
        .context("b3sum output is not UTF-8")?
        .trim()
        .to_owned();
    ensure!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "unexpected b3sum output: {hex:?}"
    );
    Ok(hex)
}

/// A fresh temporary directory (prefix `do-tests-`), removed when dropped.
///
/// # Panics
///
/// Panics if the directory cannot be created.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("do-tests-")
        .tempdir()
        .expect("creating temporary directory")
}

/// A currently free TCP port on 127.0.0.1 (bound to port 0, then released).
///
/// Another process may grab it before you bind it; callers should retry on
/// bind failure.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding 127.0.0.1:0 to find a port")?;
    Ok(listener.local_addr()?.port())
}
