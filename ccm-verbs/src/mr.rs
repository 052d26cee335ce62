//! Memory regions over caller-supplied memory, and scatter/gather entries into them.

use crate::device::ProtectionDomain;
use crate::error::{verb_errno, Error, Result};
use crate::types::{check_range, AccessFlags, RemoteWindow};
use ibverbs_sys as sys;
use std::sync::atomic::{fence, Ordering};

/// Memory that can back a [`MemoryRegion`].
///
/// # Safety
/// `as_mut_ptr()` must return the same pointer, valid for reads and writes of `len()` bytes,
/// for as long as the value lives and is not accessed through `&mut` methods other than these,
/// including after the value is moved (heap or mapped memory, never inline storage).
/// If Rust code can write the memory through another handle while a region owns the value,
/// [`read_guard`](Self::read_guard) must return a guard that excludes those writes.
pub unsafe trait RegionMemory: Send {
    /// Start of the memory.
    fn as_mut_ptr(&mut self) -> *mut u8;
    /// Length in bytes.
    fn len(&self) -> usize;
    /// True if empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A shared guard held during [`MemoryRegion::read_volatile_u8`] and
    /// [`MemoryRegion::read_volatile_u64_le`] that excludes writes to the memory from Rust
    /// through other handles (`None`, the default: the region is the only handle, and its
    /// `&mut self` writes cannot overlap a `&self` read).
    #[doc(hidden)]
    fn read_guard(&self) -> Option<std::sync::RwLockReadGuard<'_, ()>> {
        None
    }
}

/// Memory that the owning [`MemoryRegion`] can lend as `&[u8]` / `&mut [u8]`
/// ([`as_slice`](MemoryRegion::as_slice), [`as_mut_slice`](MemoryRegion::as_mut_slice)).
///
/// Not implemented for [`Arc<SharedMemory>`](crate::SharedMemory): that memory is reachable
/// through other handles (and other regions) at the same time, so a slice view would alias
/// their writes; it is read and written through [`SharedMemory::read`](crate::SharedMemory::read)
/// and [`SharedMemory::write`](crate::SharedMemory::write) instead.
///
/// # Safety
/// While the region owns the value, the memory must be reachable only through the region
/// (no other handle, clone or region reads or writes it from Rust), so that a `&[u8]` borrowed
/// from `&self` and a `&mut [u8]` borrowed from `&mut self` do not alias other Rust accesses.
pub unsafe trait ExclusiveMemory: RegionMemory {}

