//! Running `donode get` as a child process and checking what it left behind.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::util::donode_bin;

/// How long [`DonodeGet::run`] waits before killing a hung `donode`.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A `donode get URL -o OUTPUT [--cache-dir CACHE] [ARGS...]` invocation.
#[derive(Debug, Clone)]
pub struct DonodeGet {
    args: Vec<OsString>,
    timeout: Duration,
}

impl DonodeGet {
    /// `donode get URL -o OUTPUT --cache-dir CACHE`.
    pub fn new(url: &str, output: &Path, cache_dir: &Path) -> Self {
        Self {
            args: vec![
                "get".into(),
                url.into(),
                "-o".into(),
                output.into(),
                "--cache-dir".into(),
                cache_dir.into(),
            ],
            timeout: DEFAULT_RUN_TIMEOUT,
        }
    }

    /// Appends one argument.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends several arguments.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Kills the process (and fails the run) after `timeout`.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The command, ready to spawn (stdin null, stdout/stderr inherited).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(donode_bin());
        cmd.args(&self.args).stdin(Stdio::null());
        cmd
    }

    /// Spawns with piped stdout/stderr; finish with [`Running::wait`].
    ///
    /// # Panics
    ///
    /// Panics if the process cannot be spawned.
    pub fn spawn(&self) -> Running {
        let started = Instant::now();
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning donode");
        let stdout = reader(child.stdout.take().expect("piped stdout"));
        let stderr = reader(child.stderr.take().expect("piped stderr"));
        Running {
            child,
            stdout,
            stderr,
            started,
            timeout: self.timeout,
            args: self.args.clone(),
        }
    }

    /// Runs to completion and returns the outcome.
    ///
    /// # Panics
    ///
    /// Panics if the process cannot be spawned or does not finish within the
    /// timeout (it is killed first).
    pub fn run(&self) -> Outcome {
        self.spawn().wait()
    }
}

fn reader(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A running `donode get` started by [`DonodeGet::spawn`].
#[derive(Debug)]
pub struct Running {
    child: Child,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
    started: Instant,
    timeout: Duration,
    args: Vec<OsString>,
}

impl Running {
    /// The process id.
    pub fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t")
    }

    /// Sends `signal` to the process (only while it has not been reaped, so
    /// the pid is still ours).
    ///
    /// # Panics
    ///
    /// Panics if the process already exited or `kill(2)` fails.
    pub fn signal(&mut self, signal: libc::c_int) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "donode exited before it could be signalled"
        );
        // SAFETY: kill(2) on our own child, which has not been reaped (checked
        // just above), so its pid cannot have been reused.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Whether the process has exited (without reaping the outcome's output).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// Waits for the process (killing it after the timeout) and collects its
    /// output.
    ///
    /// # Panics
    ///
    /// Panics if it had to be killed for running too long.
    pub fn wait(mut self) -> Outcome {
        let deadline = self.started + self.timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.stderr.join().unwrap_or_default();
                panic!(
                    "donode {:?} did not finish within {:?}; stderr:\n{stderr}",
                    self.args, self.timeout
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let elapsed = self.started.elapsed();
        let stdout = self.stdout.join().unwrap_or_default();
        let stderr = self.stderr.join().unwrap_or_default();
        use std::os::unix::process::ExitStatusExt as _;
        Outcome {
            code: status.code(),
            signal: status.signal(),
            stdout,
            stderr,
            elapsed,
            args: self.args,
        }
    }
}

/// How a `donode get` run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// The terminating signal, if any.
    pub signal: Option<i32>,
    /// Everything written to standard output.
    pub stdout: String,
    /// Everything written to standard error.
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
    /// The arguments (after the binary).
    pub args: Vec<OsString>,
}

impl Outcome {
    /// Asserts the exit code is `code`, showing the run's output otherwise.
    ///
    /// # Panics
    ///
    /// Panics if it is not.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "donode {:?}: expected exit code {code}, got {:?} (signal {:?}) after {:?}\n\
             stdout: {}\nstderr: {}",
            self.args,
            self.code,
            self.signal,
            self.elapsed,
            self.stdout.trim(),
            self.stderr.trim()
        );
        self
    }

    /// Asserts standard error contains `needle` (case-insensitive).
    ///
    /// # Panics
    ///
    /// Panics if it does not.
    #[track_caller]
    pub fn assert_stderr_contains(&self, needle: &str) -> &Self {
        assert!(
            self.stderr
                .to_ascii_lowercase()
                .contains(&needle.to_ascii_lowercase()),
            "donode {:?}: stderr does not contain {needle:?}:\n{}",
            self.args,
            self.stderr.trim()
        );
        self
    }

    /// The `--json` summary printed on standard output.
    ///
    /// # Panics
    ///
    /// Panics if standard output holds no parseable summary.
    #[track_caller]
    pub fn summary(&self) -> Summary {
        Summary::parse(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "donode {:?}: no JSON summary on stdout ({e}): {:?}\nstderr: {}",
                self.args,
                self.stdout,
                self.stderr.trim()
            )
        })
    }
}

/// The one-line `--json` summary of a successful `donode get`.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// `url`.
    pub url: String,
    /// `output`.
    pub output: String,
    /// `content_id` (`null` for ranges).
    pub content_id: Option<String>,
    /// `bytes_total`.
    pub bytes_total: u64,
    /// `BytesFromHttp`.
    pub bytes_from_http: u64,
    /// `BytesFromCache`.
    pub bytes_from_cache: u64,
    /// `seconds`.
    pub seconds: f64,
}

