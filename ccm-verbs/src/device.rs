//! Devices, device contexts, port and GID queries, protection domains.

use crate::error::{verb_errno, verb_rc, Error, Result};
use crate::types::{
    select_roce_v2_by_ip, select_roce_v2_by_netdev, Gid, GidEntry, GidType, LinkLayer, Mtu,
    PortAttr, PortState,
};
use ibverbs_sys as sys;
use std::ffi::CStr;
use std::net::IpAddr;
use std::sync::Arc;

/// A device as `ibv_get_device_list` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device name, e.g. `rxe0`.
    pub name: String,
    /// Node GUID (host order).
    pub guid: u64,
}

/// The device list (`ibv_get_device_list`), freed on drop. Listing rescans sysfs for every device (and
/// the first listing of a process loads the providers): open several devices from one list with
/// [`DeviceList::open`] rather than one [`Context::open`] each.
pub struct DeviceList {
    list: *mut *mut sys::ibv_device,
    len: usize,
}

impl DeviceList {
    /// Lists the devices of this machine.
    pub fn get() -> Result<DeviceList> {
        let mut n: i32 = 0;
        // SAFETY: `n` is a valid out pointer; the list is freed in Drop.
        let list = unsafe { sys::ibv_get_device_list(&mut n) };
        if list.is_null() {
            return Err(verb_errno("ibv_get_device_list"));
        }
        Ok(DeviceList {
            list,
            len: n.max(0) as usize,
        })
    }

    fn devices(&self) -> impl Iterator<Item = *mut sys::ibv_device> + '_ {
        // SAFETY: the list holds `len` valid device pointers while `self` lives.
        (0..self.len).map(move |i| unsafe { *self.list.add(i) })
    }
}

// SAFETY: the list array is owned by this value until `ibv_free_device_list` in Drop, and its
// `ibv_device` entries are read-only, reference-counted libibverbs objects usable from any thread
// (libibverbs serialises its own list state). Nothing here is tied to the listing thread.
unsafe impl Send for DeviceList {}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: `list` came from ibv_get_device_list and is freed once.
        unsafe { sys::ibv_free_device_list(self.list) }
    }
}

fn device_name(dev: *mut sys::ibv_device) -> String {
    // SAFETY: `dev` is a live entry of a device list; the name is a NUL-terminated string it owns.
    let p = unsafe { sys::ibv_get_device_name(dev) };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null, NUL-terminated, valid while the list lives (we copy it out now).
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Lists the RDMA devices of this machine.
pub fn devices() -> Result<Vec<DeviceInfo>> {
    let list = DeviceList::get()?;
    Ok(list
        .devices()
        .map(|d| DeviceInfo {
            name: device_name(d),
            // SAFETY: `d` is a live device of the list.
            guid: u64::from_be(unsafe { sys::ibv_get_device_guid(d) }),
        })
        .collect())
}

pub(crate) struct ContextInner {
    pub(crate) ctx: *mut sys::ibv_context,
    name: String,
    /// sysfs path of the device's uverbs char device (`/sys/class/infiniband_verbs/uverbsN`).
    dev_path: String,
}

// SAFETY: libibverbs contexts are thread safe (every verb may be called from any thread); the
// pointer is owned by this struct and closed once in Drop.
unsafe impl Send for ContextInner {}
// SAFETY: as above; no method mutates Rust-side state.
unsafe impl Sync for ContextInner {}

impl Drop for ContextInner {
    fn drop(&mut self) {
        // SAFETY: every child object holds an Arc of this context, so none is left when it drops.
        unsafe {
            sys::ibv_close_device(self.ctx);
        }
    }
}

/// Device attributes (`ibv_query_device`), the limits that matter to ccm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceAttr {
    /// Largest work queue.
    pub max_qp_wr: u32,
    /// Largest scatter/gather list.
    pub max_sge: u32,
    /// Largest CQ.
    pub max_cqe: u32,
    /// Most QPs.
    pub max_qp: u32,
    /// Largest memory region.
    pub max_mr_size: u64,
    /// Most outstanding RDMA READs a QP can be the target of.
    pub max_qp_rd_atom: u32,
    /// Most outstanding RDMA READs a QP can initiate.
    pub max_qp_init_rd_atom: u32,
    /// Number of ports.
    pub phys_port_cnt: u8,
}

