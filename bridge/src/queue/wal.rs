//! The queue's write-ahead log: what makes a commit durable between checkpoints.
//!
//! A durable redb commit writes every B-tree page the batch touched, scattered over the file
//! and one `pwrite` each (18 per commit in the echo benchmark), and then `fdatasync`s them
//! all: that was a fifth of the bridge's CPU per task (BENCHMARKS.md, "CPU per task"). The
//! log makes the same guarantee with one small sequential write and one `fdatasync` of a file
//! whose blocks already exist: each commit applies its batch to redb without flushing it
//! (`Durability::None`, visible to reads at once) and appends the batch to the log; every
//! [`CHECKPOINT_RECORDS`] records, or when the log is full, the commit is a durable redb
//! commit instead (a *checkpoint*: it also records the last log record it covers, in
//! `meta.wal`), and the log starts again from its beginning. 1,024 one-block records fill the
//! file exactly. Pages a batch rewrites many times between checkpoints are written once.
//!
//! After a crash, redb opens at its last checkpoint and [`Wal::open`] hands back the records
//! after it, which the queue applies again before it reads anything. A clean stop checkpoints
//! ([`super::Queue`]'s `Drop`), so a restart has nothing to replay.
//!
//! # Format
//! The file is [`WAL_BYTES`] long, zero-filled when created (its blocks are allocated once,
//! so an `fdatasync` never waits for metadata and a full disk cannot refuse an append).
//! Records follow each other from offset 0, each starting on a 4 KiB block:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | payload length (little-endian), 0 at the end of the log |
//! | 8 | record number (little-endian): one more than the record before |
//! | 8 | the first 8 bytes of SHA-256 over the format ([`FORMAT`]), the database's log id (random, in `meta.wal_id`), the record number and the payload |
//! | n | payload (the batch, [`super::Record`], postcard) |
//!
//! Reading stops at the first record that is not the next one: a zero length, a checksum
//! that does not match (a write torn by the crash), or a number that is not one more than the
//! last (what is left of the previous round through the file, whose numbers are all lower).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The log's size: one round through it is at most this much of batches.
pub(super) const WAL_BYTES: u64 = 4 * 1024 * 1024;

/// Records after which the next commit is a checkpoint: bounds the work a restart after a
/// crash replays, and the pages redb holds unflushed.
pub(super) const CHECKPOINT_RECORDS: u64 = 1024;

/// Length, record number, checksum.
const HEADER: u64 = 4 + 8 + 8;

/// Records start on a block of this size: an append never rewrites a block that holds an
/// earlier record, which a power cut during the write could tear on storage without
/// power-safe overwrites (SD cards, some eMMC).
const BLOCK: u64 = 4096;

/// The records' format (their payload's layout): in every checksum, so a log of another
/// format is never applied.
const FORMAT: u64 = 1;

/// Where a record of `len` payload bytes that starts at `at` ends, rounded up to a block.
fn next_block(at: u64, len: u64) -> u64 {
    (at + HEADER + len).div_ceil(BLOCK) * BLOCK
}

#[derive(Debug)]
pub(super) struct Wal {
    file: File,
    /// For errors.
    path: PathBuf,
    /// The database's log id: in every checksum, so another database's log never reads as
    /// this one's.
    id: u64,
    /// Where the next record goes.
    end: u64,
    /// The last record number written or replayed (0: none since the database was created).
    last: u64,
    /// Records appended since the last checkpoint.
    records: u64,
}

