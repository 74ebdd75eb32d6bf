use std::fs;

use do_content::{BLOCK_SIZE, BlockIndex, ByteRange, Manifest, block_range};

use super::*;

fn sample(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()[0])
        .collect()
}

/// Writes and commits every block of `data` into a new entry for `url`.
fn fill(store: &Store, url: &str, data: &[u8]) -> EntryId {
    let id = store
        .create_entry(EntryMeta::new(
            url,
            data.len() as u64,
            Some("\"e\"".into()),
            None,
        ))
        .unwrap();
    let manifest = Manifest::from_bytes(data);
    let writer = store.writer(id).unwrap();
    writer.write_at(0, data).unwrap();
    let blocks: Vec<_> = manifest
        .blocks()
        .iter()
        .enumerate()
        .map(|(i, h)| (BlockIndex(i as u64), *h))
        .collect();
    store.commit_blocks(id, &blocks).unwrap();
    store.finish(id, &manifest).unwrap();
    id
}

#[test]
fn verified_blocks_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample(3 * BLOCK_SIZE as usize + 5);
    let id = {
        let store = Store::open(dir.path(), Config::default()).unwrap();
        let id = store
            .create_entry(EntryMeta::new(
                "http://x/a",
                data.len() as u64,
                Some("1".into()),
                None,
            ))
            .unwrap();
        let m = Manifest::from_bytes(&data);
        let w = store.writer(id).unwrap();
        let r = block_range(m.len(), BlockIndex(1));
        w.write_at(r.start, &data[r.start as usize..r.end as usize])
            .unwrap();
        store
            .commit_blocks(id, &[(BlockIndex(1), m.blocks()[1])])
            .unwrap();
        id
    };
    let store = Store::open(dir.path(), Config::default()).unwrap();
    let (found, meta) = store.lookup_url("http://x/a").unwrap().unwrap();
    assert_eq!(found, id);
    assert!(!meta.complete);
    assert_eq!(
        store.verified(id).unwrap().iter().collect::<Vec<_>>(),
        vec![1]
    );
    let recheck = store.recheck(id).unwrap();
    assert_eq!(recheck.good.iter().collect::<Vec<_>>(), vec![1]);
    assert_eq!(recheck.forgotten, 0);
}

#[test]
fn recheck_forgets_blocks_changed_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config::default()).unwrap();
    let data = sample(4 * BLOCK_SIZE as usize);
    let id = fill(&store, "http://x/b", &data);
    let path = store.data_path(id);
    let mut bytes = fs::read(&path).unwrap();
    bytes[2 * BLOCK_SIZE as usize + 3] ^= 1;
    fs::write(&path, bytes).unwrap();
    let recheck = store.recheck(id).unwrap();
    assert_eq!(recheck.good.iter().collect::<Vec<_>>(), vec![0, 1, 3]);
    assert_eq!(recheck.forgotten, 1);
    assert_eq!(store.verified(id).unwrap(), recheck.good);
    assert!(!store.meta(id).unwrap().complete);
}

#[test]
fn a_garbage_index_is_moved_aside_and_orphans_removed() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("data")).unwrap();
    fs::write(
        dir.path().join("index.redb"),
        b"this is not a database at all",
    )
    .unwrap();
    fs::write(dir.path().join("data/7.data"), b"stray").unwrap();
    fs::write(dir.path().join("data/junk"), b"stray").unwrap();
    let store = Store::open(dir.path(), Config::default()).unwrap();
    assert!(store.entries().unwrap().is_empty());
    assert!(dir.path().join("index.redb.corrupt").exists());
    assert_eq!(fs::read_dir(dir.path().join("data")).unwrap().count(), 0);
}

