//! `donode demo`: a self-contained run of the main job. It starts a small HTTP origin on
//! loopback serving a generated file, then downloads it twice through one node (cache
//! directory in a temporary folder): first from the origin, then from the cache. Each output
//! is checked against the file's BLAKE3 hash, and the bytes by source are printed.

use std::{process::ExitCode, sync::Arc, time::Instant};

use anyhow::{Context, bail};
use do_content::{ContentId, Manifest};
use do_driver::{Config, Headers, Layout, Node, Request};
use do_engine::State;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Arguments of `donode demo`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Size of the generated file in MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: u64,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let data: Arc<Vec<u8>> = Arc::new(generate(args.size_mib << 20));
    let content_id = ContentId::of(&data);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/demo.bin", listener.local_addr()?);
    let origin = tokio::spawn(serve(listener, Arc::clone(&data)));
    let work = tempfile::tempdir()?;
    println!(
        "origin   {url} ({} bytes, content id {content_id})",
        data.len()
    );
    println!("cache    {}", work.path().join("cache").display());
    println!();
    println!(
        "{:<8} {:>8} {:>14} {:>14} {:>14}  verified",
        "run", "seconds", "BytesFromHttp", "BytesFromCache", "BytesFromPeers"
    );
    let (node, task) = Node::start(Config::new(work.path().join("cache")))?;
    for run in ["first", "second"] {
        let output = work.path().join(format!("{run}.bin"));
        let started = Instant::now();
        let mut download = node
            .download(Request {
                url: url.clone(),
                output: output.clone(),
                ranges: None,
                layout: Layout::Concatenated,
                content_id: Some(content_id),
                overwrite: false,
                headers: Headers::default(),
                no_progress_timeout: None,
                foreground: true,
                previous_url: None,
            })
            .await?;
        let p = download.settled().await?;
        if p.status.state != State::Transferred {
            bail!("download failed: error {:#010x}", p.status.error);
        }
        node.finalize(download.id).await?;
        let verified = Manifest::from_file(&output)
            .with_context(|| format!("reading {}", output.display()))?
            .root()
            == content_id;
        println!(
            "{run:<8} {:>8.3} {:>14} {:>14} {:>14}  {}",
            started.elapsed().as_secs_f64(),
            p.bytes_from_http,
            p.bytes_from_cache,
            0,
            if verified { "yes" } else { "NO" }
        );
        if !verified {
            bail!("{} does not hash to {content_id}", output.display());
        }
    }
    node.shutdown().await?;
    task.await?;
    origin.abort();
    println!();
    println!("The origin sent the file once; the second download came from the verified cache.");
    Ok(ExitCode::SUCCESS)
}

/// Deterministic pseudo-random bytes (SplitMix64).
fn generate(len: u64) -> Vec<u8> {
    let mut state = 0x5EED_u64;
    let mut out = Vec::with_capacity(len as usize + 8);
    while (out.len() as u64) < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

/// A minimal HTTP/1.1 origin: HEAD and GET with single `Range: bytes=a-b` support.
async fn serve(listener: TcpListener, data: Arc<Vec<u8>>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(answer(stream, Arc::clone(&data)));
    }
}

async fn answer(mut stream: TcpStream, data: Arc<Vec<u8>>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let is_head = head.starts_with("HEAD ");
    let len = data.len() as u64;
    let range = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("range: bytes=")
                .map(str::to_owned)
        })
        .and_then(|r| {
            let (a, b) = r.trim().split_once('-')?;
            let start: u64 = a.parse().ok()?;
            let end = if b.is_empty() {
                len - 1
            } else {
                b.parse::<u64>().ok()?.min(len - 1)
            };
            (start <= end).then_some((start, end))
        });
    let (status, start, end) = match range {
        Some((a, b)) => ("206 Partial Content", a, b + 1),
        None => ("200 OK", 0, len),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nETag: \"demo\"\r\nConnection: close\r\n",
        end - start
    );
    if range.is_some() {
        response.push_str(&format!(
            "Content-Range: bytes {start}-{}/{len}\r\n",
            end - 1
        ));
    }
    response.push_str("\r\n");
    stream.write_all(response.as_bytes()).await?;
    if !is_head {
        stream
            .write_all(&data[start as usize..end as usize])
            .await?;
    }
    stream.shutdown().await
}