// SAFETY: a Vec's heap buffer does not move when the Vec moves; the region never grows it.
unsafe impl RegionMemory for Vec<u8> {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        <[u8]>::as_mut_ptr(self)
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

// SAFETY: a boxed slice's heap buffer is fixed.
unsafe impl RegionMemory for Box<[u8]> {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        <[u8]>::as_mut_ptr(self)
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

// SAFETY: a mapping stays at its address until unmapped on drop.
unsafe impl RegionMemory for memmap2::MmapMut {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        <[u8]>::as_mut_ptr(self)
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

// SAFETY: the region owns the Vec, the only handle to its heap buffer.
unsafe impl ExclusiveMemory for Vec<u8> {}
// SAFETY: the region owns the box, the only handle to its buffer.
unsafe impl ExclusiveMemory for Box<[u8]> {}
// SAFETY: the region owns the MmapMut, the only handle to the mapping in this process (other
// processes mapping the same file are outside Rust's view, as with `MmapMut` itself).
unsafe impl ExclusiveMemory for memmap2::MmapMut {}

/// A scatter/gather entry: a byte range of a registered memory region, with its lkey.
///
/// Only [`MemoryRegion`] makes these, so an entry always names memory that was registered;
/// the device checks the lkey and range on every access. Layout-identical to `ibv_sge`, so
/// a `&[Sge]` goes to the device without copying.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sge {
    addr: u64,
    length: u32,
    lkey: u32,
}

const _: () = assert!(std::mem::size_of::<Sge>() == std::mem::size_of::<sys::ibv_sge>());
const _: () = assert!(std::mem::align_of::<Sge>() == std::mem::align_of::<sys::ibv_sge>());

impl Sge {
    /// Start address.
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// Length in bytes.
    pub fn len(&self) -> u32 {
        self.length
    }
    /// True if zero-length.
    pub fn is_empty(&self) -> bool {
        self.length == 0
    }
    /// Local key.
    pub fn lkey(&self) -> u32 {
        self.lkey
    }
}

/// A registered memory region that owns its memory `M` (a `Vec<u8>`, `Box<[u8]>`,
/// `memmap2::MmapMut`, or a clone of an `Arc<`[`SharedMemory`](crate::SharedMemory)`>`, which
/// can be registered on several protection domains at once) and keeps its protection domain
/// alive.
///
/// Dropping the region deregisters it first, then frees the memory;
/// [`into_inner`](Self::into_inner) gives the memory back. If deregistration fails the memory is leaked rather
/// than freed under a device that might still access it.
///
/// The device writes this memory (RECV, READ responses, remote WRITEs if granted) while work
/// requests are outstanding: read it through [`as_slice`](Self::as_slice) only after the
/// completion of the request that filled it, or poll single bytes and words that a device
/// may be writing with [`read_volatile_u8`](Self::read_volatile_u8) and
/// [`read_volatile_u64_le`](Self::read_volatile_u64_le) (any memory). The slice views exist only for
/// [`ExclusiveMemory`]; shared memory is accessed through [`SharedMemory`](crate::SharedMemory)'s
/// copies.
pub struct MemoryRegion<M: RegionMemory> {
    mr: *mut sys::ibv_mr,
    mem: Option<M>,
    ptr: *mut u8,
    len: usize,
    access: AccessFlags,
    pd: ProtectionDomain,
}

// SAFETY: the raw pointers are owned by this region; the verbs used on `mr` are thread safe and
// `M: Send`.
unsafe impl<M: RegionMemory> Send for MemoryRegion<M> {}
// SAFETY: shared access only reads the memory or hands out keys/addresses.
unsafe impl<M: RegionMemory + Sync> Sync for MemoryRegion<M> {}

impl<M: RegionMemory> MemoryRegion<M> {
    /// Registers `mem` with `access` ([`AccessFlags::LOCAL_WRITE`] unless remote access is
    /// wanted). Remote read/write is never granted unless asked for.
    pub fn register(pd: &ProtectionDomain, mut mem: M, access: AccessFlags) -> Result<Self> {
        let len = mem.len();
        if len == 0 {
            return Err(Error::InvalidArgument("memory region of zero length"));
        }
        let ptr = mem.as_mut_ptr();
        // SAFETY: `ptr..ptr+len` is valid memory owned by `mem`, which this region keeps until
        // after deregistration (RegionMemory contract).
        let mr = unsafe { sys::ibv_reg_mr(pd.raw(), ptr.cast(), len, access.bits() as i32) };
        if mr.is_null() {
            return Err(verb_errno("ibv_reg_mr"));
        }
        Ok(MemoryRegion {
            mr,
            mem: Some(mem),
            ptr,
            len,
            access,
            pd: pd.clone(),
        })
    }

