//! The VI provider of one interconnect (device + port), protection tags and registered memory.

use crate::cq::ViCq;
use crate::error::{Error, Result};
use crate::state::ErrorCause;
use crate::vi::{Vi, ViAttributes, ViShared};
use ccm_verbs::{
    AccessFlags, AsyncEvent, AsyncEvents, Context, DeviceAttr, ExclusiveMemory, GidEntry,
    MemoryRegion, Mtu, ProtectionDomain, RegionMemory, RemoteWindow, Sge,
};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

static NEXT_PTAG: AtomicU32 = AtomicU32::new(1);

pub(crate) struct NicInner {
    pub(crate) ctx: Context,
    pub(crate) port: u8,
    pub(crate) gid: GidEntry,
    pub(crate) interconnect: u8,
    pub(crate) dev: DeviceAttr,
    pub(crate) max_msg: u32,
    events: AsyncEvents,
    /// VIs of this NIC by QPN, for async QP errors.
    pub(crate) vis: Mutex<HashMap<u32, Weak<ViShared>>>,
}

/// A VI provider for one interconnect: an open device, one port and its RoCE v2 GID
/// (`VipOpenNic`). Cheap to clone.
#[derive(Clone)]
pub struct Nic {
    pub(crate) inner: Arc<NicInner>,
}

impl std::fmt::Debug for Nic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Nic({} port {} interconnect {} gid {})",
            self.inner.ctx.name(),
            self.inner.port,
            self.inner.interconnect,
            self.inner.gid.gid
        )
    }
}

/// What [`Nic::query`] reports (`VipQueryNic`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicAttributes {
    /// Device name.
    pub name: String,
    /// Interconnect id given at open.
    pub interconnect: u8,
    /// Port.
    pub port: u8,
    /// The GID VIs of this NIC use.
    pub gid: GidEntry,
    /// Active MTU now.
    pub active_mtu: Mtu,
    /// Largest message of the port (upper bound of `max_transfer_size`).
    pub max_transfer_size: u32,
    /// Device limits.
    pub device: DeviceAttr,
}

/// An async event of the NIC, after ccm-vi acted on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NicEvent {
    /// The event as the device reported it.
    pub event: AsyncEvent,
    /// If it was a QP error of one of this NIC's VIs: that VI (now in Error).
    pub vi: Option<crate::ViId>,
}

impl Nic {
    /// Opens `device`, `port`, selecting the RoCE v2 GID of address `ip` from the GID table.
    pub fn open(device: &str, port: u8, ip: IpAddr, interconnect: u8) -> Result<Nic> {
        let ctx = Context::open(device)?;
        let gid = ctx.gid_by_ip(port, ip)?;
        Self::with_gid(ctx, port, gid, interconnect)
    }

    /// Opens `device`, `port`, selecting a RoCE v2 GID of netdev `netdev`.
    pub fn open_netdev(device: &str, port: u8, netdev: &str, interconnect: u8) -> Result<Nic> {
        let ctx = Context::open(device)?;
        let gid = ctx.gid_by_netdev(port, netdev)?;
        Self::with_gid(ctx, port, gid, interconnect)
    }

