//! Device tests of `SharedMemory` on the lab's rxe devices: one NVRAM mirror ring (a file in
//! /dev/shm) registered on both of node B's devices and written over both interconnects, and a
//! local ring as the source of RDMA WRITEs.

mod common;

use ccm_verbs::lab::LabTopology;
use ccm_verbs::*;
use common::*;
use std::sync::Arc;

fn remote_write() -> AccessFlags {
    AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE
}

/// Removes the /dev/shm file even when an assertion fails.
struct ShmFile(String);

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Posts one signalled RDMA WRITE of `src` to `dst` on `node` and checks its completion.
fn rdma_write(node: &Node, wr_id: u64, src: Sge, dst: RemoteAddr) {
    let sges = [src];
    node.qp
        .post_send_one(&SendWr::new(wr_id, SendOp::Write(dst), &sges))
        .expect("post RDMA WRITE");
    let c = one(&node.send_cq);
    assert_eq!(
        (c.status(), c.opcode(), c.wr_id()),
        (WcStatus::Success, WcOpcode::RdmaWrite, wr_id),
        "RDMA WRITE from {}",
        node.ctx.name()
    );
}

#[test]
fn one_mirror_on_two_devices_receives_writes_over_both_interconnects() {
    let Some(lab) = LabTopology::from_env_or_skip("shared_mirror_two_devices") else {
        return;
    };
    let (ic0, ic1) = (lab.ic(0), lab.ic(1));
    let a0 = Node::open(&ic0.a);
    let b0 = Node::open(&ic0.b);
    let a1 = Node::open(&ic1.a);
    let b1 = Node::open(&ic1.b);
    assert_ne!(b0.ctx.name(), b1.ctx.name());

    const LEN: usize = 64 * 1024;
    let shm = ShmFile(format!("/dev/shm/ccm-lab-mirror-{}", std::process::id()));
    let _ = std::fs::remove_file(&shm.0);
    let mirror = SharedMemory::map_file(&shm.0, LEN).expect("map mirror file");
    assert!(mirror.is_file_backed());

    // The same mapping registered on node B's two devices, each with its own keys.
    let on_b0 = MemoryRegion::register(&b0.pd, mirror.clone(), remote_write()).expect("reg b0");
    let on_b1 = MemoryRegion::register(&b1.pd, mirror.clone(), remote_write()).expect("reg b1");
    assert_eq!(Arc::strong_count(&mirror), 3);
    assert_eq!((on_b0.addr(), on_b1.addr()), (mirror.addr(), mirror.addr()));
    assert_eq!((on_b0.len(), on_b1.len()), (LEN, LEN));
    eprintln!(
        "mirror {:#x}+{LEN}: {} lkey {:#x} rkey {:#x}, {} lkey {:#x} rkey {:#x}",
        mirror.addr(),
        b0.ctx.name(),
        on_b0.lkey(),
        on_b0.rkey(),
        b1.ctx.name(),
        on_b1.lkey(),
        on_b1.rkey()
    );
    // Local entries into the shared memory work as for any region, and are bounds checked.
    let sge = on_b1.slice(LEN - 16, 16).unwrap();
    assert_eq!(
        (sge.addr(), sge.len(), sge.lkey()),
        (mirror.addr() + (LEN - 16) as u64, 16, on_b1.lkey())
    );
    assert!(matches!(
        on_b0.slice(LEN - 15, 16),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        on_b1.remote_window(LEN, 1),
        Err(Error::OutOfBounds { .. })
    ));

    connect(&a0, &b0, remote_write(), || {});
    connect(&a1, &b1, remote_write(), || {});
    // Windows travel as bytes, as they would out of band.
    let w0 = RemoteWindow::decode(&on_b0.remote_window(0, LEN).unwrap().encode()).unwrap();
    let w1 = RemoteWindow::decode(&on_b1.remote_window(0, LEN).unwrap().encode()).unwrap();
    assert_eq!((w0.rkey, w1.rkey), (on_b0.rkey(), on_b1.rkey()));

    // Interconnect 0 (rxe0 -> rxe1): 5000 bytes at 4196 (five 1024-byte packets).
    let p0 = pattern(5000, 11);
    let mut src0 = buffer(&a0.pd, 8192, AccessFlags::LOCAL_WRITE);
    src0.as_mut_slice()[..5000].copy_from_slice(&p0);
    rdma_write(
        &a0,
        1,
        src0.slice(0, 5000).unwrap(),
        w0.slice(4196, 5000).unwrap(),
    );
    // Interconnect 1 (rxe2 -> rxe3): 7000 bytes at 32775 (unaligned), and 8 bytes at the
    // very end of the ring.
    let p1 = pattern(7000, 77);
    let mut src1 = buffer(&a1.pd, 8192, AccessFlags::LOCAL_WRITE);
    src1.as_mut_slice()[..7000].copy_from_slice(&p1);
    src1.as_mut_slice()[7000..7008].copy_from_slice(&0xfeed_f00d_0bad_cafe_u64.to_le_bytes());
    rdma_write(
        &a1,
        2,
        src1.slice(0, 7000).unwrap(),
        w1.slice(32775, 7000).unwrap(),
    );
    rdma_write(
        &a1,
        3,
        src1.slice(7000, 8).unwrap(),
        w1.slice(LEN as u64 - 8, 8).unwrap(),
    );

    // The process reads both writes back byte for byte, and nothing else changed.
    let mut got0 = vec![0u8; 5000];
    mirror.read(4196, &mut got0).unwrap();
    assert_eq!(got0, p0, "bytes written over interconnect 0");
    let mut got1 = vec![0u8; 7000];
    mirror.read(32775, &mut got1).unwrap();
    assert_eq!(got1, p1, "bytes written over interconnect 1");
    assert_eq!(mirror.read_u64_le(LEN - 8).unwrap(), 0xfeed_f00d_0bad_cafe);
    let mut want = vec![0u8; LEN];
    want[4196..9196].copy_from_slice(&p0);
    want[32775..39775].copy_from_slice(&p1);
    want[LEN - 8..].copy_from_slice(&0xfeed_f00d_0bad_cafe_u64.to_le_bytes());
    let mut image = vec![0xffu8; LEN];
    mirror.read(0, &mut image).unwrap();
    assert!(
        image == want,
        "mirror image differs outside the written ranges"
    );

    // The DMA'd bytes are in the file: a second mapping of it (what a restarted process or
    // the takeover path would open) sees the same image.
    mirror.flush().unwrap();
    let again = SharedMemory::map_file(&shm.0, LEN).expect("map mirror again");
    assert_ne!(again.addr(), mirror.addr());
    let mut image2 = vec![0u8; LEN];
    again.read(0, &mut image2).unwrap();
    assert!(image2 == want, "second mapping of the mirror file differs");
    drop(again);

    // Regions hold the mapping; dropping them (deregistration) releases their references.
    drop(on_b0);
    assert_eq!(Arc::strong_count(&mirror), 2);
    let back = on_b1.into_inner().expect("deregister");
    assert!(Arc::ptr_eq(&back, &mirror));
    drop(back);
    assert_eq!(Arc::strong_count(&mirror), 1);
    eprintln!(
        "mirror on {} and {}: writes over both interconnects verified",
        ic0.b.device, ic1.b.device
    );
}

