//! Watching the free space of the data directory's disk.
//!
//! A redb commit that fails for want of space stops the bridge: its memory is then ahead of
//! its database, and the safe way on is a restart from the last commit. So the bridge stops
//! taking new work *before* the disk is full: below `min_free_bytes` free it is "storage
//! full", and new submissions are rejected (`storage_full`) while the work already accepted
//! goes on — its changes and events are bounded by the live tasks. Free space is measured
//! (`statvfs`) before each batch of submissions and on every stats tick, so the bridge
//! notices by itself when space returns and takes new work again.
//!
//! Space below the watermark can still be taken by others (logs, other programs). For that
//! the bridge keeps a reserve file of `reserve_bytes` in the data directory: given back when
//! the disk fills, or when the bridge starts on a full disk (so it can open its database and
//! record its accepted work), and made again once space returns. The reserve counts as used
//! while it is given back: the bridge leaves the full state only with room for the watermark
//! *and* the reserve, so re-making the reserve never fills the disk again.

use std::io::Write;
use std::path::{Path, PathBuf};

use broker_config::StorageConfig;

use crate::api::StorageStats;

/// The reserve file in the data directory.
const RESERVE_FILE: &str = "storage.reserve";

/// The free-space state of the data directory's disk.
#[derive(Debug)]
pub(super) struct Storage {
    dir: PathBuf,
    config: StorageConfig,
    /// Whether the reserve file is in place (with its full size).
    reserve_held: bool,
    /// Below the watermark: new work is refused.
    full: bool,
    /// Bytes available at the last measure.
    free: u64,
    /// Whether the last measure failed (logged once per failure streak).
    unmeasured: bool,
}

impl Storage {
    /// Measures the disk of `dir` (created if missing) before the queue opens it: on a full
    /// disk the reserve is given back first, so the database can open.
    pub(super) fn open(dir: &Path, config: StorageConfig) -> Self {
        let _ = std::fs::create_dir_all(dir);
        let reserve = dir.join(RESERVE_FILE);
        let reserve_held = config.reserve_bytes > 0
            && std::fs::metadata(&reserve).is_ok_and(|m| m.len() == config.reserve_bytes);
        if !reserve_held {
            // A partial reserve (a crash while making it) counts for nothing.
            let _ = std::fs::remove_file(&reserve);
        }
        let mut s = Self {
            dir: dir.to_owned(),
            config,
            reserve_held,
            full: false,
            free: 0,
            unmeasured: false,
        };
        s.poll();
        if !s.full && !s.reserve_held {
            s.make_reserve();
        }
        s
    }

    /// Measures free space again and changes state if it crossed the watermark; returns
    /// whether the disk is full.
    pub(super) fn poll(&mut self) -> bool {
        if self.config.min_free_bytes == 0 && self.config.reserve_bytes == 0 {
            return false;
        }
        match free_bytes(&self.dir) {
            Ok(free) => {
                self.free = free;
                self.unmeasured = false;
            }
            Err(error) => {
                // Keep the last state: a disk that cannot be measured is not known to be full.
                if !std::mem::replace(&mut self.unmeasured, true) {
                    tracing::warn!(dir = %self.dir.display(), %error, "cannot measure free space");
                }
                return self.full;
            }
        }
        // What is free once the reserve is in place.
        let missing = if self.reserve_held {
            0
        } else {
            self.config.reserve_bytes
        };
        let usable = self.free.saturating_sub(missing);
        if !self.full && usable < self.config.min_free_bytes {
            self.full = true;
            self.give_back_reserve();
            tracing::warn!(
                free_bytes = self.free,
                min_free_bytes = self.config.min_free_bytes,
                "storage full: new submissions are rejected (storage_full) until space returns; \
                 accepted work goes on"
            );
        } else if self.full && usable >= self.config.min_free_bytes {
            self.full = false;
            self.make_reserve();
            tracing::info!(
                free_bytes = self.free,
                "storage available again: new submissions are accepted"
            );
        }
        self.full
    }

    pub(super) fn stats(&self) -> StorageStats {
        StorageStats {
            free_bytes: self.free,
            full: self.full,
            min_free_bytes: self.config.min_free_bytes,
        }
    }

    fn give_back_reserve(&mut self) {
        if std::mem::take(&mut self.reserve_held) {
            let _ = std::fs::remove_file(self.dir.join(RESERVE_FILE));
            tracing::info!(
                bytes = self.config.reserve_bytes,
                "storage reserve given back"
            );
        }
    }

    /// Writes the reserve file (real blocks, not a sparse file: the point is to hold space).
    fn make_reserve(&mut self) {
        if self.config.reserve_bytes == 0 || self.reserve_held {
            return;
        }
        let path = self.dir.join(RESERVE_FILE);
        match write_zeros(&path, self.config.reserve_bytes) {
            Ok(()) => self.reserve_held = true,
            Err(error) => {
                let _ = std::fs::remove_file(&path);
                tracing::warn!(path = %path.display(), %error, "cannot make the storage reserve");
            }
        }
    }
}

fn write_zeros(path: &Path, len: u64) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    let chunk = [0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

/// Bytes available to unprivileged users on the filesystem of `dir` (`statvfs`'s
/// `f_bavail`: root's reserved blocks are not counted, so a bridge running as root stops in
/// time too).
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_of_a_real_directory_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }

    /// A watermark above the disk's size: full at once, the reserve given back (the space is
    /// needed); no watermark: not full, the reserve made.
    #[test]
    fn a_disk_below_the_watermark_is_full_and_gives_its_reserve_back() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = dir.path().join(RESERVE_FILE);
        let roomy = StorageConfig {
            min_free_bytes: 1,
            reserve_bytes: 4096,
        };
        let s = Storage::open(dir.path(), roomy);
        assert!(!s.stats().full);
        assert_eq!(std::fs::metadata(&reserve).unwrap().len(), 4096);
        let cramped = StorageConfig {
            min_free_bytes: u64::MAX,
            reserve_bytes: 4096,
        };
        let mut s = Storage::open(dir.path(), cramped);
        assert!(s.stats().full);
        assert!(!reserve.exists(), "given back");
        assert!(s.poll(), "still full");
    }
}