/// An open device context. Cheap to clone (an `Arc`); every object made from it keeps it open.
#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Arc<ContextInner>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Context({})", self.inner.name)
    }
}

impl Context {
    /// Opens the device named `name`. Succeeds whatever the state of its ports.
    pub fn open(name: &str) -> Result<Context> {
        DeviceList::get()?.open(name)
    }
}

impl DeviceList {
    /// The listed devices' names, in list order.
    pub fn names(&self) -> Vec<String> {
        self.devices().map(device_name).collect()
    }

    /// Opens the listed device named `name`. Succeeds whatever the state of its ports.
    pub fn open(&self, name: &str) -> Result<Context> {
        let dev = self
            .devices()
            .find(|&d| device_name(d) == name)
            .ok_or_else(|| Error::NoDevice(name.to_string()))?;
        // SAFETY: `dev` is a live entry of this list; only the `dev_path` char array is read (a
        // NUL-terminated string filled by libibverbs), through a raw place, no reference to the
        // whole struct.
        let dev_path = unsafe {
            let p = std::ptr::addr_of!((*dev).dev_path) as *const std::ffi::c_char;
            CStr::from_ptr(p).to_string_lossy().into_owned()
        };
        // SAFETY: `dev` is a live entry of this list, which outlives this call.
        let ctx = unsafe { sys::ibv_open_device(dev) };
        if ctx.is_null() {
            return Err(verb_errno("ibv_open_device"));
        }
        Ok(Context {
            inner: Arc::new(ContextInner {
                ctx,
                name: name.to_string(),
                dev_path,
            }),
        })
    }
}

