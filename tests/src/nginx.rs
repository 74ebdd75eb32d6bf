//! A private nginx instance on 127.0.0.1 with its own config, logs and temp
//! paths in a fresh temporary directory.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::util::free_port;

const NGINX: &str = "/usr/sbin/nginx";
const START_ATTEMPTS: usize = 10;
const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings for [`Nginx::start_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxOptions {
    /// `limit_rate` (bytes per second, per connection) of the `/slow/`
    /// location. `0` means unlimited. Default: 4 MiB/s.
    pub slow_rate_bytes_per_s: u64,
}

impl Default for NginxOptions {
    fn default() -> Self {
        Self {
            slow_rate_bytes_per_s: 4 << 20,
        }
    }
}

/// One parsed line of the instance's access log.
///
/// The log format is
/// `$request_method $uri $status range="$http_range" if_range="$http_if_range" bytes_sent=$bytes_sent body_bytes_sent=$body_bytes_sent`;
/// nginx writes it when the request ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Request method (`GET`, `HEAD`, ...).
    pub method: String,
    /// Normalised request URI without query string (e.g. `/files/a.bin`).
    pub uri: String,
    /// Response status code.
    pub status: u16,
    /// The request's `Range` header, if any.
    pub range: Option<String>,
    /// The request's `If-Range` header, if any.
    pub if_range: Option<String>,
    /// Bytes sent to the client, headers included.
    pub bytes_sent: u64,
    /// Response body bytes sent to the client.
    pub body_bytes_sent: u64,
    /// The raw log line.
    pub raw: String,
}

impl LogLine {
    /// Parses one access-log line in this instance's format.
    pub fn parse(line: &str) -> anyhow::Result<Self> {
        let bad = || format!("malformed access log line: {line:?}");
        let (method, rest) = line.split_once(' ').with_context(bad)?;
        let ir = rest.rfind(" if_range=\"").with_context(bad)?;
        let (before_ir, ir_part) = rest.split_at(ir);
        let r = before_ir.rfind(" range=\"").with_context(bad)?;
        let (uri_status, range_part) = before_ir.split_at(r);
        let (uri, status) = uri_status.rsplit_once(' ').with_context(bad)?;

        let range = range_part
            .strip_prefix(" range=\"")
            .and_then(|s| s.strip_suffix('"'))
            .with_context(bad)?;
        let ir_part = ir_part.strip_prefix(" if_range=\"").with_context(bad)?;
        let (if_range, tail) = ir_part.rsplit_once("\" bytes_sent=").with_context(bad)?;
        let (bytes_sent, body_bytes_sent) =
            tail.split_once(" body_bytes_sent=").with_context(bad)?;

        let opt = |s: &str| (s != "-").then(|| unescape(s));
        Ok(Self {
            method: method.to_owned(),
            uri: unescape(uri),
            status: status.parse().with_context(bad)?,
            range: opt(range),
            if_range: opt(if_range),
            bytes_sent: bytes_sent.trim().parse().with_context(bad)?,
            body_bytes_sent: body_bytes_sent.trim().parse().with_context(bad)?,
            raw: line.to_owned(),
        })
    }
}

/// Undoes nginx's access-log escaping (`"`, `\\`, control and non-ASCII
/// bytes are written as `\xHH`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'\\' && b.get(i + 1) == Some(&b'x'))
            .then(|| b.get(i + 2..i + 4))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let Some(v) = escaped {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The nginx master process; stopped (SIGTERM, then SIGKILL of its process
/// group) and reaped on drop.
#[derive(Debug)]
struct NginxProcess {
    child: Child,
    reaped: bool,
}

impl NginxProcess {
    /// Non-blocking check whether the master exited (reaps it if so).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        if self.reaped {
            return None;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.reaped = true;
                Some(status)
            }
            _ => None,
        }
    }

    fn stop(&mut self) {
        if self.reaped {
            return;
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: plain kill(2) on our own, not yet reaped child (so the pid
        // cannot have been reused).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) | Err(_) = self.child.try_wait() {
                self.reaped = true;
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Still alive (and unreaped, so its pid/pgid is still ours): kill the
        // whole process group, workers included.
        // SAFETY: kill(2) on the process group led by our unreaped child.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for NginxProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private nginx instance listening on `127.0.0.1:<free port>`.
///
/// Locations:
/// * `/files/<name>` — files under `root`, with Range, ETag, Last-Modified
///   and `Accept-Ranges: bytes`.
/// * `/norange/<name>` — the same files with `max_ranges 0` (Range ignored,
///   always `200` with the full body).
/// * `/slow/<name>` — the same files with `limit_rate`
///   [`NginxOptions::slow_rate_bytes_per_s`].
/// * `/status/403`, `/status/404`, `/status/500`, `/status/503` — those
///   statuses.
///
/// Dropping it stops nginx and waits for it to exit, then removes its
/// temporary directory.
#[derive(Debug)]
pub struct Nginx {
    // Field order matters: the process must stop before its dir is removed.
    process: NginxProcess,
    ip: Ipv4Addr,
    port: u16,
    root: PathBuf,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx serving `root` with default [`NginxOptions`].
    pub fn start(root: &Path) -> anyhow::Result<Self> {
        Self::start_with(root, NginxOptions::default())
    }

    /// Starts nginx serving `root` with `options`, waiting until it accepts
    /// connections. Retries with another port if the chosen one was taken.
    pub fn start_with(root: &Path, options: NginxOptions) -> anyhow::Result<Self> {
        Self::start_at(root, options, &Place::Loopback)
    }

    /// Starts nginx inside network namespace `netns`, listening on `ip` (an address of that
    /// namespace) port 8080: an origin on a test LAN.
    pub fn start_in_netns(
        root: &Path,
        options: NginxOptions,
        netns: &str,
        ip: Ipv4Addr,
    ) -> anyhow::Result<Self> {
        let place = Place::Netns {
            name: netns.to_owned(),
            ip,
        };
        Self::start_at(root, options, &place)
    }

    fn start_at(root: &Path, options: NginxOptions, place: &Place) -> anyhow::Result<Self> {
        let root = root
            .canonicalize()
            .with_context(|| format!("nginx root {}", root.display()))?;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&root, &options, place)? {
                Ok(nginx) => return Ok(nginx),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt").context(format!(
            "nginx failed to bind a port in {START_ATTEMPTS} attempts"
        )))
    }

    /// One start attempt. The outer error is fatal; the inner one means "port
    /// taken, retry".
    fn try_start(
        root: &Path,
        options: &NginxOptions,
        place: &Place,
    ) -> anyhow::Result<Result<Self, anyhow::Error>> {
        let dir = tempfile::Builder::new()
            .prefix("do-tests-nginx-")
            .tempdir()
            .context("creating nginx temp dir")?;
        let (ip, port) = match place {
            Place::Loopback => (Ipv4Addr::LOCALHOST, free_port()?),
            Place::Netns { ip, .. } => (*ip, NETNS_PORT),
        };
        let conf = dir.path().join("nginx.conf");
        let listen = SocketAddr::from((ip, port));
        std::fs::write(&conf, config(dir.path(), root, listen, options))
            .context("writing nginx.conf")?;
        let stderr = std::fs::File::create(dir.path().join("stderr.log"))?;
        let mut prefix = dir.path().as_os_str().to_owned();
        prefix.push("/");
        let mut command = match place {
            Place::Loopback => Command::new(NGINX),
            Place::Netns { name, .. } => {
                // `ip netns exec` execs nginx: the child is nginx's master.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", name, NGINX]);
                c
            }
        };
        let child = command
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {NGINX}"))?;
        let mut nginx = Self {
            process: NginxProcess {
                child,
                reaped: false,
            },
            ip,
            port,
            root: root.to_path_buf(),
            dir,
        };

        let pid_file = nginx.dir.path().join("nginx.pid");
        let addr = SocketAddr::from((ip, port));
        let accepts = || match place {
            Place::Loopback => {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            }
            Place::Netns { name, .. } => Command::new("ip")
                .args(["netns", "exec", name, "curl", "-s", "-o", "/dev/null"])
                .arg(format!("http://{addr}/"))
                .status()
                .is_ok_and(|s| s.success()),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = nginx.process.exited() {
                let logs = nginx.startup_logs();
                if logs.contains("Address already in use") {
                    return Ok(Err(anyhow::anyhow!("port {port} taken: {}", logs.trim())));
                }
                bail!("nginx exited during startup ({status}): {}", logs.trim());
            }
            // The pid file is written after the listening sockets are bound.
            if pid_file.exists() && accepts() {
                return Ok(Ok(nginx));
            }
            if Instant::now() > deadline {
                let logs = nginx.startup_logs();
                bail!(
                    "nginx did not accept connections on {addr} within {START_TIMEOUT:?}: {}",
                    logs.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn startup_logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }

    /// The TCP port nginx listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket address nginx listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.port))
    }

    /// Full URL for `path`, e.g. `url("/files/a.bin")` →
    /// `http://127.0.0.1:PORT/files/a.bin`.
    pub fn url(&self, path: &str) -> String {
        let slash = if path.starts_with('/') { "" } else { "/" };
        format!("http://{}:{}{slash}{path}", self.ip, self.port)
    }

    /// The (canonicalised) directory being served.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The instance's private directory (config, logs, temp paths).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the access log.
    pub fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// Contents of nginx's error log (useful in assertion messages).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// All completed requests so far, parsed from the access log.
    ///
    /// # Panics
    ///
    /// Panics if a line does not parse (which would be a harness bug).
    pub fn log_lines(&self) -> Vec<LogLine> {
        let text = std::fs::read_to_string(self.access_log_path()).unwrap_or_default();
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| LogLine::parse(l).expect("parsing nginx access log"))
            .collect()
    }

    /// Waits until at least `n` requests have been logged (nginx logs a
    /// request when it ends) and returns all log lines; errors on timeout.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<LogLine>> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.log_lines();
            if lines.len() >= n {
                return Ok(lines);
            }
            if Instant::now() >= deadline {
                bail!(
                    "only {} of {n} requests logged within {timeout:?}: {lines:#?}",
                    lines.len()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Empties the access log (subsequent [`log_lines`](Self::log_lines)
    /// only see later requests).
    pub fn clear_log(&self) -> anyhow::Result<()> {
        // nginx opens the log with O_APPEND, so truncating in place is safe.
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.access_log_path())
            .context("truncating access log")?;
        Ok(())
    }

    /// Total bytes sent to clients (headers + bodies) over all logged
    /// requests.
    pub fn egress_bytes(&self) -> u64 {
        self.log_lines().iter().map(|l| l.bytes_sent).sum()
    }

    /// Total response body bytes sent over all logged requests.
    pub fn body_bytes(&self) -> u64 {
        self.log_lines().iter().map(|l| l.body_bytes_sent).sum()
    }
}

/// Quotes a path for nginx.conf.
fn q(p: &Path) -> String {
    let s = p.to_str().expect("nginx paths must be UTF-8");
    assert!(
        !s.contains(['"', '\\', '$']),
        "unsupported character in nginx path {s:?}"
    );
    format!("\"{s}\"")
}

/// Where an instance listens.
enum Place {
    /// 127.0.0.1, a free port.
    Loopback,
    /// Inside a network namespace, on one of its addresses, port [`NETNS_PORT`].
    Netns { name: String, ip: Ipv4Addr },
}

/// The port of an instance in a namespace (nothing else listens there).
const NETNS_PORT: u16 = 8080;

fn config(dir: &Path, root: &Path, listen: SocketAddr, options: &NginxOptions) -> String {
    let mut c = String::new();
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        c.push_str("user root;\n");
    }
    let d = |name: &str| q(&dir.join(name));
    let alias = {
        let mut s = root.to_str().expect("nginx root must be UTF-8").to_owned();
        if !s.ends_with('/') {
            s.push('/');
        }
        q(Path::new(&s))
    };
    let _ = write!(
        c,
        r#"daemon off;
master_process on;
worker_processes 1;
pid {pid};
error_log {error_log} info;

events {{
    worker_connections 1024;
}}

http {{
    types {{
        application/octet-stream bin;
    }}
    default_type application/octet-stream;

    log_format dotests '$request_method $uri $status range="$http_range" if_range="$http_if_range" bytes_sent=$bytes_sent body_bytes_sent=$body_bytes_sent';
    access_log {access_log} dotests;

    client_body_temp_path {client};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};

    sendfile on;
    tcp_nopush on;
    etag on;
    server_tokens off;
    keepalive_timeout 65;

    server {{
        listen {listen};
        server_name localhost;

        location / {{
            return 404;
        }}
        location /files/ {{
            alias {alias};
        }}
        location /norange/ {{
            alias {alias};
            max_ranges 0;
        }}
        location /slow/ {{
            alias {alias};
            limit_rate {rate};
        }}
        location = /status/403 {{
            return 403;
        }}
        location = /status/404 {{
            return 404;
        }}
        location = /status/500 {{
            return 500;
        }}
        location = /status/503 {{
            return 503;
        }}
    }}
}}
"#,
        pid = d("nginx.pid"),
        error_log = d("error.log"),
        access_log = d("access.log"),
        client = d("client_body_temp"),
        proxy = d("proxy_temp"),
        fastcgi = d("fastcgi_temp"),
        uwsgi = d("uwsgi_temp"),
        scgi = d("scgi_temp"),
        rate = options.slow_rate_bytes_per_s,
    );
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_line() {
        let l = LogLine::parse(
            r#"GET /files/a.bin 206 range="bytes=0-99" if_range="-" bytes_sent=345 body_bytes_sent=100"#,
        )
        .unwrap();
        assert_eq!(l.method, "GET");
        assert_eq!(l.uri, "/files/a.bin");
        assert_eq!(l.status, 206);
        assert_eq!(l.range.as_deref(), Some("bytes=0-99"));
        assert_eq!(l.if_range, None);
        assert_eq!(l.bytes_sent, 345);
        assert_eq!(l.body_bytes_sent, 100);

        let l = LogLine::parse(
            r#"GET /files/a b 200 range="-" if_range="\x22abc-12\x22" bytes_sent=1 body_bytes_sent=0"#,
        )
        .unwrap();
        assert_eq!(l.uri, "/files/a b");
        assert_eq!(l.range, None);
        assert_eq!(l.if_range.as_deref(), Some("\"abc-12\""));
    }
}