#[test]
fn eviction_is_lru_under_quota_and_spares_pins() {
    let dir = tempfile::tempdir().unwrap();
    let quota = 3 * BLOCK_SIZE;
    let store = Store::open(
        dir.path(),
        Config {
            quota_bytes: quota,
            ..Config::default()
        },
    )
    .unwrap();
    let a = fill(&store, "http://x/a", &sample(BLOCK_SIZE as usize));
    let b = fill(&store, "http://x/b", &sample(BLOCK_SIZE as usize));
    let c = fill(&store, "http://x/c", &sample(BLOCK_SIZE as usize));
    // Make `a` the oldest and pin it; `b` is then the least recently used unpinned entry.
    store.update_meta(a, |m| m.accessed_unix = 10).unwrap();
    store.update_meta(b, |m| m.accessed_unix = 20).unwrap();
    let pin = store.pin(a);
    let freed = store.evict(BLOCK_SIZE).unwrap();
    assert_eq!(freed, BLOCK_SIZE);
    let left: Vec<_> = store
        .entries()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left, vec![a, c]);
    assert!(!store.data_path(b).exists());
    drop(pin);
    store.evict(2 * BLOCK_SIZE).unwrap();
    let left: Vec<_> = store
        .entries()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left, vec![c]);
}

#[test]
fn entries_past_the_maximum_age_are_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config::default()).unwrap();
    let a = fill(&store, "http://x/a", &sample(100));
    let b = fill(&store, "http://x/b", &sample(100));
    store.update_meta(a, |m| m.accessed_unix = 1).unwrap();
    store.evict(0).unwrap();
    assert!(store.lookup_url("http://x/a").unwrap().is_none());
    assert_eq!(store.lookup_url("http://x/b").unwrap().unwrap().0, b);
    let cid = ContentId::of(&sample(100));
    assert_eq!(store.lookup_content(&cid).unwrap().unwrap().0, b);
}

#[test]
fn export_links_whole_files_copies_ranges_and_never_clobbers() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config::default()).unwrap();
    let data = sample(200_000);
    let id = fill(&store, "http://x/a", &data);
    let whole = out.path().join("whole");
    assert_eq!(
        store
            .export(id, &whole, None, Layout::Concatenated, false)
            .unwrap(),
        Export::Linked
    );
    assert_eq!(fs::read(&whole).unwrap(), data);
    assert!(matches!(
        store.export(id, &whole, None, Layout::Concatenated, false),
        Err(Error::AlreadyExists(_))
    ));
    let parts = out.path().join("parts");
    let ranges = [ByteRange::new(150_000, 150_010), ByteRange::new(5, 7)];
    assert_eq!(
        store
            .export(id, &parts, Some(&ranges), Layout::Concatenated, false)
            .unwrap(),
        Export::Copied
    );
    let mut expected = data[150_000..150_010].to_vec();
    expected.extend_from_slice(&data[5..7]);
    assert_eq!(fs::read(&parts).unwrap(), expected);
    let replaced = out.path().join("replaced");
    fs::write(&replaced, b"old").unwrap();
    store
        .export(id, &replaced, Some(&ranges), Layout::Concatenated, true)
        .unwrap();
    assert_eq!(fs::read(&replaced).unwrap(), expected);
    store
        .export(id, &replaced, None, Layout::Concatenated, true)
        .unwrap();
    assert_eq!(fs::read(&replaced).unwrap(), data);
    let placed = out.path().join("placed");
    store
        .export(id, &placed, Some(&ranges[..1]), Layout::AtOffsets, false)
        .unwrap();
    store
        .export(id, &placed, Some(&ranges[1..]), Layout::AtOffsets, true)
        .unwrap();
    let bytes = fs::read(&placed).unwrap();
    assert_eq!(bytes.len(), data.len());
    assert_eq!(&bytes[150_000..150_010], &data[150_000..150_010]);
    assert_eq!(&bytes[5..7], &data[5..7]);
    assert_eq!(bytes[100], 0, "holes elsewhere");
    fs::remove_file(&placed).unwrap();
    // No temporary file is left behind.
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 3);
}