impl Wal {
    /// Opens the log at `path` (created and zero-filled if missing or short) and returns it
    /// with the payloads of the records numbered after `checkpoint`, in order.
    pub(super) fn open(
        path: &Path,
        id: u64,
        checkpoint: u64,
    ) -> std::io::Result<(Self, Vec<Vec<u8>>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let records = read_records(&file, id, checkpoint)?;
        let len = file.metadata()?.len();
        if len < WAL_BYTES {
            // Real zeros, not a hole: appends then never allocate.
            let zeros = vec![0u8; (WAL_BYTES - len) as usize];
            file.write_all_at(&zeros, len)?;
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                // The new file's name is durable too.
                File::open(dir)?.sync_all()?;
            }
        } else {
            // A copy of the data directory may have made the file sparse (`cp`, a backup):
            // its blocks are allocated again, so an append cannot meet a full disk. Where
            // the filesystem cannot (copy-on-write ones allocate on every write anyway),
            // nothing is lost by trying.
            let _ = rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, WAL_BYTES);
        }
        let last = checkpoint + records.len() as u64;
        let wal = Self {
            file,
            path: path.to_owned(),
            id,
            // Replayed records are applied and checkpointed by the caller before any append.
            end: 0,
            last,
            records: 0,
        };
        Ok((wal, records))
    }

    /// Whether a record of `len` payload bytes may be appended, or the commit must be a
    /// checkpoint.
    pub(super) fn takes(&self, len: usize) -> bool {
        self.records < CHECKPOINT_RECORDS && next_block(self.end, len as u64) <= WAL_BYTES
    }

    /// Appends `payload` as the next record and makes it durable. On an error nothing is
    /// counted as written (the caller stops).
    pub(super) fn append(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let number = self.last + 1;
        let mut record = Vec::with_capacity(HEADER as usize + payload.len());
        let len = u32::try_from(payload.len())
            .map_err(|_| std::io::Error::other("a write-ahead log record over 4 GiB"))?;
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&number.to_le_bytes());
        record.extend_from_slice(&checksum(FORMAT, self.id, number, payload));
        record.extend_from_slice(payload);
        self.file.write_all_at(&record, self.end)?;
        self.file.sync_data()?;
        self.end = next_block(self.end, payload.len() as u64);
        self.last = number;
        self.records += 1;
        Ok(())
    }

    /// The log's file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The last record number written: what a checkpoint covers.
    pub(super) fn last(&self) -> u64 {
        self.last
    }

    /// Records appended since the last checkpoint.
    pub(super) fn unchecked(&self) -> u64 {
        self.records
    }

    /// A checkpoint covering every record up to [`Wal::last`] is durable: the next record
    /// goes to the start of the file.
    pub(super) fn checkpointed(&mut self) {
        self.end = 0;
        self.records = 0;
    }
}

/// The payloads of the records numbered `after + 1`, `after + 2`, … from the start of
/// `bytes`, up to the first that is not the next one.
/// Only the records are read, not the whole file: after a clean stop that is one header.
fn read_records(file: &File, id: u64, after: u64) -> std::io::Result<Vec<Vec<u8>>> {
    let size = file.metadata()?.len();
    let mut out = Vec::new();
    let mut at = 0u64;
    let mut next = after + 1;
    let mut head = [0u8; HEADER as usize];
    while at + HEADER <= size {
        file.read_exact_at(&mut head, at)?;
        let len = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
        let mut number = [0u8; 8];
        number.copy_from_slice(&head[4..12]);
        let number = u64::from_le_bytes(number);
        if len == 0 || number != next || at + HEADER + len > size {
            break;
        }
        let mut payload = vec![0u8; len as usize];
        file.read_exact_at(&mut payload, at + HEADER)?;
        if head[12..20] != checksum(FORMAT, id, number, &payload) {
            break;
        }
        out.push(payload);
        at = next_block(at, len);
        next += 1;
    }
    Ok(out)
}

