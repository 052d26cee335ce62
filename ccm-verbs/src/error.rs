//! The error type of every fallible call of this crate.

use crate::types::Mtu;

/// Errors of ccm-verbs. A failed verb names itself and the errno it returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A libibverbs call failed.
    #[error("{verb} failed: errno {errno} ({})", std::io::Error::from_raw_os_error(*errno))]
    Verb {
        /// The verb, e.g. `ibv_modify_qp`.
        verb: &'static str,
        /// The errno it reported.
        errno: i32,
    },
    /// A post verb rejected work request `index` of the list given to it; requests before it were posted.
    #[error("{verb} rejected work request {index}: errno {errno} ({})", std::io::Error::from_raw_os_error(*errno))]
    Post {
        /// `ibv_post_send` or `ibv_post_recv`.
        verb: &'static str,
        /// The errno it reported.
        errno: i32,
        /// Index of the first request not posted.
        index: usize,
    },
    /// No RDMA device of that name.
    #[error("no RDMA device named {0:?}")]
    NoDevice(String),
    /// The device is being removed from the system (see [`crate::Context::is_removed`]).
    #[error("RDMA device {0:?} was removed")]
    DeviceRemoved(String),
    /// The port is not ACTIVE.
    #[error("port {port} is not active (state {state})")]
    PortDown {
        /// Port number.
        port: u8,
        /// Raw port state.
        state: u32,
    },
    /// The requested path MTU is more than one side can take.
    #[error(
        "path MTU mismatch: requested {requested:?}, local active {local:?}, remote {remote:?}"
    )]
    MtuMismatch {
        /// Local port's active MTU.
        local: Mtu,
        /// Remote endpoint's MTU.
        remote: Mtu,
        /// The path MTU that was asked for.
        requested: Mtu,
    },
    /// An offset/length is outside a memory region or remote window.
    #[error("range {offset}+{len} is outside a region of {size} bytes")]
    OutOfBounds {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// Size of the region.
        size: u64,
    },
    /// No GID table entry matched the selection.
    #[error("no GID matches {0}")]
    GidNotFound(String),
    /// Inline data longer than the QP accepts.
    #[error("inline data of {len} bytes exceeds the QP's max_inline_data {max}")]
    InlineTooLong {
        /// Bytes asked for.
        len: usize,
        /// The QP's limit.
        max: u32,
    },
    /// More scatter/gather entries than the QP accepts.
    #[error("{len} scatter/gather entries exceed the QP's limit {max}")]
    TooManySges {
        /// Entries asked for.
        len: usize,
        /// The QP's limit.
        max: u32,
    },
    /// Bytes that are not a valid encoding (endpoint, remote window).
    #[error("invalid encoding: {0}")]
    Decode(&'static str),
    /// An argument outside its valid range.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A blocking wait ran out of time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// An object belongs to another device context than the one it is used with.
    #[error("objects of different device contexts mixed")]
    ContextMismatch,
    /// A system call (not a verb) failed.
    #[error("{call} failed: errno {errno}")]
    Sys {
        /// The call, e.g. `fcntl`.
        call: &'static str,
        /// errno.
        errno: i32,
    },
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// The calling thread's errno (after a verb returned NULL / -1).
pub(crate) fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Error for a verb that returned NULL or -1 and set errno. Never reports errno 0 as success.
pub(crate) fn verb_errno(verb: &'static str) -> Error {
    let errno = last_errno();
    Error::Verb {
        verb,
        errno: if errno == 0 { libc::EIO } else { errno },
    }
}

/// Error for a verb that returns the errno itself (0 = success, positive errno; some providers
/// return -errno or -1 with errno set).
pub(crate) fn verb_rc(verb: &'static str, rc: i32) -> Result<()> {
    match rc {
        0 => Ok(()),
        -1 => Err(verb_errno(verb)),
        rc => Err(Error::Verb {
            verb,
            errno: rc.abs(),
        }),
    }
}

impl Error {
    /// The errno, if this error carries one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Verb { errno, .. } | Error::Post { errno, .. } | Error::Sys { errno, .. } => {
                Some(*errno)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verb_rc_maps_codes() {
        assert_eq!(verb_rc("ibv_x", 0), Ok(()));
        assert_eq!(
            verb_rc("ibv_x", libc::EINVAL),
            Err(Error::Verb {
                verb: "ibv_x",
                errno: libc::EINVAL
            })
        );
        assert_eq!(
            verb_rc("ibv_x", -libc::ENOMEM),
            Err(Error::Verb {
                verb: "ibv_x",
                errno: libc::ENOMEM
            })
        );
    }

    #[test]
    fn display_names_verb_and_errno() {
        let e = Error::Verb {
            verb: "ibv_modify_qp",
            errno: libc::EINVAL,
        };
        let s = e.to_string();
        assert!(s.contains("ibv_modify_qp") && s.contains("errno 22"), "{s}");
        assert_eq!(e.errno(), Some(libc::EINVAL));
    }
}
