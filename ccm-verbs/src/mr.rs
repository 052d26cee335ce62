//! Memory regions over caller-supplied memory, and scatter/gather entries into them.

use crate::device::ProtectionDomain;
use crate::error::{verb_errno, Error, Result};
use crate::types::{check_range, AccessFlags, RemoteWindow};
use ibverbs_sys as sys;

/// Memory that can back a [`MemoryRegion`].
///
/// # Safety
/// `as_mut_ptr()` must return the same pointer, valid for reads and writes of `len()` bytes,
/// for as long as the value lives and is not accessed through `&mut` methods other than these,
/// including after the value is moved (heap or mapped memory, never inline storage).
pub unsafe trait RegionMemory: Send {
    /// Start of the memory.
    fn as_mut_ptr(&mut self) -> *mut u8;
    /// Length in bytes.
    fn len(&self) -> usize;
    /// True if empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
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
/// completion of the request that filled it. The slice views exist only for
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
