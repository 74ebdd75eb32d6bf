//! Block hashes and the manifest that binds them to a [`ContentId`].

use std::{fmt, fs::File, io, path::Path};

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::{BLOCK_SIZE, BlockIndex, ContentId, block_count, block_range};

/// The hash of one block: its BLAKE3 chaining value, or, for a file of a single block, the
/// file's root hash itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockHash(pub [u8; 32]);

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockHash({})", hex::encode(&self.0[..8]))
    }
}

/// Hashes block `index` of a file of `file_len` bytes; `data` must be the whole block.
pub fn hash_block(file_len: u64, index: BlockIndex, data: &[u8]) -> BlockHash {
    let mut hasher = BlockHasher::new(file_len, index);
    hasher.update(data);
    hasher.finalize()
}

/// Incremental hasher for one block, fed as its bytes stream in.
#[derive(Clone)]
pub struct BlockHasher {
    hasher: blake3::Hasher,
    single_block: bool,
}

impl BlockHasher {
    /// A hasher for block `index` of a file of `file_len` bytes.
    pub fn new(file_len: u64, index: BlockIndex) -> Self {
        let mut hasher = blake3::Hasher::new();
        if index.0 > 0 {
            hasher.set_input_offset(index.offset());
        }
        Self {
            hasher,
            single_block: block_count(file_len) == 1,
        }
    }

    /// Feeds the next bytes of the block.
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
    }

    /// The block's hash.
    pub fn finalize(&self) -> BlockHash {
        if self.single_block {
            BlockHash(*self.hasher.finalize().as_bytes())
        } else {
            BlockHash(self.hasher.finalize_non_root())
        }
    }
}

/// The list of block hashes of one file, and the file's length.
///
/// A manifest is trusted only once [`Manifest::root`] equals a `ContentId` the caller trusts:
/// the root is computed from the block hashes with BLAKE3's own tree, so no other list of
/// hashes can give the same root.
#[derive(Clone, PartialEq, Eq)]
pub struct Manifest {
    len: u64,
    blocks: Vec<BlockHash>,
}

impl Manifest {
    /// A manifest from a file length and the hash of every block, in order.
    pub fn new(len: u64, blocks: Vec<BlockHash>) -> Result<Self, ManifestError> {
        if blocks.len() as u64 != block_count(len) {
            return Err(ManifestError::BlockCount {
                expected: block_count(len),
                actual: blocks.len() as u64,
            });
        }
        Ok(Self { len, blocks })
    }

    /// Hashes a whole file held in memory, using every core.
    pub fn from_bytes(data: &[u8]) -> Self {
        let len = data.len() as u64;
        let count = block_count(len) as usize;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_thread = count.div_ceil(threads).max(1);
        let mut blocks = vec![BlockHash([0; 32]); count];
        std::thread::scope(|scope| {
            for (chunk_no, out) in blocks.chunks_mut(per_thread).enumerate() {
                scope.spawn(move || {
                    for (i, slot) in out.iter_mut().enumerate() {
                        let index = BlockIndex((chunk_no * per_thread + i) as u64);
                        let r = block_range(len, index);
                        *slot = hash_block(len, index, &data[r.start as usize..r.end as usize]);
                    }
                });
            }
        });
        Self { len, blocks }
    }

    /// Hashes a file on disk (memory-mapped, every core).
    pub fn from_file(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(Self::from_bytes(&[]));
        }
        // SAFETY: the map is read-only and dropped before returning; a concurrent writer could
        // change bytes under us, which only changes the hash we compute, never memory safety of
        // our own data (the slice is only read by the hasher).
        let map = unsafe { memmap2::Mmap::map(&file)? };
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(Self::from_bytes(&map))
    }

    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for the manifest of an empty file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The block hashes, in order.
    pub fn blocks(&self) -> &[BlockHash] {
        &self.blocks
    }

    /// The root of the BLAKE3 tree over the blocks: the file's `ContentId`.
    pub fn root(&self) -> ContentId {
        root_of(&self.blocks)
    }

    /// Checks `data` against the hash of block `index`.
    pub fn verify_block(&self, index: BlockIndex, data: &[u8]) -> Result<(), ManifestError> {
        let expected = self
            .blocks
            .get(index.0 as usize)
            .ok_or(ManifestError::NoSuchBlock(index))?;
        let range = block_range(self.len, index);
        if data.len() as u64 != range.len() {
            return Err(ManifestError::BlockLength {
                index,
                expected: range.len(),
                actual: data.len() as u64,
            });
        }
        if hash_block(self.len, index, data) != *expected {
            return Err(ManifestError::BlockMismatch(index));
        }
        Ok(())
    }

    /// Encodes the manifest: magic `DOM1`, the length (u64 LE), then 32 bytes per block.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + 32 * self.blocks.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.len.to_le_bytes());
        for block in &self.blocks {
            out.extend_from_slice(&block.0);
        }
        out
    }

    /// Decodes what [`Manifest::encode`] produced, rejecting anything malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let rest = bytes.strip_prefix(MAGIC).ok_or(ManifestError::Malformed)?;
        let (len_bytes, hashes) = rest
            .split_first_chunk::<8>()
            .ok_or(ManifestError::Malformed)?;
        let len = u64::from_le_bytes(*len_bytes);
        if hashes.len() % 32 != 0 || (hashes.len() / 32) as u64 != block_count(len) {
            return Err(ManifestError::Malformed);
        }
        let blocks = hashes
            .chunks_exact(32)
            .map(|c| BlockHash(c.try_into().expect("chunks_exact yields 32 bytes")))
            .collect();
        Ok(Self { len, blocks })
    }
}

