//! VI Architecture semantics over ccm-verbs, with slam connect.
//!
//! The clients of the cluster connection manager speak the Virtual Interface Architecture
//! (VIA 1.0): a VI is a pair of work queues holding descriptors, bound to completion queues,
//! connected to exactly one remote VI, using memory registered under a protection tag. This
//! crate gives them those semantics over RDMA verbs (RC queue pairs), plus the patent's
//! *slam connect*: connecting to a remote VI whose address was exchanged beforehand, with no
//! connect request/response on the wire. It contains no `unsafe`.
//!
//! # VIPL operations
//!
//! | VIPL (VIA 1.0) | ccm-vi | verbs used |
//! | --- | --- | --- |
//! | `VipOpenNic` | [`Nic::open`] / [`Nic::open_netdev`] (device, port, GID by address, interconnect id) | `ibv_get_device_list`, `ibv_open_device`, `ibv_query_device`, `ibv_query_port`, `ibv_query_gid_table` |
//! | `VipCloseNic` | drop the [`Nic`] (and everything made from it) | `ibv_close_device` |
//! | `VipQueryNic` | [`Nic::query`] | `ibv_query_port` |
//! | `VipCreatePtag` / `VipDestroyPtag` | [`Nic::create_ptag`] / drop [`Ptag`] | `ibv_alloc_pd` / `ibv_dealloc_pd` |
//! | `VipRegisterMem` / `VipDeregisterMem` | [`Ptag::register`] / drop [`ViMemory`] | `ibv_reg_mr` / `ibv_dereg_mr` |
//! | (memory handle + address for a peer) | [`ViMemory::segment`], [`ViMemory::expose`] | lkey / rkey of the MR |
//! | `VipCreateCQ` / `VipDestroyCQ` | [`Nic::create_cq`] / drop [`ViCq`] | `ibv_create_comp_channel`, `ibv_create_cq` / `ibv_destroy_cq` |
//! | `VipCreateVi` / `VipDestroyVi` | [`Nic::create_vi`] / drop [`Vi`] | `ibv_create_qp` (RC) / `ibv_destroy_qp` |
//! | `VipQueryVi` | [`Vi::attributes`], [`Vi::state`], [`Vi::refresh_state`] | `ibv_query_qp` |
//! | `VipConnectRequest` + `VipConnectWait` + `VipConnectAccept` | [`Vi::address`] (exchanged out of band, [`address::encode_batch`]) then [`Vi::slam_connect`] on both sides | `ibv_modify_qp` RESET→INIT, `ibv_post_recv` (receives posted while Idle), INIT→RTR, RTR→RTS |
//! | `VipConnectReject` | not needed: there is no request to reject | — |
//! | `VipDisconnect` | [`Vi::disconnect`] (= [`Vi::reset`]) | `ibv_modify_qp` →ERR (flush), `ibv_poll_cq`, →RESET |
//! | (reuse after an error) | [`Vi::reset`], [`Vi::reset_recreate`] | →ERR, `ibv_poll_cq`, →RESET or `ibv_destroy_qp` + `ibv_create_qp` |
//! | `VipPostSend` | [`Vi::post_send`] with [`SendDesc`] (send / RDMA write / RDMA read, immediate data, segments) | `ibv_post_send` (`SEND_WITH_IMM`, `RDMA_WRITE[_WITH_IMM]`, `RDMA_READ`) |
//! | `VipPostRecv` | [`Vi::post_recv`] with [`RecvDesc`] | `ibv_post_recv` (or kept until slam connect while Idle) |
//! | `VipSendDone` / `VipSendWait` | [`Vi::send_done`] / [`Vi::send_wait`] (private CQ) | `ibv_poll_cq`; wait: `ibv_req_notify_cq`, `poll(2)` on the channel fd, `ibv_get_cq_event`, `ibv_ack_cq_events` |
//! | `VipRecvDone` / `VipRecvWait` | [`Vi::recv_done`] / [`Vi::recv_wait`] (private CQ) | same |
//! | `VipCQDone` / `VipCQWait` (then `VipSendDone`/`VipRecvDone` on the named VI) | [`ViCq::done`] / [`ViCq::wait`]: one call returns the VI, the queue and the completed descriptor | same |
//! | `VipErrorCallback` | the error status of the flushed descriptors, [`Vi::state`], [`Vi::error_cause`], [`Nic::next_event`] | `ibv_poll_cq` statuses, `ibv_get_async_event` / `ibv_ack_async_event` |
//! | `VipNSGetHostByName` etc. (name service) | out of scope: the manager exchanges [`ViAddress`]es | — |
//!
//! # Protection
//! Each client gets its own [`Ptag`] (a protection domain). Its registrations carry the tag;
//! a descriptor naming a segment of another tag is refused locally
//! ([`Error::ProtectionTag`]) before the device sees it, and the device would refuse it too
//! (lkey of another PD). Memory is registered local-only unless [`MemAttributes`] enable remote
//! write/read, and only such memory can be [`exposed`](ViMemory::expose) to a peer; the VI
//! must also enable RDMA write/read ([`ViAttributes`]).
//!
//! # Flow control
//! See [`credit`]: receive credits returned by an inline RDMA WRITE into the sender VI's
//! credit mailbox (no receive consumed, the owner's 32-bit immediate data untouched), so a
//! sender never sends into a missing receive descriptor ([`Error::NoCredits`] locally instead).
//! Transport timers in [`defaults`], derived from a failure-detection budget; see
//! `docs/decisions/0002-vi-defaults.md`.
//!
//! # Reaping
//! Credit updates are signalled writes on the send queue: an owner that never reaps its send
//! completions eventually stops returning credits. The VI's receive calls ([`Vi::post_recv`],
//! [`Vi::recv_done`], [`Vi::recv_wait`]) reap the send CQ when an update waits for a slot;
//! owners of shared CQs poll both.
//!
//! # No allocation on the data path
//! Posting copies segments into stack arrays and descriptor bookkeeping into slots allocated
//! at VI creation; completions go into a ready list whose capacity is reserved when a VI binds
//! to the CQ.

pub mod address;
pub mod cq;
pub mod credit;
pub mod defaults;
pub mod error;
pub mod nic;
pub mod state;
pub mod vi;

pub use address::{decode_batch, encode_batch, ViAddress};
pub use cq::ViCq;
pub use defaults::Timeouts;
pub use error::{Error, Result};
pub use nic::{MemAttributes, Nic, NicAttributes, NicEvent, Ptag, Segment, ViMemory};
pub use state::{ErrorCause, ViState};
pub use vi::{
    CompletedOp, RecvDesc, Reliability, SendDesc, SendKind, Vi, ViAttributes, ViCompletion, ViId,
    WorkQueue, MAX_SEGMENTS,
};

pub use ccm_verbs::{RemoteAddr, RemoteWindow, WcStatus};