    /// Local key.
    pub fn lkey(&self) -> u32 {
        // SAFETY: `mr` is live while `self` is.
        unsafe { (*self.mr).lkey }
    }
    /// Remote key (useful only with remote access flags).
    pub fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.mr).rkey }
    }
    /// Start address.
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Never true (zero-length regions are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Access flags it was registered with.
    pub fn access(&self) -> AccessFlags {
        self.access
    }
    /// The protection domain.
    pub fn pd(&self) -> &ProtectionDomain {
        &self.pd
    }

    /// Bounds-checked entry for `offset..offset+len`.
    pub fn slice(&self, offset: usize, len: usize) -> Result<Sge> {
        check_range(offset as u64, len as u64, self.len as u64)?;
        if len > u32::MAX as usize {
            return Err(Error::InvalidArgument("sge longer than 4 GiB"));
        }
        Ok(Sge {
            addr: self.addr() + offset as u64,
            length: len as u32,
            lkey: self.lkey(),
        })
    }

    /// Entry for the whole region (up to 4 GiB).
    pub fn sge(&self) -> Result<Sge> {
        self.slice(0, self.len)
    }

    /// The window a peer needs to WRITE/READ `offset..offset+len` of this region.
    pub fn remote_window(&self, offset: usize, len: usize) -> Result<RemoteWindow> {
        check_range(offset as u64, len as u64, self.len as u64)?;
        Ok(RemoteWindow {
            addr: self.addr() + offset as u64,
            len: len as u64,
            rkey: self.rkey(),
        })
    }

    /// Reads the byte at `offset` while the device may be writing the region (a peer's RDMA
    /// WRITE, a RECV, a READ response): the way to poll for arrival, e.g. the last byte of an
    /// RDMA WRITE payload, as `ib_write_lat` does. Lock-free for memory the region owns
    /// exclusively (`Vec<u8>`, `Box<[u8]>`, `MmapMut`); for
    /// [`SharedMemory`](crate::SharedMemory) it takes the mapping's reader lock, shared with
    /// [`SharedMemory::read`](crate::SharedMemory::read), so that this process's own
    /// [`SharedMemory::write`](crate::SharedMemory::write)s never race with it.
    ///
    /// Every call loads the byte from memory again (a volatile load: never cached in a
    /// register, never merged with another call's load), and is followed by an `Acquire`
    /// fence, so the caller's later reads of the region (through this method,
    /// [`as_slice`](Self::as_slice) or `SharedMemory::read`) are not performed before it.
    /// Whether the rest of a message has landed when its last byte has is the device's
    /// promise, not this method's (perftest relies on it for `ib_write_lat`).
    ///
    /// `Err(OutOfBounds)` if `offset >= len()`.
    #[inline]
    pub fn read_volatile_u8(&self, offset: usize) -> Result<u8> {
        let _guard = self.mem.as_ref().and_then(|m| m.read_guard());
        // SAFETY: `ptr..ptr+len` is the live memory owned by `mem` (RegionMemory contract),
        // registered and kept until after deregistration, hence readable while `&self` lives.
        // Rust writes cannot race with this read: for exclusive memory the only Rust writer
        // is `as_mut_slice(&mut self)`, excluded by this `&self` borrow; other handles'
        // writes (SharedMemory) are excluded by `_guard`. Device writes happen outside the
        // Rust abstract machine and are observed as plain bytes (every bit pattern is a valid
        // `u8`); no reference to the memory is created here.
        let v = unsafe { volatile_u8(self.ptr, self.len, offset) }?;
        fence(Ordering::Acquire);
        Ok(v)
    }

    /// Reads the little-endian `u64` at `offset` (any alignment) while the device may be
    /// writing the region, as [`read_volatile_u8`](Self::read_volatile_u8). At an 8-byte
    /// aligned address it is one 8-byte load (not torn on x86_64 and aarch64); at other
    /// addresses the bytes may be loaded separately, so a concurrent device write may be
    /// seen in part (devices give no order of the bytes within a write either: check a
    /// sequence number or checksum before trusting data).
    ///
    /// `Err(OutOfBounds)` if `offset + 8 > len()`.
    #[inline]
    pub fn read_volatile_u64_le(&self, offset: usize) -> Result<u64> {
        let _guard = self.mem.as_ref().and_then(|m| m.read_guard());
        // SAFETY: as in `read_volatile_u8`.
        let v = unsafe { volatile_u64_le(self.ptr, self.len, offset) }?;
        fence(Ordering::Acquire);
        Ok(v)
    }

    /// Deregisters and returns the memory.
    pub fn into_inner(mut self) -> Result<M> {
        // SAFETY: `mr` is live and deregistered exactly once (nulled below).
        let rc = unsafe { sys::ibv_dereg_mr(self.mr) };
        if rc != 0 {
            return Err(Error::Verb {
                verb: "ibv_dereg_mr",
                errno: if rc < 0 { -rc } else { rc },
            });
        }
        self.mr = std::ptr::null_mut();
        self.mem
            .take()
            .ok_or(Error::InvalidArgument("memory already taken"))
    }
}

