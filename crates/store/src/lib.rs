//! The piece cache: verified blocks on disk, indexed in an embedded database.
//!
//! A cache directory holds `index.redb` (the index) and `data/<entry>.data` (one sparse file per
//! cached file, blocks at their own offsets). An *entry* is one version of one remote file: its
//! URL, length and validators, and, once every block is known, its [`ContentId`].
//!
//! # The one rule
//!
//! A block is recorded as verified in the index only after its bytes were written to the data
//! file, and a block's record holds the block's BLAKE3 hash. Every read of cached bytes checks
//! them against that hash again, so even bytes changed behind the store's back (a crash of the
//! machine, a user editing a file, garbage written into the directory) are caught: the block is
//! forgotten and fetched again, never handed out. A block goes from absent to verified; it only
//! leaves the index when its whole entry is evicted or when such a re-check fails.
//!
//! # Quotas
//!
//! Entries are evicted whole, least recently used first, when the cache is over its size quota
//! or an entry is older than the maximum age (Windows DO's defaults: 10 GB and 3 days). Entries
//! in use are pinned ([`Store::pin`]) and never evicted.
//!
//! The store does no scheduling and no networking; the driver calls it.
#![warn(missing_docs)]

mod entry;
mod error;
mod export;

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use do_content::{BLOCK_SIZE, BlockHash, BlockIndex, ContentId, Manifest, RangeSet, block_count};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tracing::{debug, info, warn};

pub use entry::{EntryId, EntryMeta};
pub use error::Error;
pub use export::{Export, Layout};

/// Store configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Size quota for all cached data, in bytes. Default 10 GB (DO's `DOAbsoluteMaxCacheSize`).
    /// Lower keeps less for peers; higher uses more disk.
    pub quota_bytes: u64,
    /// Entries not used for this long are evicted. Default 3 days (DO's `DOMaxCacheAge`).
    pub max_age: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            quota_bytes: 10_000_000_000,
            max_age: Duration::from_secs(259_200),
        }
    }
}

/// The cache. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Store {
    dir: PathBuf,
    db: Database,
    config: Config,
    /// Pin counts per entry. A std mutex: held only for a map update, never across I/O.
    pins: Arc<Mutex<HashMap<EntryId, usize>>>,
    /// When block records were last made durable, and whether any were committed since
    /// (see [`Store::commit_blocks`]).
    durable: Mutex<(Instant, bool)>,
}

/// Block records are flushed to disk (fsync) at most this often; commits in between reach
/// the index at once but the disk only with the next durable one. A peer's answer is 1 MiB,
/// and an fsync per answer held a transfer between two nodes to a fraction of the link.
pub const DURABLE_INTERVAL: Duration = Duration::from_secs(1);

const ENTRIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("entries");
const BY_URL: TableDefinition<'_, &str, u64> = TableDefinition::new("by_url");
const BY_CONTENT: TableDefinition<'_, &[u8], u64> = TableDefinition::new("by_content");
const BLOCKS: TableDefinition<'_, (u64, u64), &[u8]> = TableDefinition::new("blocks");
const COUNTERS: TableDefinition<'_, &str, u64> = TableDefinition::new("counters");

