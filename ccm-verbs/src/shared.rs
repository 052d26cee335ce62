//! Memory shared between the process and RDMA devices: registered on several protection
//! domains at once (one per interconnect/device) and written by remote peers while the
//! process reads it. This is what the NVRAM mirror needs: the local log ring (source of RDMA
//! WRITEs on every interconnect) and the partner's mirror ring (their target).
//!
//! # Why no slices
//! A [`SharedMemory`] never hands out `&[u8]` or `&mut [u8]`: a Rust reference promises that
//! nothing else changes the bytes while it lives, and a device (or another process mapping the
//! same file) may write them at any moment. All access goes through copies
//! ([`read`](SharedMemory::read), [`write`](SharedMemory::write)) over raw pointers, and
//! [`MemoryRegion`]s over it expose keys, addresses and scatter/gather entries but not the
//! `as_slice`/`as_mut_slice` views of exclusively owned memory (see [`ExclusiveMemory`]).
//!
//! # Registration
//! `Arc<SharedMemory>` is a [`RegionMemory`]: register clones of the same `Arc` on as many
//! protection domains as needed with [`MemoryRegion::register`]; each region has its own
//! lkey/rkey and holds a strong reference, so the mapping outlives every registration.
//!
//! ```no_run
//! # fn f(pd0: &ccm_verbs::ProtectionDomain, pd1: &ccm_verbs::ProtectionDomain) -> ccm_verbs::Result<()> {
//! use ccm_verbs::{AccessFlags, MemoryRegion, SharedMemory};
//! let mirror = SharedMemory::map_file("/dev/shm/ccm-mirror", 1 << 20)?;
//! let access = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE;
//! let on_ic0 = MemoryRegion::register(pd0, mirror.clone(), access)?;
//! let on_ic1 = MemoryRegion::register(pd1, mirror.clone(), access)?;
//! let window0 = on_ic0.remote_window(0, mirror.len())?; // for the peer on interconnect 0
//! let window1 = on_ic1.remote_window(0, mirror.len())?; // and on interconnect 1
//! let mut header = [0u8; 64];
//! mirror.read(0, &mut header)?; // plain bytes, validated by the caller's checksum
//! # let _ = (window0, window1); Ok(()) }
//! ```
//!
//! The region cannot lend slices of shared memory:
//!
//! ```compile_fail,E0599
//! # use std::sync::Arc;
//! # use ccm_verbs::{MemoryRegion, SharedMemory};
//! fn view(mr: &MemoryRegion<Arc<SharedMemory>>) -> &[u8] {
//!     mr.as_slice()
//! }
//! ```
//!
//! while everything else of a region works as for other memory:
//!
//! ```
//! # use std::sync::Arc;
//! # use ccm_verbs::{MemoryRegion, SharedMemory, Sge, RemoteWindow, Result};
//! fn entries(mr: &MemoryRegion<Arc<SharedMemory>>) -> Result<(Sge, RemoteWindow)> {
//!     Ok((mr.slice(0, 64)?, mr.remote_window(64, 64)?))
//! }
//! ```

use crate::error::{Error, Result};
use crate::mr::RegionMemory;
use crate::types::check_range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, RwLock};

#[cfg(doc)]
use crate::mr::{ExclusiveMemory, MemoryRegion};

/// A page-aligned shared read-write mapping (anonymous or of a file) that RDMA devices may
/// access while the process reads and writes it through copies.
///
/// The mapping is owned by this value and unmapped only when the last `Arc` (including the
/// ones held by [`MemoryRegion`]s) is dropped, so it never goes away under a registration.
pub struct SharedMemory {
    map: memmap2::MmapRaw,
    /// Whether the mapping is backed by a file ([`flush`](Self::flush) calls `msync`).
    file_backed: bool,
    /// Serializes this process's own copies: concurrent [`read`](Self::read)s share it,
    /// a [`write`](Self::write) is exclusive, so two threads never race on the same bytes.
    /// (Copies cannot panic, so it is never poisoned.)
    copy_lock: RwLock<()>,
}

