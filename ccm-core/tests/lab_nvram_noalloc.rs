//! The NVRAM mirror's data path allocates nothing in the engine's thread: a counting global allocator (per
//! thread) around `append` and `wait_durable`, between two ccm nodes on the lab's rxe devices. In that thread
//! `append` posts onto an idle link and `wait_durable` reaps the completion itself, so the post, the poll and
//! the bookkeeping of both are counted; with batches in flight appends only join the next batch.

mod common;
use common::{config, Files};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ccm_core::clients::nvram::{self, Mirror};
use ccm_core::manager::ClientSpec;
use ccm_core::mirror::Lsn;
use ccm_core::node::Node;
use ccm_core::wire::{BandwidthClass, ClientId};
use ccm_verbs::lab::LabTopology;

#[global_allocator]
static GLOBAL: ccm_verbs::alloc_count::Counting = ccm_verbs::alloc_count::Counting;

fn allocs() -> u64 {
    ccm_verbs::alloc_count::allocations()
}

const RING: u64 = 4 << 20;

#[test]
fn append_and_wait_durable_allocate_nothing_in_the_engines_thread() {
    let Some(lab) = LabTopology::from_env_or_skip(
        "append_and_wait_durable_allocate_nothing_in_the_engines_thread",
    ) else {
        return;
    };
    let tcp_port = 19_760;
    let base = |n: u64| {
        PathBuf::from(format!(
            "/dev/shm/ccm-lab-nvram-noalloc-{}-{n}",
            std::process::id()
        ))
    };
    let mut files = Vec::new();
    for n in [1, 2] {
        files.extend(nvram::ring_paths(&base(n)));
    }
    let _files = Files(files.clone());
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    let nodes: Vec<Node> = [1, 2]
        .iter()
        .map(|&n| Node::start(config(&lab, n, tcp_port), Instant::now()).unwrap())
        .collect();
    let spec = ClientSpec {
        id: ClientId(41),
        name: "nvram".into(),
        class: BandwidthClass::High,
        vi_count: 1,
        pinned: None,
        private: Vec::new(),
    };
    let m1: Mirror = nvram::start(&nodes[0].handle(), spec.clone(), &base(1), RING).unwrap();
    let m2: Mirror = nvram::start(&nodes[1].handle(), spec, &base(2), RING).unwrap();
    let t = Instant::now();
    while !(m1.is_synced() && m2.is_synced()) {
        assert!(t.elapsed() < Duration::from_secs(20), "mirrors not synced");
        std::thread::sleep(Duration::from_millis(5));
    }
    let wait = Duration::from_secs(30);
    let mut payload = vec![0u8; 4096];
    // Warm-up (first uses of thread-locals, lazily sized buffers).
    for i in 0..50u64 {
        let lsn = m1.append(&payload[..64 + (i as usize % 64)]).unwrap();
        assert!(m1.wait_durable(lsn, wait));
    }

    // The counter sees allocations of this thread (so a zero below means something).
    let probe = allocs();
    let v = std::hint::black_box(vec![1u8; 32]);
    assert!(allocs() > probe);
    drop(v);

    let stops = m1.stats().stops;
    let before = allocs();
    // One entry at a time (append posts, the waiter reaps), sizes 1 B .. 4 KiB.
    for i in 0..300u64 {
        let len = 1 + (i as usize * 97) % payload.len();
        payload[..len].fill(i as u8);
        let lsn = m1.append(&payload[..len]).unwrap();
        assert!(m1.wait_durable(lsn, wait), "entry {} not durable", lsn.0);
    }
    // Bursts: appends join the batch in flight, the waiter reaps and posts the rest.
    for burst in 0..50u64 {
        let mut last = Lsn(0);
        for k in 0..16u64 {
            payload[..256].fill((burst * 16 + k) as u8);
            last = m1.append(&payload[..256]).unwrap();
        }
        assert!(m1.wait_durable(last, wait), "burst {burst} not durable");
    }
    // Records in parts (a header and its data): the checksum runs over the parts, on the stack.
    let header = [0xa5u8; 24];
    for i in 0..100u64 {
        let len = 1 + (i as usize * 131) % (payload.len() - header.len());
        payload[..len].fill(i as u8);
        let lsn = m1.append_vectored(&[&header, &payload[..len]]).unwrap();
        assert!(m1.wait_durable(lsn, wait), "record {} not durable", lsn.0);
    }
    let counted = allocs() - before;
    let s = m1.stats();
    assert_eq!(
        s.stops, stops,
        "the mirror moved during the run (a failover allocates): {s:?}"
    );
    assert_eq!(
        counted, 0,
        "append/wait_durable allocated {counted} times in 1200 entries ({s:?})"
    );
    assert_eq!(s.durable, s.appended);
    eprintln!(
        "1200 entries appended and durable, {} batches, 0 allocations in the engine's thread",
        s.batches
    );
    m1.close();
    m2.close();
}