/// Slice views, only for memory the region owns exclusively (not for
/// [`SharedMemory`](crate::SharedMemory), which is read and written through copies).
impl<M: ExclusiveMemory> MemoryRegion<M> {
    /// The memory, read-only. Bytes under an outstanding work request or a granted remote
    /// write may change; read after the completion.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is the live memory owned by `mem`, reachable from Rust only
        // through this region (`M: ExclusiveMemory`), so no `&mut` view aliases it.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The memory, writable (fill send buffers before posting).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` excludes other Rust borrows.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// Volatile load of the byte at `base + offset`, bounds checked against `len`.
///
/// # Safety
/// `base..base+len` must be valid for reads, and no write from Rust may race with this read.
#[inline]
unsafe fn volatile_u8(base: *const u8, len: usize, offset: usize) -> Result<u8> {
    check_range(offset as u64, 1, len as u64)?;
    // SAFETY: `offset < len` (checked above), so `base + offset` lies inside the caller's
    // readable range (no overflow: the range is one allocation); `u8` needs no alignment.
    Ok(unsafe { base.add(offset).read_volatile() })
}

/// Volatile load of the little-endian `u64` at `base + offset` (any alignment), bounds
/// checked against `len`.
///
/// # Safety
/// As [`volatile_u8`].
#[inline]
unsafe fn volatile_u64_le(base: *const u8, len: usize, offset: usize) -> Result<u64> {
    check_range(offset as u64, 8, len as u64)?;
    // SAFETY: `offset + 8 <= len` (checked above), so the 8 bytes at `base + offset` lie
    // inside the caller's readable range.
    let p = unsafe { base.add(offset) };
    if (p as usize) % std::mem::align_of::<u64>() == 0 {
        // SAFETY: in bounds (above) and aligned for `u64` (just checked); every bit pattern
        // is a valid `u64`.
        Ok(u64::from_le(unsafe { p.cast::<u64>().read_volatile() }))
    } else {
        // SAFETY: in bounds (above); `[u8; 8]` has alignment 1.
        Ok(u64::from_le_bytes(unsafe {
            p.cast::<[u8; 8]>().read_volatile()
        }))
    }
}

impl<M: RegionMemory> Drop for MemoryRegion<M> {
    fn drop(&mut self) {
        if self.mr.is_null() {
            return;
        }
        // SAFETY: `mr` is live and deregistered once; the PD (field) outlives this call.
        let rc = unsafe { sys::ibv_dereg_mr(self.mr) };
        if rc != 0 {
            // The device may still own the memory: leak it rather than free it.
            std::mem::forget(self.mem.take());
        }
    }
}

impl<M: RegionMemory> std::fmt::Debug for MemoryRegion<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len)
            .field("lkey", &self.lkey())
            .field("rkey", &self.rkey())
            .field("access", &self.access)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_reads_are_bounds_checked_and_little_endian() {
        // 8-byte aligned storage, so both the aligned and the unaligned u64 paths run.
        let mut words = [0u64; 4];
        let bytes: Vec<u8> = (0..32u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(1))
            .collect();
        for (w, c) in words.iter_mut().zip(bytes.chunks(8)) {
            *w = u64::from_ne_bytes(c.try_into().unwrap());
        }
        let base = words.as_ptr().cast::<u8>();
        let len = 32;
        let le = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        // SAFETY (all calls below): `base..base+32` is `words`, alive and not written
        // during the calls.
        unsafe {
            for (o, &b) in bytes.iter().enumerate() {
                assert_eq!(volatile_u8(base, len, o), Ok(b), "byte {o}");
            }
            for o in 0..=len - 8 {
                assert_eq!(volatile_u64_le(base, len, o), Ok(le(o)), "u64 at {o}");
            }
            assert_eq!(
                volatile_u8(base, len, len),
                Err(Error::OutOfBounds {
                    offset: 32,
                    len: 1,
                    size: 32
                })
            );
            assert_eq!(
                volatile_u64_le(base, len, len - 7),
                Err(Error::OutOfBounds {
                    offset: 25,
                    len: 8,
                    size: 32
                })
            );
            assert!(matches!(
                volatile_u8(base, len, usize::MAX),
                Err(Error::OutOfBounds { .. })
            ));
            assert!(matches!(
                volatile_u64_le(base, len, usize::MAX - 3),
                Err(Error::OutOfBounds { .. })
            ));
            // A region of fewer than 8 bytes has no u64.
            assert!(matches!(
                volatile_u64_le(base, 7, 0),
                Err(Error::OutOfBounds { .. })
            ));
        }
    }

    #[test]
    fn only_shared_memory_takes_the_read_guard() {
        let v = vec![0u8; 16];
        assert!(v.read_guard().is_none());
        let b: Box<[u8]> = vec![0u8; 16].into_boxed_slice();
        assert!(b.read_guard().is_none());
        let m = crate::SharedMemory::anonymous(4096).unwrap();
        let g = m.read_guard();
        assert!(g.is_some());
        // Readers share it: a concurrent SharedMemory::read still works.
        let mut buf = [1u8; 4];
        m.read(0, &mut buf).unwrap();
        assert_eq!(buf, [0; 4]);
    }
}