fn sys_err(call: &'static str, e: std::io::Error) -> Error {
    Error::Sys {
        call,
        errno: e.raw_os_error().unwrap_or(libc::EIO),
    }
}

impl SharedMemory {
    /// An anonymous shared mapping of `len` bytes (page aligned, zero filled).
    pub fn anonymous(len: usize) -> Result<Arc<SharedMemory>> {
        if len == 0 {
            return Err(Error::InvalidArgument("shared memory of zero length"));
        }
        let map = memmap2::MmapOptions::new()
            .len(len)
            .map_anon()
            .map_err(|e| sys_err("mmap", e))?;
        Ok(Arc::new(SharedMemory {
            map: memmap2::MmapRaw::from(map),
            file_backed: false,
            copy_lock: RwLock::new(()),
        }))
    }

    /// A shared read-write mapping of the first `len` bytes of the file at `path` (on
    /// `/dev/shm` or any file system that supports shared mappings). The file is created
    /// (mode 0600) if missing and extended with zeros to `len` if shorter; a longer file is
    /// left as is and only its first `len` bytes are mapped. Contents already in the file are
    /// kept: this is how a ring survives a restart of the process.
    ///
    /// The caller is responsible for what other processes do with the same file: they may
    /// change the bytes at any time (a [`read`](Self::read) then sees plain, possibly torn
    /// data, which the caller's checksums must catch), and truncating the file below `len`
    /// while it is mapped makes accesses to the lost pages fault (SIGBUS).
    pub fn map_file(path: impl AsRef<Path>, len: usize) -> Result<Arc<SharedMemory>> {
        if len == 0 {
            return Err(Error::InvalidArgument("shared memory of zero length"));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path.as_ref())
            .map_err(|e| sys_err("open", e))?;
        let current = file.metadata().map_err(|e| sys_err("fstat", e))?.len();
        if current < len as u64 {
            file.set_len(len as u64)
                .map_err(|e| sys_err("ftruncate", e))?;
        }
        // MAP_SHARED, PROT_READ | PROT_WRITE, offset 0 (page aligned). The mapping keeps the
        // file's pages referenced after `file` is closed.
        let map = memmap2::MmapOptions::new()
            .len(len)
            .map_raw(&file)
            .map_err(|e| sys_err("mmap", e))?;
        Ok(Arc::new(SharedMemory {
            map,
            file_backed: true,
            copy_lock: RwLock::new(()),
        }))
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Never true (zero-length mappings are refused).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Start address (page aligned); the same in every region registered over it.
    pub fn addr(&self) -> u64 {
        self.map.as_ptr() as u64
    }

    /// Whether the memory is a file mapping.
    pub fn is_file_backed(&self) -> bool {
        self.file_backed
    }

    /// Copies `offset..offset+buf.len()` into `buf`.
    ///
    /// The bytes may be written concurrently by a device (a remote peer's RDMA WRITE), or by
    /// another process mapping the same file. That is acceptable because they are copied as
    /// plain `u8`s, for which every bit pattern is valid, and never turned into references or
    /// typed values here: a copy racing with a DMA write can only yield stale or torn *data*,
    /// which the caller detects with its sequence numbers and checksums before trusting it.
    /// The `Acquire` fence before the copy keeps these loads from being performed before the
    /// caller's earlier loads (a completion it polled, a header or sequence number it read),
    /// so data that was observed to be complete is read as complete. Within this process,
    /// reads and [`write`](Self::write)s are serialized by a lock, so Rust threads never
    /// race with each other on the bytes.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        check_range(offset as u64, buf.len() as u64, self.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let _shared = self.copy_lock.read().unwrap_or_else(|e| e.into_inner());
        fence(Ordering::Acquire);
        // SAFETY: `offset + buf.len() <= len` (checked above), so the source lies inside the
        // live mapping owned by `self` (unmapped only when `self` is dropped). `buf` is a
        // distinct Rust allocation, so the ranges do not overlap. The source is never viewed
        // as a Rust reference; concurrent device/other-process writes yield plain bytes (see
        // above), and writers in this process are excluded by `copy_lock`.
        unsafe { copy_in_pieces(self.map.as_ptr().add(offset), buf.as_mut_ptr(), buf.len()) }
        Ok(())
    }