impl Context {
    /// Device name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub(crate) fn raw(&self) -> *mut sys::ibv_context {
        self.inner.ctx
    }

    /// True once the device is being removed (its uverbs char device is gone from sysfs).
    ///
    /// Needed because a provider without kernel "disassociate" support (rxe) reports nothing
    /// when its device is deleted: no DEVICE_FATAL, verbs keep working, and the deletion
    /// blocks in the kernel until every process closes its context. Poll this (cheap: one
    /// `stat`) from a monitor and drop every object of the context when it turns true.
    pub fn is_removed(&self) -> bool {
        !self.inner.dev_path.is_empty() && !std::path::Path::new(&self.inner.dev_path).exists()
    }

    /// `Err(Error::DeviceRemoved)` once [`is_removed`](Self::is_removed) is true.
    pub fn check_alive(&self) -> Result<()> {
        if self.is_removed() {
            Err(Error::DeviceRemoved(self.inner.name.clone()))
        } else {
            Ok(())
        }
    }

    /// True if `self` and `other` are the same open context.
    pub fn same(&self, other: &Context) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Device limits.
    pub fn query_device(&self) -> Result<DeviceAttr> {
        let mut a = sys::ibv_device_attr::default();
        // SAFETY: valid context and out struct.
        let rc = unsafe { sys::ibv_query_device(self.raw(), &mut a) };
        verb_rc("ibv_query_device", rc)?;
        let u = |v: i32| v.max(0) as u32;
        Ok(DeviceAttr {
            max_qp_wr: u(a.max_qp_wr),
            max_sge: u(a.max_sge),
            max_cqe: u(a.max_cqe),
            max_qp: u(a.max_qp),
            max_mr_size: a.max_mr_size,
            max_qp_rd_atom: u(a.max_qp_rd_atom),
            max_qp_init_rd_atom: u(a.max_qp_init_rd_atom),
            phys_port_cnt: a.phys_port_cnt,
        })
    }

    /// Queries port `port` (1-based) now; nothing is cached.
    pub fn query_port(&self, port: u8) -> Result<PortAttr> {
        let mut a = sys::ibv_port_attr::default();
        // SAFETY: `a` is a zeroed, full-size ibv_port_attr. The exported symbol takes the smaller
        // compat struct and hands the pointer to the provider's query_port, which fills at most a
        // full ibv_port_attr; this is exactly what verbs.h's inline ibv_query_port does. Every
        // field is a plain integer, so any value the provider writes is valid.
        let rc = unsafe {
            sys::ibv_query_port(
                self.raw(),
                port,
                &mut a as *mut sys::ibv_port_attr as *mut sys::_compat_ibv_port_attr,
            )
        };
        verb_rc("ibv_query_port", rc)?;
        Ok(PortAttr {
            state: PortState::from_raw(a.state),
            max_mtu: Mtu::from_raw(a.max_mtu),
            active_mtu: Mtu::from_raw(a.active_mtu),
            link_layer: LinkLayer::from_raw(a.link_layer),
            active_speed: a.active_speed,
            active_width: a.active_width,
            phys_state: a.phys_state,
            gid_tbl_len: a.gid_tbl_len.max(0) as u32,
            max_msg_sz: a.max_msg_sz,
            lid: a.lid,
        })
    }

    /// Active MTU of `port`, or [`Error::PortDown`] if the port is not active.
    pub fn active_mtu(&self, port: u8) -> Result<Mtu> {
        let a = self.query_port(port)?;
        match (a.state, a.active_mtu) {
            (PortState::Active, Some(m)) => Ok(m),
            (s, _) => Err(Error::PortDown {
                port,
                state: match s {
                    PortState::Nop => 0,
                    PortState::Down => 1,
                    PortState::Init => 2,
                    PortState::Armed => 3,
                    PortState::Active => 4,
                    PortState::ActiveDefer => 5,
                    PortState::Unknown(v) => v,
                },
            }),
        }
    }

    /// The valid (non-zero) entries of `port`'s GID table, with their types and netdevs.
    pub fn gid_table(&self, port: u8) -> Result<Vec<GidEntry>> {
        let len = self.query_port(port)?.gid_tbl_len as usize;
        let mut raw = vec![sys::ibv_gid_entry::default(); len.max(1)];
        // SAFETY: `raw` has room for `raw.len()` entries of the size we pass.
        let n = unsafe {
            sys::_ibv_query_gid_table(
                self.raw(),
                raw.as_mut_ptr(),
                raw.len(),
                0,
                std::mem::size_of::<sys::ibv_gid_entry>(),
            )
        };
        if n < 0 {
            let errno = (-n) as i32;
            if errno == libc::EOPNOTSUPP || errno == libc::ENOSYS {
                return self.gid_table_sysfs(port, len);
            }
            return Err(Error::Verb {
                verb: "ibv_query_gid_table",
                errno,
            });
        }
        let mut out = Vec::with_capacity(n as usize);
        for e in raw.iter().take(n as usize) {
            if e.port_num != port as u32 {
                continue;
            }
            // SAFETY: `raw` is the byte view of the GID union; every bit pattern is valid.
            let gid = Gid(unsafe { e.gid.raw });
            if gid.is_zero() {
                continue;
            }
            out.push(GidEntry {
                index: e.gid_index,
                gid,
                gid_type: GidType::from_raw(e.gid_type),
                ndev_ifindex: e.ndev_ifindex,
                netdev: ifindex_name(e.ndev_ifindex),
            });
        }
        Ok(out)
    }

    /// Fallback for providers without the GID table verb: ibv_query_gid plus sysfs attributes.
    fn gid_table_sysfs(&self, port: u8, len: usize) -> Result<Vec<GidEntry>> {
        let base = format!(
            "/sys/class/infiniband/{}/ports/{port}/gid_attrs",
            self.name()
        );
        let mut out = Vec::new();
        for i in 0..len {
            let mut g = sys::ibv_gid::default();
            // SAFETY: valid context and out union.
            let rc = unsafe { sys::ibv_query_gid(self.raw(), port, i as i32, &mut g) };
            if rc != 0 {
                continue;
            }
            // SAFETY: byte view of the union.
            let gid = Gid(unsafe { g.raw });
            if gid.is_zero() {
                continue;
            }
            let ty = std::fs::read_to_string(format!("{base}/types/{i}"))
                .map(|s| GidType::from_sysfs(&s))
                .unwrap_or(GidType::Other(u32::MAX));
            let netdev = std::fs::read_to_string(format!("{base}/ndevs/{i}"))
                .ok()
                .map(|s| s.trim().to_string());
            out.push(GidEntry {
                index: i as u32,
                gid,
                gid_type: ty,
                ndev_ifindex: 0,
                netdev,
            });
        }
        Ok(out)
    }

    /// The RoCE v2 GID of `port` whose address is `ip`.
    pub fn gid_by_ip(&self, port: u8, ip: IpAddr) -> Result<GidEntry> {
        let t = self.gid_table(port)?;
        select_roce_v2_by_ip(&t, ip).cloned()
    }

    /// A RoCE v2 GID of `port` on netdev `netdev` (IPv4-mapped preferred).
    pub fn gid_by_netdev(&self, port: u8, netdev: &str) -> Result<GidEntry> {
        let t = self.gid_table(port)?;
        select_roce_v2_by_netdev(&t, netdev).cloned()
    }

    /// The raw async event fd (used by [`crate::AsyncEvents`]).
    pub(crate) fn async_fd(&self) -> i32 {
        // SAFETY: the context is open; async_fd is a plain field set at open time.
        unsafe { (*self.raw()).async_fd }
    }
}