impl Store {
    /// Opens (or creates) the cache in `dir`.
    ///
    /// An index that cannot be read is moved aside to `index.redb.corrupt` and the cache starts
    /// empty; data files that no entry owns are deleted. A cache is only a cache: losing it costs
    /// a download, never a wrong byte.
    pub fn open(dir: &Path, config: Config) -> Result<Self, Error> {
        let data_dir = dir.join("data");
        fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
        let index = dir.join("index.redb");
        let db = match Database::create(&index) {
            Ok(db) => db,
            Err(e) => {
                let aside = dir.join("index.redb.corrupt");
                warn!(error = %e, path = %index.display(), "cache index unreadable; starting empty");
                fs::rename(&index, &aside).map_err(|e| Error::io(&index, e))?;
                Database::create(&index).map_err(|e| Error::Index(e.into()))?
            }
        };
        let store = Self {
            dir: dir.to_path_buf(),
            db,
            config,
            pins: Arc::default(),
            durable: Mutex::new((Instant::now(), false)),
        };
        store.init_tables()?;
        store.remove_orphans()?;
        Ok(store)
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The newest entry for `url`, if any.
    pub fn lookup_url(&self, url: &str) -> Result<Option<(EntryId, EntryMeta)>, Error> {
        let txn = self.db.begin_read().map_err(db)?;
        let by_url = txn.open_table(BY_URL).map_err(db)?;
        let Some(id) = by_url.get(url).map_err(db)?.map(|v| EntryId(v.value())) else {
            return Ok(None);
        };
        let entries = txn.open_table(ENTRIES).map_err(db)?;
        Ok(read_meta(&entries, id)?.map(|m| (id, m)))
    }

    /// The complete entry holding `content`, if any.
    pub fn lookup_content(
        &self,
        content: &ContentId,
    ) -> Result<Option<(EntryId, EntryMeta)>, Error> {
        let txn = self.db.begin_read().map_err(db)?;
        let by_content = txn.open_table(BY_CONTENT).map_err(db)?;
        let Some(id) = by_content
            .get(content.as_bytes().as_slice())
            .map_err(db)?
            .map(|v| EntryId(v.value()))
        else {
            return Ok(None);
        };
        let entries = txn.open_table(ENTRIES).map_err(db)?;
        Ok(read_meta(&entries, id)?.map(|m| (id, m)))
    }

    /// The metadata of entry `id`.
    pub fn meta(&self, id: EntryId) -> Result<EntryMeta, Error> {
        let txn = self.db.begin_read().map_err(db)?;
        let entries = txn.open_table(ENTRIES).map_err(db)?;
        read_meta(&entries, id)?.ok_or(Error::NoSuchEntry(id))
    }

    /// Creates a new entry and makes it the entry for its URL. An older entry for the same URL
    /// stays until evicted, reachable by its content id if it was complete.
    pub fn create_entry(&self, mut meta: EntryMeta) -> Result<EntryId, Error> {
        let now = unix_now();
        meta.created_unix = now;
        meta.accessed_unix = now;
        let txn = self.db.begin_write().map_err(db)?;
        let id = {
            let mut counters = txn.open_table(COUNTERS).map_err(db)?;
            let next = counters
                .get("next_entry")
                .map_err(db)?
                .map_or(1, |v| v.value());
            counters.insert("next_entry", next + 1).map_err(db)?;
            EntryId(next)
        };
        txn.open_table(ENTRIES)
            .map_err(db)?
            .insert(id.0, meta.encode().as_slice())
            .map_err(db)?;
        txn.open_table(BY_URL)
            .map_err(db)?
            .insert(meta.url.as_str(), id.0)
            .map_err(db)?;
        txn.commit().map_err(db)?;
        // A stale data file of a previous life of this id cannot exist (ids never repeat), but
        // create the file now so that writers and readers agree on its existence.
        let path = self.data_path(id);
        File::create(&path).map_err(|e| Error::io(&path, e))?;
        info!(entry = id.0, url = %meta.url, len = meta.len, "cache entry created");
        Ok(id)
    }

    /// Makes entry `id` the entry for `url` as well (the same file served under a new URL).
    pub fn rebind_url(&self, id: EntryId, url: &str) -> Result<(), Error> {
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(db)?;
            let mut meta = read_meta(&entries, id)?.ok_or(Error::NoSuchEntry(id))?;
            meta.url = url.to_owned();
            entries.insert(id.0, meta.encode().as_slice()).map_err(db)?;
        }
        txn.open_table(BY_URL)
            .map_err(db)?
            .insert(url, id.0)
            .map_err(db)?;
        txn.commit().map_err(db)?;
        info!(entry = id.0, %url, "cache entry now answers for a new URL");
        Ok(())
    }

    /// Pins entry `id` until the returned guard is dropped: it will not be evicted meanwhile.
    pub fn pin(&self, id: EntryId) -> Pin {
        *self
            .pins
            .lock()
            .expect("pin map lock")
            .entry(id)
            .or_default() += 1;
        Pin {
            id,
            pins: Arc::clone(&self.pins),
        }
    }

