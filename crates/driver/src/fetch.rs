//! A fetch task: one origin request streamed into the cache, block by block.

use std::{sync::Arc, time::Duration};

use do_content::{BLOCK_SIZE, BlockHash, BlockHasher, BlockIndex, ByteRange, block_range};
use do_engine::{Failure, RequestId};
use do_origin::{Client, Headers, Validators};
use do_store::{EntryId, Store, Writer};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::actor::IoEvent;

/// Everything one fetch needs.
pub(crate) struct FetchTask {
    pub(crate) request: RequestId,
    pub(crate) origin: Client,
    pub(crate) url: String,
    pub(crate) headers: Headers,
    pub(crate) range: ByteRange,
    pub(crate) whole: bool,
    pub(crate) if_range: Validators,
    pub(crate) file_len: u64,
    pub(crate) writer: Writer,
    pub(crate) store: Arc<Store>,
    pub(crate) entry: EntryId,
    pub(crate) io_tx: mpsc::Sender<IoEvent>,
    pub(crate) cancel: CancellationToken,
    pub(crate) checkpoint_bytes: u64,
    pub(crate) checkpoint_interval: Duration,
    /// For a background download: whether a foreground one is active, and the rate (bytes
    /// per second) to keep to meanwhile.
    pub(crate) yield_to: Option<(watch::Receiver<bool>, u64)>,
}

/// Runs a fetch to its end and reports it. On cancellation it records the blocks it finished
/// and reports nothing more (the engine has forgotten the request).
pub(crate) async fn run(task: FetchTask) {
    let mut batch = Vec::new();
    let cancel = task.cancel.clone();
    let result = tokio::select! {
        r = stream(&task, &mut batch) => r,
        () = cancel.cancelled() => Err(None),
    };
    let committed = commit(&task, std::mem::take(&mut batch)).await;
    // The first failure is the one to report: a commit that fails after a write failed
    // (a full disk fails both) would only hide the cause.
    let result = match (result, committed) {
        (Err(None), _) => return,
        (Err(Some(failure)), _) | (Ok(()), Err(failure)) => Err(failure),
        (Ok(()), Ok(())) => Ok(()),
    };
    let request = task.request;
    let _ = task
        .io_tx
        .send(IoEvent::FetchEnded { request, result })
        .await;
}

/// Streams the response into the data file. `Err(None)` is never produced here; the type
/// leaves room for the cancellation arm of [`run`].
async fn stream(
    task: &FetchTask,
    batch: &mut Vec<(BlockIndex, BlockHash)>,
) -> Result<(), Option<Failure>> {
    let range = (!task.whole).then_some((task.range.start, task.range.end));
    let if_range = (!task.if_range.is_empty()).then_some(&task.if_range);
    let mut body = task
        .origin
        .get(&task.url, &task.headers, range, if_range)
        .await
        .map_err(|e| Some(failure(e)))?;
    if body.offset() != task.range.start {
        return Err(Some(Failure::Fatal(
            do_origin::hresult::DO_E_HTTP_BLOCKSIZE_MISMATCH,
        )));
    }
    let mut pos = task.range.start;
    let mut block = BlockIndex(pos / BLOCK_SIZE);
    let mut hasher = BlockHasher::new(task.file_len, block);
    let mut batch_bytes = 0u64;
    let mut last_commit = tokio::time::Instant::now();
    while pos < task.range.end {
        let Some(chunk) = body.chunk().await.map_err(|e| Some(failure(e)))? else {
            return Err(Some(Failure::Transient(
                do_origin::hresult::DO_E_HTTP_BLOCKSIZE_MISMATCH,
            )));
        };
        // Never take more than asked for, whatever the origin sends.
        let take = chunk.len().min((task.range.end - pos) as usize);
        let mut data = &chunk[..take];
        task.writer
            .write_at(pos, data)
            .map_err(|e| Some(Failure::Fatal(e.hresult())))?;
        while !data.is_empty() {
            let block_end = block_range(task.file_len, block).end;
            let n = data.len().min((block_end - pos) as usize);
            hasher.update(&data[..n]);
            data = &data[n..];
            pos += n as u64;
            if pos == block_end {
                batch.push((block, hasher.finalize()));
                let bytes = block_range(task.file_len, block).len();
                batch_bytes += bytes;
                let event = IoEvent::Block {
                    request: task.request,
                    block,
                    bytes,
                };
                task.io_tx.send(event).await.map_err(|_| None)?;
                block = BlockIndex(block.0 + 1);
                hasher = BlockHasher::new(task.file_len, block);
            }
        }
        if let Some((foreground, rate)) = &task.yield_to
            && *foreground.borrow()
        {
            // Reading slower lets TCP slow the origin down for this connection, which leaves
            // the bandwidth to the foreground download.
            let pause = Duration::from_secs_f64(take as f64 / (*rate).max(1) as f64);
            tokio::time::sleep(pause).await;
        }
        let due = !batch.is_empty() && last_commit.elapsed() >= task.checkpoint_interval;
        if batch_bytes >= task.checkpoint_bytes || due {
            last_commit = tokio::time::Instant::now();
            commit(task, std::mem::take(batch)).await.map_err(Some)?;
            batch_bytes = 0;
        }
    }
    debug!(bytes = task.range.len(), "fetch complete");
    Ok(())
}

/// Records finished blocks in the index (their bytes were written before they were hashed
/// into the batch, so the index never claims bytes the file lacks).
async fn commit(task: &FetchTask, batch: Vec<(BlockIndex, BlockHash)>) -> Result<(), Failure> {
    if batch.is_empty() {
        return Ok(());
    }
    let (store, entry) = (Arc::clone(&task.store), task.entry);
    tokio::task::spawn_blocking(move || store.commit_blocks(entry, &batch))
        .await
        .map_err(|_| Failure::Fatal(0x80D0_6802))?
        .map_err(|e| Failure::Fatal(e.hresult()))
}

/// Classifies an origin error for the engine.
pub(crate) fn failure(e: do_origin::Error) -> Failure {
    match e {
        do_origin::Error::ContentChanged { .. } => Failure::ContentChanged,
        do_origin::Error::RangeNotSupported => Failure::RangeNotSupported,
        e if e.is_transient() => Failure::Transient(e.hresult()),
        e => Failure::Fatal(e.hresult()),
    }
}