#[test]
fn local_ring_is_the_source_of_rdma_writes() {
    let Some(lab) = LabTopology::from_env_or_skip("shared_local_ring_source") else {
        return;
    };
    let (ic0, ic1) = (lab.ic(0), lab.ic(1));
    let a0 = Node::open(&ic0.a);
    let b0 = Node::open(&ic0.b);
    let a1 = Node::open(&ic1.a);
    let b1 = Node::open(&ic1.b);

    // The local NVRAM log ring: anonymous shared memory registered on node A's two devices.
    const LEN: usize = 32 * 1024;
    let ring = SharedMemory::anonymous(LEN).expect("anonymous ring");
    let on_a0 =
        MemoryRegion::register(&a0.pd, ring.clone(), AccessFlags::LOCAL_WRITE).expect("reg a0");
    let on_a1 =
        MemoryRegion::register(&a1.pd, ring.clone(), AccessFlags::LOCAL_WRITE).expect("reg a1");
    let t0 = buffer(&b0.pd, LEN, remote_write());
    let t1 = buffer(&b1.pd, LEN, remote_write());
    connect(&a0, &b0, remote_write(), || {});
    connect(&a1, &b1, remote_write(), || {});
    let w0 = t0.remote_window(0, LEN).unwrap();
    let w1 = t1.remote_window(0, LEN).unwrap();

    // Log entries written by the process, then sent from the ring over rxe0 (and rxe2).
    let e1 = pattern(3000, 3);
    ring.write(1000, &e1).unwrap();
    ring.write_u64_le(1000 + 3000, 1).unwrap(); // sequence number after the entry
    rdma_write(
        &a0,
        10,
        on_a0.slice(1000, 3008).unwrap(),
        w0.slice(1000, 3008).unwrap(),
    );
    assert_eq!(&t0.as_slice()[1000..4000], &e1[..]);
    assert_eq!(&t0.as_slice()[4000..4008], &1u64.to_le_bytes());
    assert!(t0.as_slice()[..1000].iter().all(|&b| b == 0));
    assert!(t0.as_slice()[4008..].iter().all(|&b| b == 0));

    // The same ring bytes over the other device, and a rewrite of the slot goes out new.
    rdma_write(
        &a1,
        11,
        on_a1.slice(1000, 3008).unwrap(),
        w1.slice(20000, 3008).unwrap(),
    );
    assert_eq!(&t1.as_slice()[20000..23000], &e1[..]);
    let e2 = pattern(3000, 200);
    ring.write(1000, &e2).unwrap();
    ring.write_u64_le(4000, 2).unwrap();
    rdma_write(
        &a0,
        12,
        on_a0.slice(1000, 3008).unwrap(),
        w0.slice(1000, 3008).unwrap(),
    );
    assert_eq!(&t0.as_slice()[1000..4000], &e2[..]);
    assert_eq!(&t0.as_slice()[4000..4008], &2u64.to_le_bytes());
    // The ring itself reads back what the process wrote (the HCA only read it).
    let mut back = vec![0u8; 3000];
    ring.read(1000, &mut back).unwrap();
    assert_eq!(back, e2);
    eprintln!(
        "local ring on {} and {} as RDMA WRITE source: verified",
        ic0.a.device, ic1.a.device
    );
}
