use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide I/O counters of one [`crate::Storage`].
#[derive(Debug, Default)]
pub struct IoStats {
    gets: AtomicU64,
    bytes_read: AtomicU64,
    puts: AtomicU64,
    bytes_written: AtomicU64,
    deletes: AtomicU64,
    retries: AtomicU64,
}

/// A snapshot of [`IoStats`]; subtract two to get the I/O of an interval.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoCounters {
    pub gets: u64,
    pub bytes_read: u64,
    pub puts: u64,
    pub bytes_written: u64,
    pub deletes: u64,
    pub retries: u64,
}

impl IoStats {
    pub(crate) fn record_get(&self, bytes: u64) {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn record_put(&self, bytes: u64) {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn record_delete(&self) {
        self.deletes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> IoCounters {
        IoCounters {
            gets: self.gets.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            puts: self.puts.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

impl std::ops::Sub for IoCounters {
    type Output = IoCounters;

    fn sub(self, earlier: IoCounters) -> IoCounters {
        IoCounters {
            gets: self.gets - earlier.gets,
            bytes_read: self.bytes_read - earlier.bytes_read,
            puts: self.puts - earlier.puts,
            bytes_written: self.bytes_written - earlier.bytes_written,
            deletes: self.deletes - earlier.deletes,
            retries: self.retries - earlier.retries,
        }
    }
}