impl Summary {
    /// Parses the flat JSON object `donode get --json` prints.
    pub fn parse(line: &str) -> Result<Self, String> {
        let fields = parse_flat_object(line)?;
        let get = |k: &str| {
            fields
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| format!("missing field {k:?}"))
        };
        let string = |k: &str| match get(k)? {
            Value::String(s) => Ok(s),
            v => Err(format!("field {k:?} is not a string: {v:?}")),
        };
        let number = |k: &str| match get(k)? {
            Value::Number(s) => Ok(s),
            v => Err(format!("field {k:?} is not a number: {v:?}")),
        };
        let uint = |k: &str| {
            number(k)?
                .parse::<u64>()
                .map_err(|e| format!("field {k:?}: {e}"))
        };
        Ok(Self {
            url: string("url")?,
            output: string("output")?,
            content_id: match get("content_id")? {
                Value::String(s) => Some(s),
                Value::Null => None,
                v => return Err(format!("content_id: unexpected {v:?}")),
            },
            bytes_total: uint("bytes_total")?,
            bytes_from_http: uint("BytesFromHttp")?,
            bytes_from_cache: uint("BytesFromCache")?,
            seconds: number("seconds")?
                .parse()
                .map_err(|e| format!("seconds: {e}"))?,
        })
    }
}

/// A JSON scalar.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    String(String),
    /// The number's text.
    Number(String),
    Bool(bool),
    Null,
}

/// Parses a JSON object whose values are all scalars.
fn parse_flat_object(s: &str) -> Result<Vec<(String, Value)>, String> {
    let mut p = Parser {
        b: s.as_bytes(),
        i: 0,
    };
    p.ws();
    p.expect(b'{')?;
    let mut out = Vec::new();
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            p.ws();
            let key = p.string()?;
            p.ws();
            p.expect(b':')?;
            p.ws();
            let value = p.value()?;
            out.push((key, value));
            p.ws();
            match p.next() {
                Some(b',') => {}
                Some(b'}') => break,
                other => return Err(format!("expected , or }} at {}, got {other:?}", p.i)),
            }
        }
    }
    p.ws();
    if p.i != p.b.len() {
        return Err(format!("trailing characters at {}", p.i));
    }
    Ok(out)
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        match self.next() {
            Some(got) if got == c => Ok(()),
            got => Err(format!(
                "expected {:?} at {}, got {got:?}",
                c as char,
                self.i.saturating_sub(1)
            )),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.next().ok_or("unterminated string")? {
                b'"' => break,
                b'\\' => match self.next().ok_or("unterminated escape")? {
                    b'"' => out.push(b'"'),
                    b'\\' => out.push(b'\\'),
                    b'/' => out.push(b'/'),
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'u' => {
                        let hex = self.b.get(self.i..self.i + 4).ok_or("short \\u escape")?;
                        self.i += 4;
                        let hex = std::str::from_utf8(hex).map_err(|e| e.to_string())?;
                        let cp = u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
                        let ch = char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER);
                        let mut tmp = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
                    }
                    c => return Err(format!("bad escape \\{}", c as char)),
                },
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|e| e.to_string())
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.peek().ok_or("missing value")? {
            b'"' => Ok(Value::String(self.string()?)),
            b'n' => self.word("null", Value::Null),
            b't' => self.word("true", Value::Bool(true)),
            b'f' => self.word("false", Value::Bool(false)),
            _ => {
                let start = self.i;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_digit() || b"+-.eE".contains(&c))
                {
                    self.i += 1;
                }
                if start == self.i {
                    return Err(format!("unexpected character at {start}"));
                }
                let text =
                    std::str::from_utf8(&self.b[start..self.i]).map_err(|e| e.to_string())?;
                Ok(Value::Number(text.to_owned()))
            }
        }
    }

    fn word(&mut self, w: &str, v: Value) -> Result<Value, String> {
        if self.b[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(v)
        } else {
            Err(format!("bad literal at {}", self.i))
        }
    }
}

/// Names of the export temporaries (`.NAME.donode-*`, and anything else
/// containing `.donode-`) in `dir`.
pub fn donode_temp_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".donode-"))
        .map(|e| e.path())
        .collect()
}

/// Asserts that `output` does not exist (not even as a dangling symlink) and
/// that no donode temporary is left next to it.
///
/// # Panics
///
/// Panics otherwise.
#[track_caller]
pub fn assert_no_output(output: &Path) {
    assert!(
        std::fs::symlink_metadata(output).is_err(),
        "{} exists after a failed download",
        output.display()
    );
    assert_no_temp_files(output);
}

/// Asserts no donode temporary is left in `output`'s directory.
///
/// # Panics
///
/// Panics otherwise.
#[track_caller]
pub fn assert_no_temp_files(output: &Path) {
    if let Some(dir) = output.parent() {
        let left = donode_temp_files(dir);
        assert!(left.is_empty(), "temporary files left behind: {left:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_summary() {
        let s = Summary::parse(
            r#"{"BytesFromCache":0,"BytesFromHttp":8388608,"bytes_total":8388608,"content_id":"49bc","output":"/tmp/a \"b\"","seconds":0.0184,"url":"http://x/\u0041"}"#,
        )
        .unwrap();
        assert_eq!(s.bytes_from_http, 8_388_608);
        assert_eq!(s.bytes_from_cache, 0);
        assert_eq!(s.bytes_total, 8_388_608);
        assert_eq!(s.content_id.as_deref(), Some("49bc"));
        assert_eq!(s.output, "/tmp/a \"b\"");
        assert_eq!(s.url, "http://x/A");
        let s = Summary::parse(
            r#"{"BytesFromCache":1,"BytesFromHttp":2,"bytes_total":3,"content_id":null,"output":"o","seconds":1e-3,"url":"u"}"#,
        )
        .unwrap();
        assert_eq!(s.content_id, None);
        assert!(Summary::parse("{}").is_err());
        assert!(Summary::parse("").is_err());
    }
}