impl fmt::Debug for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manifest")
            .field("len", &self.len)
            .field("blocks", &self.blocks.len())
            .field("root", &self.root())
            .finish()
    }
}

/// Why a manifest or a block was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The number of block hashes does not fit the file length.
    #[error("manifest has {actual} block hashes, the length needs {expected}")]
    BlockCount {
        /// Blocks the length needs.
        expected: u64,
        /// Blocks given.
        actual: u64,
    },
    /// The block index is past the end of the file.
    #[error("block {0} is past the end of the file")]
    NoSuchBlock(BlockIndex),
    /// The block's data has the wrong length.
    #[error("block {index} has {actual} bytes, expected {expected}")]
    BlockLength {
        /// The block.
        index: BlockIndex,
        /// Its length in the file.
        expected: u64,
        /// The length given.
        actual: u64,
    },
    /// The block's bytes do not hash to the manifest's entry.
    #[error("block {0} does not match its hash")]
    BlockMismatch(BlockIndex),
    /// The encoded manifest is not well formed.
    #[error("malformed manifest encoding")]
    Malformed,
}

const MAGIC: &[u8; 4] = b"DOM1";

/// Merges block hashes into the root, following BLAKE3's tree: the left subtree holds the
/// largest power of two of blocks that is smaller than the total. Blocks are 64 chunks, so
/// this is exactly the split BLAKE3 makes on chunks.
fn root_of(blocks: &[BlockHash]) -> ContentId {
    match blocks {
        [] => ContentId::of(&[]),
        [single] => ContentId::from_bytes(single.0),
        _ => {
            let split = left_len(blocks.len());
            let left = subtree(&blocks[..split]);
            let right = subtree(&blocks[split..]);
            ContentId::from(merge_subtrees_root(&left, &right, Mode::Hash))
        }
    }
}

fn subtree(blocks: &[BlockHash]) -> ChainingValue {
    if let [single] = blocks {
        return single.0;
    }
    let split = left_len(blocks.len());
    merge_subtrees_non_root(
        &subtree(&blocks[..split]),
        &subtree(&blocks[split..]),
        Mode::Hash,
    )
}

/// Largest power of two strictly below `n` (n >= 2).
fn left_len(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

// Blocks must be whole BLAKE3 subtrees for the merge in `root_of` to be BLAKE3's own.
const _: () = assert!(BLOCK_SIZE == 64 * blake3::CHUNK_LEN as u64);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ seed)
            .collect()
    }

    #[test]
    fn root_equals_blake3_at_block_boundaries() {
        let b = BLOCK_SIZE as usize;
        for len in [
            0,
            1,
            1024,
            1025,
            b - 1,
            b,
            b + 1,
            2 * b,
            3 * b + 7,
            5 * b,
            8 * b,
            9 * b - 1,
        ] {
            let d = data(len, 3);
            assert_eq!(
                Manifest::from_bytes(&d).root(),
                ContentId::of(&d),
                "len {len}"
            );
        }
    }

    #[test]
    fn a_flipped_bit_fails_its_block_only() {
        let d = data(5 * BLOCK_SIZE as usize + 99, 1);
        let m = Manifest::from_bytes(&d);
        let mut bad = d.clone();
        bad[2 * BLOCK_SIZE as usize + 17] ^= 0x10;
        for i in 0..m.blocks().len() as u64 {
            let r = block_range(m.len(), BlockIndex(i));
            let got = m.verify_block(BlockIndex(i), &bad[r.start as usize..r.end as usize]);
            if i == 2 {
                assert_eq!(got, Err(ManifestError::BlockMismatch(BlockIndex(2))));
            } else {
                assert_eq!(got, Ok(()));
            }
        }
        assert_eq!(
            m.verify_block(BlockIndex(0), &d[..10]),
            Err(ManifestError::BlockLength {
                index: BlockIndex(0),
                expected: BLOCK_SIZE,
                actual: 10
            })
        );
    }

    #[test]
    fn a_block_moved_to_another_index_fails() {
        let d = data(4 * BLOCK_SIZE as usize, 9);
        let m = Manifest::from_bytes(&d);
        // Block 1's bytes presented as block 2 fail even if the contents were equal elsewhere,
        // because the offset is part of the hash.
        let same = vec![5u8; 4 * BLOCK_SIZE as usize];
        let ms = Manifest::from_bytes(&same);
        assert_ne!(ms.blocks()[1], ms.blocks()[2]);
        assert!(
            m.verify_block(BlockIndex(2), &d[..BLOCK_SIZE as usize])
                .is_err()
        );
    }

    #[test]
    fn streaming_block_hasher_matches_one_shot() {
        let d = data(3 * BLOCK_SIZE as usize, 4);
        let mut h = BlockHasher::new(d.len() as u64, BlockIndex(1));
        for piece in d[BLOCK_SIZE as usize..2 * BLOCK_SIZE as usize].chunks(1000) {
            h.update(piece);
        }
        assert_eq!(h.finalize(), Manifest::from_bytes(&d).blocks()[1]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn manifest_root_is_b3sum_and_encoding_round_trips(len in 0usize..700_000, seed: u8) {
            let d = data(len, seed);
            let m = Manifest::from_bytes(&d);
            prop_assert_eq!(m.root(), ContentId::of(&d));
            let decoded = Manifest::decode(&m.encode()).unwrap();
            prop_assert_eq!(&decoded, &m);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Manifest::decode(&bytes);
        }
    }
}