    /// Opens entry `id`'s data file for positioned writes from any thread.
    pub fn writer(&self, id: EntryId) -> Result<Writer, Error> {
        let path = self.data_path(id);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Writer {
            file: Arc::new(file),
            path,
        })
    }

    /// Records blocks whose bytes were written (by a [`Writer`]) and hashed, in one
    /// transaction. Call only after the writes have returned.
    ///
    /// The transaction is durable (flushed to disk before this returns) when the last durable
    /// one is [`DURABLE_INTERVAL`] old; otherwise it is visible at once and reaches the disk
    /// with the next durable commit, of blocks or of anything else, or when the store is
    /// dropped. A machine that crashes so loses at most that interval's verified blocks (they
    /// are fetched again), never a record of bytes the data file lacks.
    pub fn commit_blocks(
        &self,
        id: EntryId,
        blocks: &[(BlockIndex, BlockHash)],
    ) -> Result<(), Error> {
        if blocks.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(db)?;
        let durable = {
            let mut state = self.durable.lock().unwrap_or_else(|e| e.into_inner());
            let due = state.0.elapsed() >= DURABLE_INTERVAL;
            if due {
                *state = (Instant::now(), false);
            } else {
                state.1 = true;
            }
            due
        };
        if !durable {
            txn.set_durability(Durability::None).map_err(db)?;
        }
        {
            let mut table = txn.open_table(BLOCKS).map_err(db)?;
            for (index, hash) in blocks {
                table
                    .insert((id.0, index.0), hash.0.as_slice())
                    .map_err(db)?;
            }
        }
        txn.commit().map_err(db)?;
        debug!(entry = id.0, blocks = blocks.len(), "blocks committed");
        Ok(())
    }

    /// Forgets blocks whose bytes failed a re-check.
    pub fn forget_blocks(&self, id: EntryId, blocks: &[BlockIndex]) -> Result<(), Error> {
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut table = txn.open_table(BLOCKS).map_err(db)?;
            for index in blocks {
                table.remove((id.0, index.0)).map_err(db)?;
            }
        }
        txn.commit().map_err(db)?;
        warn!(
            entry = id.0,
            blocks = blocks.len(),
            "corrupt cached blocks forgotten"
        );
        Ok(())
    }

    /// The verified blocks of entry `id` with their hashes.
    pub fn blocks(&self, id: EntryId) -> Result<Vec<(BlockIndex, BlockHash)>, Error> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(BLOCKS).map_err(db)?;
        let mut out = Vec::new();
        for row in table.range((id.0, 0)..=(id.0, u64::MAX)).map_err(db)? {
            let (key, value) = row.map_err(db)?;
            let hash: [u8; 32] = value
                .value()
                .try_into()
                .map_err(|_| Error::CorruptIndex("block hash is not 32 bytes"))?;
            out.push((BlockIndex(key.value().1), BlockHash(hash)));
        }
        Ok(out)
    }

    /// The set of verified block indices of entry `id`.
    pub fn verified(&self, id: EntryId) -> Result<RangeSet, Error> {
        Ok(self
            .blocks(id)?
            .into_iter()
            .map(|(i, _)| i.0..i.0 + 1)
            .collect())
    }

    /// Marks entry `id` complete: `manifest` holds every block hash; its root becomes the
    /// entry's content id.
    pub fn finish(&self, id: EntryId, manifest: &Manifest) -> Result<ContentId, Error> {
        let root = manifest.root();
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(db)?;
            let mut meta = read_meta(&entries, id)?.ok_or(Error::NoSuchEntry(id))?;
            meta.content_id = Some(root.to_string());
            meta.complete = true;
            meta.accessed_unix = unix_now();
            entries.insert(id.0, meta.encode().as_slice()).map_err(db)?;
        }
        txn.open_table(BY_CONTENT)
            .map_err(db)?
            .insert(root.as_bytes().as_slice(), id.0)
            .map_err(db)?;
        txn.commit().map_err(db)?;
        info!(entry = id.0, content_id = %root, "cache entry complete");
        Ok(root)
    }

    /// Re-reads every verified block of entry `id` and checks it against its recorded hash.
    /// Blocks that fail are forgotten.
    pub fn recheck(&self, id: EntryId) -> Result<Recheck, Error> {
        let meta = self.meta(id)?;
        let path = self.data_path(id);
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut good = RangeSet::new();
        let mut bad = Vec::new();
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        for (index, hash) in self.blocks(id)? {
            if index.0 >= block_count(meta.len) {
                bad.push(index);
                continue;
            }
            let range = do_content::block_range(meta.len, index);
            let data = &mut buf[..range.len() as usize];
            let ok = file.read_exact_at(data, range.start).is_ok()
                && do_content::hash_block(meta.len, index, data) == hash;
            if ok {
                good.insert(index.0, index.0 + 1);
            } else {
                bad.push(index);
            }
        }
        if !bad.is_empty() {
            self.forget_blocks(id, &bad)?;
            self.mark_incomplete(id)?;
        }
        Ok(Recheck {
            good,
            forgotten: bad.len(),
        })
    }

    /// Reads blocks `[first, first + count)` (clipped to the file) and checks each against its
    /// recorded hash. `None` when any is not verified or fails the check (those are forgotten):
    /// bytes that do not verify are never handed out.
    pub fn read_verified(
        &self,
        id: EntryId,
        first: u64,
        count: u64,
    ) -> Result<Option<Vec<u8>>, Error> {
        let meta = self.meta(id)?;
        let end = first.saturating_add(count).min(block_count(meta.len));
        if first >= end {
            return Ok(None);
        }
        let hashes: Vec<(u64, BlockHash)> = {
            let txn = self.db.begin_read().map_err(db)?;
            let table = txn.open_table(BLOCKS).map_err(db)?;
            let mut out = Vec::new();
            for row in table.range((id.0, first)..(id.0, end)).map_err(db)? {
                let (key, value) = row.map_err(db)?;
                let hash: [u8; 32] = value
                    .value()
                    .try_into()
                    .map_err(|_| Error::CorruptIndex("block hash is not 32 bytes"))?;
                out.push((key.value().1, BlockHash(hash)));
            }
            out
        };
        if hashes.len() as u64 != end - first {
            return Ok(None);
        }
        let start = do_content::block_range(meta.len, BlockIndex(first)).start;
        let stop = do_content::block_range(meta.len, BlockIndex(end - 1)).end;
        let path = self.data_path(id);
        let data = read_at(&path, start, stop - start).map_err(|e| Error::io(&path, e))?;
        let bad: Vec<BlockIndex> = hashes
            .iter()
            .filter(|(index, hash)| {
                let r = do_content::block_range(meta.len, BlockIndex(*index));
                let bytes = &data[(r.start - start) as usize..(r.end - start) as usize];
                do_content::hash_block(meta.len, BlockIndex(*index), bytes) != *hash
            })
            .map(|(index, _)| BlockIndex(*index))
            .collect();
        if bad.is_empty() {
            return Ok(Some(data));
        }
        self.forget_blocks(id, &bad)?;
        self.mark_incomplete(id)?;
        Ok(None)
    }

    /// Records that entry `id` was just used (for LRU eviction).
    pub fn touch(&self, id: EntryId) -> Result<(), Error> {
        self.update_meta(id, |m| m.accessed_unix = unix_now())
    }

    /// Deletes entry `id`, its blocks and its data file.
    pub fn delete(&self, id: EntryId) -> Result<(), Error> {
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(db)?;
            if let Some(meta) = read_meta(&entries, id)? {
                let mut by_url = txn.open_table(BY_URL).map_err(db)?;
                if by_url
                    .get(meta.url.as_str())
                    .map_err(db)?
                    .map(|v| v.value())
                    == Some(id.0)
                {
                    by_url.remove(meta.url.as_str()).map_err(db)?;
                }
                if let Some(cid) = meta
                    .content_id
                    .as_deref()
                    .and_then(|c| c.parse::<ContentId>().ok())
                {
                    let mut by_content = txn.open_table(BY_CONTENT).map_err(db)?;
                    let key = cid.as_bytes().as_slice();
                    if by_content.get(key).map_err(db)?.map(|v| v.value()) == Some(id.0) {
                        by_content.remove(key).map_err(db)?;
                    }
                }
            }
            entries.remove(id.0).map_err(db)?;
            txn.open_table(BLOCKS)
                .map_err(db)?
                .retain_in((id.0, 0)..=(id.0, u64::MAX), |_, _| false)
                .map_err(db)?;
        }
        txn.commit().map_err(db)?;
        let path = self.data_path(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&path, e)),
            _ => {}
        }
        info!(entry = id.0, "cache entry deleted");
        Ok(())
    }

    /// Every entry with its metadata.
    pub fn entries(&self) -> Result<Vec<(EntryId, EntryMeta)>, Error> {
        let txn = self.db.begin_read().map_err(db)?;
        let table = txn.open_table(ENTRIES).map_err(db)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            out.push((EntryId(k.value()), EntryMeta::decode(v.value())?));
        }
        Ok(out)
    }

    /// Bytes of verified data held by entry `id`.
    pub fn held_bytes(&self, id: EntryId, meta: &EntryMeta) -> Result<u64, Error> {
        Ok(self
            .verified(id)?
            .iter()
            .map(|i| do_content::block_range(meta.len, BlockIndex(i)).len())
            .sum())
    }

    /// Evicts entries, least recently used first, until the cache fits its quota with `room`
    /// more bytes, and every entry older than the maximum age. Pinned entries are kept.
    /// Returns the number of bytes freed.
    pub fn evict(&self, room: u64) -> Result<u64, Error> {
        let now = unix_now();
        let mut entries = Vec::new();
        for (id, meta) in self.entries()? {
            let held = self.held_bytes(id, &meta)?;
            entries.push((meta.accessed_unix, id, held));
        }
        entries.sort();
        let mut total: u64 = entries.iter().map(|e| e.2).sum();
        let mut freed = 0;
        let max_age = self.config.max_age.as_secs();
        for (accessed, id, held) in entries {
            let too_old = now.saturating_sub(accessed) > max_age;
            let over_quota = total.saturating_add(room) > self.config.quota_bytes;
            if !(too_old || over_quota) || self.is_pinned(id) {
                continue;
            }
            self.delete(id)?;
            total -= held;
            freed += held;
        }
        if freed > 0 {
            info!(freed, "cache eviction");
        }
        Ok(freed)
    }

    /// Path of entry `id`'s data file.
    pub fn data_path(&self, id: EntryId) -> PathBuf {
        self.dir.join("data").join(format!("{}.data", id.0))
    }

    /// True while some [`Pin`] of entry `id` is alive.
    pub fn is_pinned(&self, id: EntryId) -> bool {
        self.pins
            .lock()
            .expect("pin map lock")
            .get(&id)
            .is_some_and(|&n| n > 0)
    }

    fn mark_incomplete(&self, id: EntryId) -> Result<(), Error> {
        self.update_meta(id, |m| m.complete = false)
    }

    fn update_meta(&self, id: EntryId, f: impl FnOnce(&mut EntryMeta)) -> Result<(), Error> {
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(db)?;
            let mut meta = read_meta(&entries, id)?.ok_or(Error::NoSuchEntry(id))?;
            f(&mut meta);
            entries.insert(id.0, meta.encode().as_slice()).map_err(db)?;
        }
        txn.commit().map_err(db)?;
        Ok(())
    }

    fn init_tables(&self) -> Result<(), Error> {
        let txn = self.db.begin_write().map_err(db)?;
        txn.open_table(ENTRIES).map_err(db)?;
        txn.open_table(BY_URL).map_err(db)?;
        txn.open_table(BY_CONTENT).map_err(db)?;
        txn.open_table(BLOCKS).map_err(db)?;
        txn.open_table(COUNTERS).map_err(db)?;
        txn.commit().map_err(db)?;
        Ok(())
    }

    /// Deletes files in `data/` that no entry owns (left by a crash or put there by hand).
    fn remove_orphans(&self) -> Result<(), Error> {
        let owned: std::collections::HashSet<String> = self
            .entries()?
            .into_iter()
            .map(|(id, _)| format!("{}.data", id.0))
            .collect();
        let data_dir = self.dir.join("data");
        for item in fs::read_dir(&data_dir).map_err(|e| Error::io(&data_dir, e))? {
            let item = item.map_err(|e| Error::io(&data_dir, e))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if !owned.contains(&name) {
                warn!(file = %name, "removing a file no cache entry owns");
                let path = item.path();
                let removed = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                removed.map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(())
    }
}

/// The outcome of [`Store::recheck`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recheck {
    /// Blocks whose bytes still match their recorded hash.
    pub good: RangeSet,
    /// Blocks that failed and were forgotten.
    pub forgotten: usize,
}