    fn with_gid(ctx: Context, port: u8, gid: GidEntry, interconnect: u8) -> Result<Nic> {
        let dev = ctx.query_device()?;
        let pa = ctx.query_port(port)?;
        let events = AsyncEvents::new(&ctx)?;
        Ok(Nic {
            inner: Arc::new(NicInner {
                ctx,
                port,
                gid,
                interconnect,
                dev,
                max_msg: pa.max_msg_sz,
                events,
                vis: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Device name.
    pub fn name(&self) -> &str {
        self.inner.ctx.name()
    }
    /// Interconnect id.
    pub fn interconnect(&self) -> u8 {
        self.inner.interconnect
    }
    /// The device context (for port queries by a link monitor).
    pub fn context(&self) -> &Context {
        &self.inner.ctx
    }
    /// Port number.
    pub fn port(&self) -> u8 {
        self.inner.port
    }
    /// The GID entry in use.
    pub fn gid(&self) -> &GidEntry {
        &self.inner.gid
    }

    /// `VipQueryNic`: attributes, with the port's active MTU read now.
    pub fn query(&self) -> Result<NicAttributes> {
        Ok(NicAttributes {
            name: self.name().to_string(),
            interconnect: self.inner.interconnect,
            port: self.inner.port,
            gid: self.inner.gid.clone(),
            active_mtu: self.inner.ctx.active_mtu(self.inner.port)?,
            max_transfer_size: self.inner.max_msg,
            device: self.inner.dev,
        })
    }

    /// `VipCreatePtag`: a new protection tag (its own protection domain).
    pub fn create_ptag(&self) -> Result<Ptag> {
        Ok(Ptag {
            id: NEXT_PTAG.fetch_add(1, Ordering::Relaxed),
            pd: ProtectionDomain::new(&self.inner.ctx)?,
        })
    }

    /// `VipCreateCQ`: a completion queue of `entries` entries that several VIs can share.
    pub fn create_cq(&self, entries: u32) -> Result<ViCq> {
        ViCq::new(&self.inner.ctx, entries, false)
    }

    /// `VipCreateVi`: a VI under `ptag`. Each work queue goes to the given shared CQ, or to a
    /// private one (then `send_done`/`recv_done` work on the VI directly).
    pub fn create_vi(
        &self,
        ptag: &Ptag,
        attrs: &ViAttributes,
        send_cq: Option<&ViCq>,
        recv_cq: Option<&ViCq>,
    ) -> Result<Vi> {
        Vi::create(self, ptag, attrs, send_cq, recv_cq)
    }

    /// Reads the next async event (bounded wait). A QP error of one of this NIC's VIs moves
    /// that VI to Error (its descriptors are flushed) before the event is returned.
    pub fn next_event(&self, timeout: Duration) -> Result<Option<NicEvent>> {
        let Some(event) = self.inner.events.next_timeout(timeout)? else {
            return Ok(None);
        };
        let qpn = match event {
            AsyncEvent::QpFatal { qpn }
            | AsyncEvent::QpReqErr { qpn }
            | AsyncEvent::QpAccessErr { qpn } => Some(qpn),
            _ => None,
        };
        let mut vi = None;
        if let Some(qpn) = qpn {
            let found = self
                .inner
                .vis
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&qpn)
                .and_then(Weak::upgrade);
            if let Some(shared) = found {
                shared.fail(ErrorCause::AsyncEvent(event));
                vi = Some(shared.id);
            }
        }
        Ok(Some(NicEvent { event, vi }))
    }
}

/// A protection tag (`VIP_PROTECTION_HANDLE`): one protection domain per client. Memory
/// registered under a tag can only be named by descriptors of VIs of the same tag.
#[derive(Clone)]
pub struct Ptag {
    pub(crate) id: u32,
    pub(crate) pd: ProtectionDomain,
}

impl std::fmt::Debug for Ptag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ptag({} on {})", self.id, self.pd.context().name())
    }
}

/// Memory attributes of a registration (`VIP_MEM_ATTRIBUTES`). Default: local only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemAttributes {
    /// A connected peer may RDMA WRITE into it (through an exposed window).
    pub enable_rdma_write: bool,
    /// A connected peer may RDMA READ from it (through an exposed window).
    pub enable_rdma_read: bool,
}

impl Ptag {
    /// The tag's id (unique in the process).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `VipRegisterMem`: registers `mem` under this tag. The device may always write it
    /// locally (receives, read responses); remote access only as `attrs` enable it.
    pub fn register<M: RegionMemory>(&self, mem: M, attrs: MemAttributes) -> Result<ViMemory<M>> {
        let mut access = AccessFlags::LOCAL_WRITE;
        if attrs.enable_rdma_write {
            access = access | AccessFlags::REMOTE_WRITE;
        }
        if attrs.enable_rdma_read {
            access = access | AccessFlags::REMOTE_READ;
        }
        Ok(ViMemory {
            mr: MemoryRegion::register(&self.pd, mem, access)?,
            ptag: self.id,
            attrs,
        })
    }

    /// Registers `len` zeroed bytes.
    pub fn register_zeroed(&self, len: usize, attrs: MemAttributes) -> Result<ViMemory> {
        self.register(vec![0u8; len], attrs)
    }
}

/// Memory registered under a protection tag (`VipRegisterMem`; dropping it is
/// `VipDeregisterMem`).
pub struct ViMemory<M: RegionMemory = Vec<u8>> {
    mr: MemoryRegion<M>,
    ptag: u32,
    attrs: MemAttributes,
}

impl<M: RegionMemory> std::fmt::Debug for ViMemory<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ViMemory(tag {}, {:?})", self.ptag, self.mr)
    }
}

/// One scatter/gather segment of a descriptor: a range of registered memory and its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub(crate) sge: Sge,
    pub(crate) ptag: u32,
}

impl Segment {
    /// The tag of the memory it names.
    pub fn ptag(&self) -> u32 {
        self.ptag
    }
    /// Length in bytes.
    pub fn len(&self) -> u32 {
        self.sge.len()
    }
    /// True if zero-length.
    pub fn is_empty(&self) -> bool {
        self.sge.is_empty()
    }
}

impl<M: RegionMemory> ViMemory<M> {
    /// The protection tag it was registered under.
    pub fn ptag(&self) -> u32 {
        self.ptag
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.mr.len()
    }
    /// Never true.
    pub fn is_empty(&self) -> bool {
        self.mr.is_empty()
    }
    /// Remote key (meaningful to a peer only through [`expose`](Self::expose)).
    pub fn rkey(&self) -> u32 {
        self.mr.rkey()
    }
    /// Start address.
    pub fn addr(&self) -> u64 {
        self.mr.addr()
    }
    /// Segment for `offset..offset+len` (bounds-checked).
    pub fn segment(&self, offset: usize, len: usize) -> Result<Segment> {
        Ok(Segment {
            sge: self.mr.slice(offset, len)?,
            ptag: self.ptag,
        })
    }
    /// Segment of the whole region.
    pub fn whole(&self) -> Result<Segment> {
        self.segment(0, self.len())
    }
    /// Exposes `offset..offset+len` to the peer for the remote access this memory was
    /// registered with; refused ([`Error::NotExposed`]) for local-only memory.
    pub fn expose(&self, offset: usize, len: usize) -> Result<RemoteWindow> {
        if !self.attrs.enable_rdma_write && !self.attrs.enable_rdma_read {
            return Err(Error::NotExposed("write or read"));
        }
        Ok(self.mr.remote_window(offset, len)?)
    }
    /// The memory attributes.
    pub fn attributes(&self) -> MemAttributes {
        self.attrs
    }
}

impl<M: ExclusiveMemory> ViMemory<M> {
    /// The bytes (read after the completion of the descriptor that filled them).
    pub fn as_slice(&self) -> &[u8] {
        self.mr.as_slice()
    }
    /// The bytes, writable (fill before posting).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.mr.as_mut_slice()
    }
}
