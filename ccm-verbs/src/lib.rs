//! ccm-verbs: a safe, allocation-free RDMA verbs layer over the raw `ibverbs-sys` bindings
//! (Debian's system libibverbs). It is the only crate of ccm that contains `unsafe`.
//!
//! # Ownership
//! Every object holds an `Arc` of its parent, so destruction order is enforced without
//! lifetimes: a [`MemoryRegion`] keeps its [`ProtectionDomain`], a [`QueuePair`] its PD and
//! [`CompletionQueue`]s, and all of them their [`Context`]. A context, its PDs, MRs, CQs and
//! QPs can therefore live side by side in one struct and move across threads (all are
//! `Send + Sync`; libibverbs verbs are thread safe). Memory regions own the memory they
//! register (`Vec<u8>`, `Box<[u8]>`, `memmap2::MmapMut`) and free it only after
//! deregistration; [`SharedMemory`] (behind an `Arc`) is registered on several protection
//! domains at once and accessed only through copies, since devices write it concurrently.
//!
//! # Data path without allocation
//! [`QueuePair::post_send`] and [`QueuePair::post_recv`] take slices of work requests that
//! borrow caller-owned scatter/gather lists ([`Sge`], layout-identical to `ibv_sge`) and
//! link them into `ibv_send_wr`/`ibv_recv_wr` arrays on the stack, calling the provider's
//! `post_send`/`post_recv` through the context ops table (verbs.h's inline functions are not
//! exported). [`CompletionQueue::poll`] writes straight into a caller's `&mut [Completion]`
//! (layout-identical to `ibv_wc`). Nothing on these paths touches the heap.
//!
//! # Byte order of immediate data
//! APIs take and return immediate data in **host** order; the crate converts to and from the
//! network order the wire and `ibv_wc.imm_data` use.
//!
//! # Errors
//! Every failed verb returns [`Error::Verb`] naming the verb and its errno (or a typed variant);
//! no device answer makes the library panic. Unknown status, opcode, state and event numbers
//! decode to `Other`/`Unknown` variants.

pub mod alloc_count;
pub mod clock;
pub mod cq;
pub mod device;
pub mod error;
pub mod event;
pub mod lab;
pub mod mr;
pub mod qp;
pub mod shared;
pub mod types;

pub use cq::{Completion, CompletionChannel, CompletionQueue, CqEvent};
pub use device::{
    devices, random_psn, Context, DeviceAttr, DeviceInfo, DeviceList, ProtectionDomain,
};
pub use error::{Error, Result};
pub use event::{AsyncEvent, AsyncEvents};
pub use mr::{ExclusiveMemory, MemoryRegion, RegionMemory, Sge};
pub use qp::{
    InitAttr, Payload, QpAttr, QpCaps, QueuePair, RecvWr, RtrAttr, RtsAttr, SendOp, SendWr,
    POST_CHUNK,
};
pub use shared::SharedMemory;
pub use types::*;

/// The raw bindings, for what this crate does not wrap.
pub use ibverbs_sys as sys;

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn every_object_is_send_and_sync() {
        send_sync::<Context>();
        send_sync::<ProtectionDomain>();
        send_sync::<MemoryRegion<Vec<u8>>>();
        send_sync::<MemoryRegion<Box<[u8]>>>();
        send_sync::<MemoryRegion<memmap2::MmapMut>>();
        send_sync::<std::sync::Arc<SharedMemory>>();
        send_sync::<MemoryRegion<std::sync::Arc<SharedMemory>>>();
        send_sync::<CompletionChannel>();
        send_sync::<CompletionQueue>();
        send_sync::<QueuePair>();
        send_sync::<AsyncEvents>();
        send_sync::<Sge>();
        send_sync::<Endpoint>();
        send_sync::<Error>();
    }
}
