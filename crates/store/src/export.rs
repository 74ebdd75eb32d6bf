//! Making cached bytes visible as an output file, atomically.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use do_content::ByteRange;

use crate::{EntryId, Error, Store};

/// Where the bytes of byte-range downloads go in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// The ranges one after another, in the order given (BITS semantics). The output is built
    /// under a temporary name and appears at once.
    #[default]
    Concatenated,
    /// Each range at its own offset in a file of the remote file's length (holes elsewhere),
    /// written into the existing output in place, so that a download that is started again
    /// with more ranges adds them to what it delivered before.
    AtOffsets,
}

/// How an export produced its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    /// A hard link to the cache's data file: no byte copied.
    Linked,
    /// A copy (another file system, or only some ranges of the file).
    Copied,
}

impl Store {
    /// Makes entry `id`'s bytes visible at `dest`: the whole file, or the given `ranges`
    /// concatenated in order (BITS semantics). The output appears at once, complete, or not at
    /// all: it is built under a temporary name in `dest`'s directory and then renamed (or
    /// hard-linked) into place. Without `overwrite`, an existing `dest` is left alone and
    /// [`Error::AlreadyExists`] returned.
    ///
    /// The caller must have verified the entry's bytes: export copies, it does not check.
    pub fn export(
        &self,
        id: EntryId,
        dest: &Path,
        ranges: Option<&[ByteRange]>,
        layout: Layout,
        overwrite: bool,
    ) -> Result<Export, Error> {
        let data = self.data_path(id);
        if let (Some(ranges), Layout::AtOffsets) = (ranges, layout) {
            let len = self.meta(id)?.len;
            return write_in_place(&data, dest, ranges, len, overwrite).map(|()| Export::Copied);
        }
        if ranges.is_none() {
            let linked = if overwrite {
                let tmp = temp_name(dest);
                // When `dest` already is a link to the data file, rename(2) succeeds without
                // doing anything and both names stay: the temporary one is removed either way.
                let placed = fs::hard_link(&data, &tmp).and_then(|()| replace(&tmp, dest));
                if tmp.exists() {
                    let _ = fs::remove_file(&tmp);
                }
                placed
            } else {
                fs::hard_link(&data, dest)
            };
            match linked {
                Ok(()) => return Ok(Export::Linked),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(Error::AlreadyExists(dest.to_path_buf()));
                }
                // Another file system, or one without hard links: copy instead.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EXDEV | libc::EPERM | libc::EMLINK)
                    ) => {}
                Err(e) => return Err(Error::io(dest, e)),
            }
        }
        let tmp = temp_name(dest);
        let result = write_copy(&data, &tmp, ranges).and_then(|()| place(&tmp, dest, overwrite));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| Export::Copied)
    }
}

fn write_in_place(
    data: &Path,
    dest: &Path,
    ranges: &[ByteRange],
    len: u64,
    overwrite: bool,
) -> Result<(), Error> {
    let src = File::open(data).map_err(|e| Error::io(data, e))?;
    let out = OpenOptions::new()
        .write(true)
        .create(overwrite)
        .create_new(!overwrite)
        .truncate(false)
        .open(dest)
        .map_err(|e| Error::io(dest, e))?;
    if out.metadata().map_err(|e| Error::io(dest, e))?.len() < len {
        out.set_len(len).map_err(|e| Error::io(dest, e))?;
    }
    copy_ranges(&src, data, ranges, dest, |at, bytes| {
        out.write_all_at(bytes, at)
    })?;
    out.sync_all().map_err(|e| Error::io(dest, e))
}

fn write_copy(data: &Path, tmp: &Path, ranges: Option<&[ByteRange]>) -> Result<(), Error> {
    let src = File::open(data).map_err(|e| Error::io(data, e))?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| Error::io(tmp, e))?;
    match ranges {
        None => {
            let mut src = src;
            io::copy(&mut src, &mut out).map_err(|e| Error::io(tmp, e))?;
        }
        Some(ranges) => copy_ranges(&src, data, ranges, tmp, |_, bytes| out.write_all(bytes))?,
    }
    out.sync_all().map_err(|e| Error::io(tmp, e))
}

/// Reads each range of the data file in 1 MiB pieces and hands every piece, with its offset in
/// the file, to `put` (which writes it to `dest`).
fn copy_ranges(
    src: &File,
    data: &Path,
    ranges: &[ByteRange],
    dest: &Path,
    mut put: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> Result<(), Error> {
    let mut buf = vec![0u8; 1 << 20];
    for r in ranges {
        let mut at = r.start;
        while at < r.end {
            let n = ((r.end - at) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], at)
                .map_err(|e| Error::io(data, e))?;
            put(at, &buf[..n]).map_err(|e| Error::io(dest, e))?;
            at += n as u64;
        }
    }
    Ok(())
}

/// Moves the finished temporary file into place; without `overwrite` it never replaces an
/// existing file (link, then unlink the temporary name).
fn place(tmp: &Path, dest: &Path, overwrite: bool) -> Result<(), Error> {
    if overwrite {
        fs::rename(tmp, dest).map_err(|e| Error::io(dest, e))
    } else {
        fs::hard_link(tmp, dest).map_err(|e| Error::io(dest, e))?;
        fs::remove_file(tmp).map_err(|e| Error::io(tmp, e))
    }
}

/// Moves `tmp` to `dest`, atomically, as rename(2) does. An existing regular file at `dest`
/// (the empty file a download creates at its start, or one it may overwrite) is swapped with
/// `tmp` and then removed: ext4 starts writing out the whole of a file renamed over another
/// (its `auto_da_alloc`), which for a hard link to a just-downloaded cache file took 0.14 s
/// per 512 MiB on an idle disk and up to a second in a crowd of five; an exchange writes
/// nothing. Anything else at `dest` gets a plain rename, and its errors.
fn replace(tmp: &Path, dest: &Path) -> io::Result<()> {
    let is_file = fs::symlink_metadata(dest).is_ok_and(|m| m.file_type().is_file());
    if is_file {
        let exchanged = rustix::fs::renameat_with(
            rustix::fs::CWD,
            tmp,
            rustix::fs::CWD,
            dest,
            rustix::fs::RenameFlags::EXCHANGE,
        );
        if exchanged.is_ok() {
            // `tmp` now names what was at `dest`; the caller removes it if this cannot.
            let _ = fs::remove_file(tmp);
            return Ok(());
        }
        // A file system without exchange (EINVAL), or `dest` gone meanwhile: rename.
    }
    fs::rename(tmp, dest)
}

fn temp_name(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
    dest.with_file_name(format!(".{name}.donode-{}.tmp", std::process::id()))
}
