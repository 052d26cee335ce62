//! The error type of ccm-vi.

use crate::state::ViState;

/// Errors of ccm-vi. Device errors keep the ccm-verbs error (verb and errno).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A verb failed.
    #[error(transparent)]
    Verbs(#[from] ccm_verbs::Error),
    /// A descriptor names memory registered under another protection tag than the VI's.
    #[error("protection tag mismatch: segment of tag {segment} on a VI of tag {vi}")]
    ProtectionTag {
        /// The VI's tag.
        vi: u32,
        /// The segment's tag.
        segment: u32,
    },
    /// Memory or VI made by another NIC (device) than the one used.
    #[error("object of another NIC (device {0})")]
    NicMismatch(String),
    /// The region was not registered with the remote access asked for.
    #[error("memory not exposed for remote {0}")]
    NotExposed(&'static str),
    /// RDMA write/read is not enabled on this VI (or on the connected peer).
    #[error("RDMA {0} not enabled on this connection")]
    RdmaDisabled(&'static str),
    /// The operation needs a connected VI.
    #[error("VI is not connected (state {0:?})")]
    NotConnected(ViState),
    /// The VI is connected to another remote VI.
    #[error(
        "VI already connected to a different remote VI (qpn {connected:#x}, asked {asked:#x})"
    )]
    AlreadyConnected {
        /// QPN of the current peer.
        connected: u32,
        /// QPN asked for.
        asked: u32,
    },
    /// The VI is in the Error state: reset it first.
    #[error("VI is in the Error state; reset it")]
    InError,
    /// The work queue is full (outstanding descriptors = queue depth).
    #[error("{0} queue full")]
    QueueFull(&'static str),
    /// The peer granted no receive credit for another message: poll the receive queue (credit
    /// updates arrive there) and retry.
    #[error("no send credit (peer has no free receive descriptor)")]
    NoCredits,
    /// More segments than the VI's max_segments.
    #[error("{len} segments exceed the VI's limit {max}")]
    TooManySegments {
        /// Segments given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More bytes than the VI's max transfer size.
    #[error("transfer of {len} bytes exceeds max transfer size {max}")]
    TransferTooLarge {
        /// Bytes given.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// A descriptor that makes no sense (e.g. RDMA read with immediate data).
    #[error("invalid descriptor: {0}")]
    InvalidDescriptor(&'static str),
    /// Not supported by this implementation.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The remote address belongs to another interconnect than this VI's NIC.
    #[error("interconnect mismatch: local {local}, remote {remote}")]
    InterconnectMismatch {
        /// This NIC's interconnect id.
        local: u8,
        /// The remote address's.
        remote: u8,
    },
    /// Local and remote VI attributes are incompatible.
    #[error("attribute mismatch: {0}")]
    AttributeMismatch(&'static str),
    /// Bytes that are not a valid VI address encoding.
    #[error("invalid VI address encoding: {0}")]
    Decode(&'static str),
    /// Bad attribute or argument value.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// Per-VI done/wait on a queue bound to a shared completion queue: use the CQ.
    #[error("the {0} queue is bound to a shared completion queue: use ViCq::done/wait")]
    QueueOnSharedCq(&'static str),
    /// The completion queue is too small for the VIs bound to it.
    #[error("completion queue of {capacity} entries cannot take {needed} more")]
    CqTooSmall {
        /// Capacity.
        capacity: u32,
        /// Entries the new VI needs.
        needed: u32,
    },
    /// A bounded wait ran out.
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