    /// Copies `data` to `offset..offset+data.len()`, then issues a `Release` fence so the
    /// bytes are ordered before the caller's later stores (a ring index it publishes) and
    /// before posting an RDMA WRITE that sends them.
    ///
    /// Bytes under an outstanding RDMA WRITE from this memory, or granted to remote writers,
    /// may be sent or overwritten in any order with this copy: coordinate with the ring
    /// protocol (write, then post; let peers write only slots they own).
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        check_range(offset as u64, data.len() as u64, self.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let guard = self.copy_lock.write().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the destination `offset..offset+data.len()` is inside the live, writable
        // (PROT_WRITE) mapping owned by `self` (bounds checked above); `data` is a distinct
        // Rust allocation, so the ranges do not overlap. No Rust reference to the mapping
        // exists, and `copy_lock` excludes every other copy of this process.
        unsafe { copy_in_pieces(data.as_ptr(), self.map.as_mut_ptr().add(offset), data.len()) }
        fence(Ordering::Release);
        drop(guard);
        Ok(())
    }

    /// Reads a little-endian `u64` at `offset` (any alignment), as [`read`](Self::read).
    pub fn read_u64_le(&self, offset: usize) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(offset, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes `value` little-endian at `offset` (any alignment), as [`write`](Self::write).
    pub fn write_u64_le(&self, offset: usize, value: u64) -> Result<()> {
        self.write(offset, &value.to_le_bytes())
    }

    /// Makes the contents durable in the backing file (`msync(MS_SYNC)`), including bytes
    /// written by devices. Nothing to do for anonymous memory.
    pub fn flush(&self) -> Result<()> {
        if self.file_backed {
            self.map.flush().map_err(|e| sys_err("msync", e))?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemory")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len())
            .field("file_backed", &self.file_backed)
            .finish()
    }
}

// SAFETY: the mapping lives at a fixed address, readable and writable for `len()` bytes, until
// the last `Arc` is dropped; a region holds one of those `Arc`s until after it deregisters (or
// forgets it when deregistration fails), so the pointer stays valid after any move of the
// `Arc`. `Arc<SharedMemory>` is `Send` because `SharedMemory` is `Send + Sync` (MmapRaw,
// RwLock). The memory is shared by design, which is why `Arc<SharedMemory>` is deliberately
// NOT `ExclusiveMemory`: regions over it lend no slices.
unsafe impl RegionMemory for Arc<SharedMemory> {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.map.as_mut_ptr()
    }
    fn len(&self) -> usize {
        self.map.len()
    }
    /// The reader side of `copy_lock`: this process's [`SharedMemory::write`]s wait while a
    /// region's volatile read holds it, so they never race with it.
    fn read_guard(&self) -> Option<std::sync::RwLockReadGuard<'_, ()>> {
        Some(self.copy_lock.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Largest piece [`copy_in_pieces`] copies at once.
const COPY_PIECE: usize = 4096;

/// `copy_nonoverlapping` of `len` bytes in pieces of at most [`COPY_PIECE`]. glibc's `memcpy` switches to
/// `rep movsb` above a few KiB; a CPU with fast string moves runs both alike, but QEMU's TCG (the lab guest)
/// emulates `rep movsb` a byte at a time: a 64 KiB copy took 142 us in one piece and 19.5 us in 4 KiB pieces
/// (docs/performance.md). Natively the pieces cost nothing measurable.
///
/// # Safety
/// As `copy_nonoverlapping`: `src` readable and `dst` writable for `len` bytes, the ranges disjoint.
unsafe fn copy_in_pieces(src: *const u8, dst: *mut u8, len: usize) {
    let mut done = 0;
    while done < len {
        let n = COPY_PIECE.min(len - done);
        // SAFETY: `done + n <= len`, so both pieces lie within the ranges the caller vouched for.
        unsafe { std::ptr::copy_nonoverlapping(src.add(done), dst.add(done), n) };
        done += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_path(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("ccm-verbs-shared-{tag}-{}", std::process::id()))
    }

    #[test]
    fn anonymous_is_zeroed_page_aligned_and_round_trips() {
        let m = SharedMemory::anonymous(10_000).unwrap();
        assert_eq!(m.len(), 10_000);
        assert!(!m.is_empty());
        assert!(!m.is_file_backed());
        assert_eq!(m.addr() % 4096, 0);
        let mut all = vec![0xffu8; 10_000];
        m.read(0, &mut all).unwrap();
        assert!(all.iter().all(|&b| b == 0));

        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 1) as u8).collect();
        m.write(4000, &data).unwrap();
        let mut back = vec![0u8; 3000];
        m.read(4000, &mut back).unwrap();
        assert_eq!(back, data);
        // Neighbours untouched.
        let mut edge = [0xffu8; 2];
        m.read(3999, &mut edge[..1]).unwrap();
        m.read(7000, &mut edge[1..]).unwrap();
        assert_eq!(edge, [0, 0]);
        // Last byte reachable, u64 at an unaligned offset.
        m.write(9_999, &[0xab]).unwrap();
        m.read(9_999, &mut edge[..1]).unwrap();
        assert_eq!(edge[0], 0xab);
        m.write_u64_le(8_001, 0x0102_0304_0506_0708).unwrap();
        assert_eq!(m.read_u64_le(8_001).unwrap(), 0x0102_0304_0506_0708);
        let mut raw = [0u8; 8];
        m.read(8_001, &mut raw).unwrap();
        assert_eq!(raw, [8, 7, 6, 5, 4, 3, 2, 1]);
        m.flush().unwrap();
    }

    #[test]
    fn copies_larger_than_a_piece_round_trip_whole_at_any_offset() {
        // Three pieces and a part (COPY_PIECE is 4 KiB), starting off a piece boundary.
        let m = SharedMemory::anonymous(64 * 1024).unwrap();
        let data: Vec<u8> = (0..3 * COPY_PIECE as u32 + 1000)
            .map(|i| (i % 251) as u8)
            .collect();
        m.write(13, &data).unwrap();
        let mut back = vec![0u8; data.len() + 2];
        m.read(12, &mut back).unwrap();
        assert_eq!(back[0], 0, "the byte before is untouched");
        assert_eq!(&back[1..=data.len()], &data[..]);
        assert_eq!(back[data.len() + 1], 0, "the byte after is untouched");
    }

    #[test]
    fn out_of_bounds_and_zero_length_are_errors() {
        assert_eq!(
            SharedMemory::anonymous(0).unwrap_err(),
            Error::InvalidArgument("shared memory of zero length")
        );
        assert!(matches!(
            SharedMemory::map_file(tmp_path("zero"), 0),
            Err(Error::InvalidArgument(_))
        ));
        let m = SharedMemory::anonymous(4096).unwrap();
        m.write(0, &[0x5a; 16]).unwrap();
        let mut b = [0u8; 16];
        assert_eq!(
            m.read(4090, &mut b),
            Err(Error::OutOfBounds {
                offset: 4090,
                len: 16,
                size: 4096
            })
        );
        assert_eq!(
            m.write(4081, &b),
            Err(Error::OutOfBounds {
                offset: 4081,
                len: 16,
                size: 4096
            })
        );
        assert!(matches!(
            m.read(usize::MAX, &mut b[..2]),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            m.read_u64_le(4089),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            m.write_u64_le(4089, 1),
            Err(Error::OutOfBounds { .. })
        ));
        // A failed write changed nothing; empty copies at the end are fine.
        m.read(0, &mut b).unwrap();
        assert_eq!(b, [0x5a; 16]);
        m.read(4096, &mut []).unwrap();
        m.write(4096, &[]).unwrap();
        assert!(matches!(
            m.read(4097, &mut []),
            Err(Error::OutOfBounds { .. })
        ));
    }

    #[test]
    fn map_file_persists_across_mappings() {
        let path = tmp_path("persist");
        let _ = std::fs::remove_file(&path);
        {
            let a = SharedMemory::map_file(&path, 8192).unwrap();
            assert!(a.is_file_backed());
            assert_eq!(a.addr() % 4096, 0);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), 8192);
            a.write(100, b"nvram log entry").unwrap();
            // A second, simultaneous mapping of the same file sees the bytes (MAP_SHARED)...
            let b = SharedMemory::map_file(&path, 8192).unwrap();
            assert_ne!(a.addr(), b.addr());
            let mut got = [0u8; 15];
            b.read(100, &mut got).unwrap();
            assert_eq!(&got, b"nvram log entry");
            // ...and writes through it show up in the first.
            b.write_u64_le(8184, 42).unwrap();
            assert_eq!(a.read_u64_le(8184).unwrap(), 42);
            a.flush().unwrap();
        }
        // After both are unmapped: the file holds the bytes, and a new mapping finds them.
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[100..115], b"nvram log entry");
        assert_eq!(&on_disk[8184..], &42u64.to_le_bytes());
        let c = SharedMemory::map_file(&path, 8192).unwrap();
        let mut got = [0u8; 15];
        c.read(100, &mut got).unwrap();
        assert_eq!(&got, b"nvram log entry");
        drop(c);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn map_file_extends_short_files_and_keeps_long_ones() {
        let path = tmp_path("sizes");
        std::fs::write(&path, b"head").unwrap();
        let m = SharedMemory::map_file(&path, 5000).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 5000);
        let mut b = [0xffu8; 6];
        m.read(0, &mut b).unwrap();
        assert_eq!(&b, b"head\0\0");
        drop(m);
        // A longer file: only the first `len` bytes are mapped, the file is not truncated.
        let m = SharedMemory::map_file(&path, 100).unwrap();
        assert_eq!(m.len(), 100);
        assert!(matches!(
            m.read(100, &mut b[..1]),
            Err(Error::OutOfBounds { .. })
        ));
        m.write(96, b"tail").unwrap();
        m.flush().unwrap();
        drop(m);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), 5000);
        assert_eq!(&on_disk[96..100], b"tail");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn map_file_reports_open_errors() {
        let err = SharedMemory::map_file("/nonexistent-ccm-dir/ring", 4096).unwrap_err();
        assert_eq!(
            err,
            Error::Sys {
                call: "open",
                errno: libc::ENOENT
            }
        );
    }

    #[test]
    fn concurrent_readers_and_writers_see_whole_writes() {
        // Writers fill a 4 KiB block with one repeated byte; readers must never see a mix
        // (in-process copies are serialized).
        let m = SharedMemory::anonymous(4096).unwrap();
        std::thread::scope(|s| {
            for w in 0..2u8 {
                let m = &m;
                s.spawn(move || {
                    for i in 0..500u32 {
                        m.write(0, &[(i as u8).wrapping_mul(2).wrapping_add(w); 4096])
                            .unwrap();
                    }
                });
            }
            for _ in 0..2 {
                let m = &m;
                s.spawn(move || {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..500 {
                        m.read(0, &mut buf).unwrap();
                        assert!(buf.iter().all(|&b| b == buf[0]), "torn in-process copy");
                    }
                });
            }
        });
    }

    #[test]
    fn arc_is_region_memory_with_a_stable_pointer() {
        let m = SharedMemory::anonymous(8192).unwrap();
        let mut a = m.clone();
        let mut b = m.clone();
        assert_eq!(RegionMemory::as_mut_ptr(&mut a) as u64, m.addr());
        assert_eq!(RegionMemory::as_mut_ptr(&mut b) as u64, m.addr());
        assert_eq!(RegionMemory::len(&a), 8192);
        assert_eq!(Arc::strong_count(&m), 3);
    }
}
