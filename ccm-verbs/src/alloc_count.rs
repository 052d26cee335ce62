//! A counting global allocator for tests that prove a path allocates nothing (the data path's
//! posts and polls, the NVRAM mirror's append and wait): it forwards to the system allocator and
//! counts allocations and reallocations per thread. It lives here because it needs `unsafe`.
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: ccm_verbs::alloc_count::Counting = ccm_verbs::alloc_count::Counting;
//! let before = ccm_verbs::alloc_count::allocations();
//! // ... the path under test ...
//! assert_eq!(ccm_verbs::alloc_count::allocations(), before);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The counting allocator; install it with `#[global_allocator]` in a test binary.
pub struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged, so
// the `GlobalAlloc` contract holds as it does for `System`; counting touches only a thread-local
// (`try_with` never panics, also during thread teardown).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller upholds `alloc`'s contract, which is `System.alloc`'s.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `System` through this allocator with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: `p` came from `System` through this allocator with layout `l`; `n` is the
        // caller's valid new size.
        unsafe { System.realloc(p, l, n) }
    }
}

/// Allocations and reallocations made so far by the calling thread (while [`Counting`] is the
/// global allocator; otherwise always 0).
pub fn allocations() -> u64 {
    ALLOCS.with(|c| c.get())
}