#[test]
fn a_whole_file_replaces_what_is_at_its_output_by_a_link_but_never_a_directory() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config::default()).unwrap();
    let data = sample(200_000);
    let id = fill(&store, "http://x/a", &data);
    let inode = fs::metadata(store.data_path(id)).unwrap().ino();
    // The empty file a download creates at its start, then the same output once more.
    let output = out.path().join("output");
    fs::write(&output, b"").unwrap();
    for _ in 0..2 {
        let how = store.export(id, &output, None, Layout::Concatenated, true);
        assert_eq!(how.unwrap(), Export::Linked);
        assert_eq!(
            fs::metadata(&output).unwrap().ino(),
            inode,
            "a link, not a copy"
        );
        assert_eq!(fs::read(&output).unwrap(), data);
    }
    // A directory in the way stays where it is, with what it holds.
    let taken = out.path().join("taken");
    fs::create_dir(&taken).unwrap();
    fs::write(taken.join("inside"), b"mine").unwrap();
    assert!(
        store
            .export(id, &taken, None, Layout::Concatenated, true)
            .is_err()
    );
    assert_eq!(fs::read(taken.join("inside")).unwrap(), b"mine");
    let mut names: Vec<_> = fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["output", "taken"],
        "no temporary file is left behind"
    );
}

#[test]
fn delete_removes_index_rows_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config::default()).unwrap();
    let id = fill(&store, "http://x/a", &sample(70_000));
    store.delete(id).unwrap();
    assert!(store.lookup_url("http://x/a").unwrap().is_none());
    assert!(store.blocks(id).unwrap().is_empty());
    assert!(matches!(store.meta(id), Err(Error::NoSuchEntry(_))));
}

#[test]
fn read_verified_hands_out_only_bytes_that_check() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config::default()).unwrap();
    let data = sample(3 * BLOCK_SIZE as usize + 10);
    let id = fill(&store, "http://x/r", &data);
    let got = store.read_verified(id, 1, 16).unwrap().unwrap();
    assert_eq!(got, &data[BLOCK_SIZE as usize..]);
    let path = store.data_path(id);
    let mut bytes = fs::read(&path).unwrap();
    bytes[5] ^= 1;
    fs::write(&path, bytes).unwrap();
    assert_eq!(
        store.read_verified(id, 0, 2).unwrap(),
        None,
        "a changed block is never served"
    );
    assert!(
        !store.verified(id).unwrap().contains(0),
        "and it is forgotten"
    );
    assert_eq!(store.read_verified(id, 9, 1).unwrap(), None, "past the end");
}

#[test]
fn read_verified_of_a_data_file_cut_short_is_an_error_not_short_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config::default()).unwrap();
    let data = sample(3 * BLOCK_SIZE as usize + 10);
    let id = fill(&store, "http://x/r", &data);
    let path = store.data_path(id);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(2 * BLOCK_SIZE + 100).unwrap();
    let err = store.read_verified(id, 1, 3).unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "the error names the file: {err}"
    );
    assert_eq!(
        store.read_verified(id, 0, 2).unwrap().unwrap(),
        &data[..2 * BLOCK_SIZE as usize],
        "what is still there is served"
    );
}

#[test]
fn a_write_larger_than_a_piece_lands_whole_at_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Config::default()).unwrap();
    let data = sample(2 * WRITE_PIECE + 12_345);
    let id = store
        .create_entry(EntryMeta::new(
            "http://x/w",
            3 * WRITE_PIECE as u64,
            None,
            None,
        ))
        .unwrap();
    let offset = 777;
    store.writer(id).unwrap().write_at(offset, &data).unwrap();
    let bytes = fs::read(store.data_path(id)).unwrap();
    assert_eq!(bytes.len(), offset as usize + data.len());
    assert!(bytes[..offset as usize].iter().all(|&b| b == 0));
    assert_eq!(&bytes[offset as usize..], &data[..]);
}