fn checksum(format: u64, id: u64, number: u64, payload: &[u8]) -> [u8; 8] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&format.to_le_bytes());
    ctx.update(&id.to_le_bytes());
    ctx.update(&number.to_le_bytes());
    ctx.update(payload);
    let digest = ctx.finish();
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest.as_ref()[..8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, checkpoint: u64) -> (Wal, Vec<Vec<u8>>) {
        Wal::open(&dir.join("queue.wal"), 7, checkpoint).unwrap()
    }

    /// Writes `bytes` at `at` into the closed log in `dir`, as a crash or another version would.
    fn overwrite(dir: &Path, at: u64, bytes: &[u8]) {
        let file = OpenOptions::new()
            .write(true)
            .open(dir.join("queue.wal"))
            .unwrap();
        file.write_all_at(bytes, at).unwrap();
    }

    #[test]
    fn records_after_the_checkpoint_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, replay) = open(dir.path(), 0);
        assert!(replay.is_empty());
        for i in 0..5u8 {
            wal.append(&[i; 10]).unwrap();
        }
        assert_eq!(wal.last(), 5);
        // Each record on a block of its own: no append rewrites an earlier record's block.
        assert_eq!(wal.end, 5 * BLOCK);
        drop(wal);
        let (_, replay) = open(dir.path(), 0);
        assert_eq!(replay, (0..5u8).map(|i| vec![i; 10]).collect::<Vec<_>>());
        // A checkpoint restarts the log at its beginning: a database whose checkpoint is
        // past the first record at offset 0 has nothing to apply.
        let (wal, replay) = open(dir.path(), 5);
        assert!(replay.is_empty(), "{replay:?}");
        assert_eq!(wal.last(), 5);
        assert_eq!(
            std::fs::metadata(dir.path().join("queue.wal"))
                .unwrap()
                .len(),
            WAL_BYTES
        );
    }

    #[test]
    fn a_torn_or_stale_record_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), 0);
        for i in 0..4u8 {
            wal.append(&[i; 100]).unwrap();
        }
        // A new round from the start after a checkpoint at 4: record 5 overwrites record 1;
        // records 2 to 4 behind it are stale (lower numbers) and must not be read back.
        wal.checkpointed();
        wal.append(&[9; 100]).unwrap();
        drop(wal);
        let (_, replay) = open(dir.path(), 4);
        assert_eq!(replay, vec![vec![9u8; 100]]);
        // Record 5's payload torn by a crash: nothing after the checkpoint survives.
        overwrite(dir.path(), HEADER + 50, &[0xff; 10]);
        let (_, replay) = open(dir.path(), 4);
        assert!(replay.is_empty(), "{replay:?}");
    }

    #[test]
    fn another_databases_log_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), 0);
        wal.append(b"theirs").unwrap();
        drop(wal);
        let (_, replay) = Wal::open(&dir.path().join("queue.wal"), 8, 0).unwrap();
        assert!(replay.is_empty(), "{replay:?}");
        let (_, replay) = open(dir.path(), 0);
        assert_eq!(replay, vec![b"theirs".to_vec()]);
    }

    #[test]
    fn a_record_of_another_format_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), 0);
        wal.append(b"ours").unwrap();
        drop(wal);
        // The same record as a version with another payload layout writes it.
        let payload = b"ours";
        let mut record = Vec::new();
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&1u64.to_le_bytes());
        record.extend_from_slice(&checksum(FORMAT + 1, 7, 1, payload));
        record.extend_from_slice(payload);
        overwrite(dir.path(), 0, &record);
        let (_, replay) = open(dir.path(), 0);
        assert!(replay.is_empty(), "{replay:?}");
    }

    #[test]
    fn a_sparse_log_gets_its_blocks_back_at_open() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.wal");
        // As `cp` or a backup restores it: the right length, no blocks.
        File::create(&path).unwrap().set_len(WAL_BYTES).unwrap();
        let blocks = || std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(blocks() < WAL_BYTES, "{}", blocks());
        let _ = open(dir.path(), 0);
        assert!(blocks() >= WAL_BYTES, "{}", blocks());
    }

    #[test]
    fn a_full_log_or_enough_records_asks_for_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), 0);
        assert!(wal.takes(1000));
        assert!(!wal.takes(WAL_BYTES as usize));
        for _ in 0..CHECKPOINT_RECORDS {
            assert!(wal.takes(1));
            wal.append(&[1]).unwrap();
        }
        assert!(!wal.takes(1));
        wal.checkpointed();
        assert!(wal.takes(1));
        assert_eq!(wal.unchecked(), 0);
    }
}