fn ifindex_name(ifindex: u32) -> Option<String> {
    if ifindex == 0 {
        return None;
    }
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

pub(crate) struct PdInner {
    pub(crate) pd: *mut sys::ibv_pd,
    pub(crate) ctx: Context,
}

// SAFETY: PDs are thread safe in libibverbs; owned pointer, freed once in Drop.
unsafe impl Send for PdInner {}
// SAFETY: as above.
unsafe impl Sync for PdInner {}

impl Drop for PdInner {
    fn drop(&mut self) {
        // SAFETY: MRs and QPs hold an Arc of this PD, so none is left; the context outlives it
        // (field `ctx` drops after this body runs).
        unsafe {
            sys::ibv_dealloc_pd(self.pd);
        }
    }
}

/// A protection domain. Cheap to clone; memory regions and QPs keep it alive.
#[derive(Clone)]
pub struct ProtectionDomain {
    pub(crate) inner: Arc<PdInner>,
}

impl std::fmt::Debug for ProtectionDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProtectionDomain({})", self.inner.ctx.name())
    }
}

impl ProtectionDomain {
    /// Allocates a protection domain on `ctx`.
    pub fn new(ctx: &Context) -> Result<ProtectionDomain> {
        // SAFETY: valid open context.
        let pd = unsafe { sys::ibv_alloc_pd(ctx.raw()) };
        if pd.is_null() {
            return Err(verb_errno("ibv_alloc_pd"));
        }
        Ok(ProtectionDomain {
            inner: Arc::new(PdInner {
                pd,
                ctx: ctx.clone(),
            }),
        })
    }

    /// The device context.
    pub fn context(&self) -> &Context {
        &self.inner.ctx
    }

    pub(crate) fn raw(&self) -> *mut sys::ibv_pd {
        self.inner.pd
    }
}

/// A random 24-bit packet sequence number (fresh for every connection).
pub fn random_psn() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: `b` is a valid 4-byte buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    let v = if n == 4 {
        u32::from_le_bytes(b)
    } else {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0x5a5a5a);
        t.wrapping_mul(0x9e37_79b9)
    };
    v & crate::types::MAX_24BIT
}