impl Drop for Store {
    /// Makes block records committed since the last durable commit durable.
    fn drop(&mut self) {
        let pending = self.durable.get_mut().map(|s| s.1).unwrap_or(true);
        if !pending {
            return;
        }
        let flushed = self
            .db
            .begin_write()
            .map_err(db)
            .and_then(|txn| txn.commit().map_err(db));
        if let Err(e) = flushed {
            warn!(error = %e, "cache index not flushed on close");
        }
    }
}

/// Keeps an entry from eviction while alive.
pub struct Pin {
    id: EntryId,
    pins: Arc<Mutex<HashMap<EntryId, usize>>>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = self.pins.lock().expect("pin map lock");
        if let Some(n) = pins.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.id);
            }
        }
    }
}

/// The most bytes one `pwrite` of [`Writer::write_at`] carries. A single write of 2 MiB or more
/// lets the page cache build huge folios, and copying into them is several times slower than
/// into smaller ones: 1 GiB written in 4 MiB writes took 2.07 s of system time here, the same
/// buffer written in 1 MiB pieces 0.34 s (Linux 6.18, ext4).
pub const WRITE_PIECE: usize = 1 << 20;

/// Positioned writes into one entry's data file; clonable and usable from many threads.
#[derive(Clone)]
pub struct Writer {
    file: Arc<File>,
    path: PathBuf,
}

