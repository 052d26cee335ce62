//! RDMA device removals, as the kernel announces them (its uevents on a `NETLINK_KOBJECT_UEVENT` socket).
//!
//! A provider without kernel "disassociate" support (rxe) raises no IBV_EVENT_DEVICE_FATAL when its
//! device is deleted: verbs keep working and the deletion waits in the kernel until every process has
//! closed its context. What the kernel does first is remove the device's uverbs character device, and
//! that removal is a uevent (`remove@/devices/.../infiniband_verbs/uverbsN`). The driver sleeps on this
//! socket as on its other fds, so a deleted device is seen at once instead of at the next look at the
//! ports; [`Context::is_removed`](ccm_verbs::Context::is_removed) then says which one it was.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

/// The kernel's own uevent multicast group (udev's re-broadcast is group 2).
const KERNEL_GROUP: u32 = 1;

/// A nonblocking socket on the kernel's uevents.
#[derive(Debug)]
pub struct DeviceRemovals {
    socket: OwnedFd,
}

impl DeviceRemovals {
    /// Subscribe to the kernel's uevents.
    pub fn open() -> nix::Result<DeviceRemovals> {
        let socket = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        )?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            &NetlinkAddr::new(0, KERNEL_GROUP),
        )?;
        Ok(DeviceRemovals { socket })
    }

    /// Read every pending uevent (into `buf`, no allocation); whether one of them removed an RDMA
    /// device.
    pub fn take(&self, buf: &mut [u8]) -> bool {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.socket);
        let mut removed = false;
        while let Ok(n) = recv(fd, buf, MsgFlags::MSG_DONTWAIT) {
            if n == 0 {
                break;
            }
            removed |= is_rdma_removal(&buf[..n.min(buf.len())]);
        }
        removed
    }
}

impl AsFd for DeviceRemovals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// Whether a kernel uevent (`ACTION@DEVPATH\0KEY=VALUE\0...`) is the removal of an RDMA device: its
/// uverbs character device or its `infiniband` class device.
pub fn is_rdma_removal(uevent: &[u8]) -> bool {
    let header = uevent.split(|&b| b == 0).next().unwrap_or_default();
    let Some(path) = header.strip_prefix(b"remove@") else {
        return false;
    };
    let has = |needle: &[u8]| path.windows(needle.len()).any(|w| w == needle);
    has(b"/infiniband_verbs/") || has(b"/infiniband/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_removal_of_a_uverbs_or_infiniband_device_is_an_rdma_removal() {
        assert!(is_rdma_removal(
            b"remove@/devices/virtual/infiniband_verbs/uverbs0\0ACTION=remove\0SUBSYSTEM=infiniband_verbs\0"
        ));
        assert!(is_rdma_removal(
            b"remove@/devices/virtual/net/vethA0/infiniband/rxe0\0ACTION=remove\0"
        ));
    }

    #[test]
    fn other_uevents_are_not() {
        // An RDMA device added, a network device removed, a malformed message, an empty one.
        assert!(!is_rdma_removal(
            b"add@/devices/virtual/infiniband_verbs/uverbs0\0ACTION=add\0"
        ));
        assert!(!is_rdma_removal(
            b"remove@/devices/virtual/net/vethA0\0ACTION=remove\0SUBSYSTEM=net\0"
        ));
        assert!(!is_rdma_removal(b"remove"));
        assert!(!is_rdma_removal(b""));
        // The path is in the header only: a key mentioning infiniband does not count.
        assert!(!is_rdma_removal(
            b"remove@/devices/virtual/net/x\0NOTE=/infiniband/\0"
        ));
    }
}