impl Writer {
    /// Writes `data` at byte `offset` (pwrite), at most [`WRITE_PIECE`] bytes per call. A full
    /// disk is reported as [`Error::DiskFull`].
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let mut at = offset;
        for piece in data.chunks(WRITE_PIECE) {
            self.file
                .write_all_at(piece, at)
                .map_err(|e| Error::io(&self.path, e))?;
            at += piece.len() as u64;
        }
        Ok(())
    }

    /// Sets the data file's length (sparse), so that reads of the tail never come up short.
    pub fn set_len(&self, len: u64) -> Result<(), Error> {
        self.file.set_len(len).map_err(|e| Error::io(&self.path, e))
    }
}

fn read_meta(
    table: &impl ReadableTable<u64, &'static [u8]>,
    id: EntryId,
) -> Result<Option<EntryMeta>, Error> {
    match table.get(id.0).map_err(db)? {
        Some(v) => Ok(Some(EntryMeta::decode(v.value())?)),
        None => Ok(None),
    }
}

/// Wraps an index error; a full disk under the index is reported as such, not as a failure of
/// the index itself.
fn db(e: impl Into<redb::Error>) -> Error {
    match e.into() {
        redb::Error::Io(io) if matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) => {
            Error::DiskFull {
                path: PathBuf::from("index.redb"),
            }
        }
        e => Error::Index(e),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads `len` bytes of the file at `path` from `offset`, into a buffer that is not zeroed
/// first (a 4 MiB answer is read over at once). A file that ends sooner is an error.
fn read_at(path: &Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let want = usize::try_from(len).map_err(std::io::Error::other)?;
    let mut data = Vec::with_capacity(want);
    file.take(len).read_to_end(&mut data)?;
    if data.len() != want {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(data)
}

#[cfg(test)]
mod tests;
