//! The counting allocator the no-allocation tests rely on does count: an allocation in this thread
//! moves the count, one in another thread does not.

#[global_allocator]
static GLOBAL: ccm_verbs::alloc_count::Counting = ccm_verbs::alloc_count::Counting;

use ccm_verbs::alloc_count::allocations;

#[test]
fn an_allocation_in_this_thread_is_counted_and_one_elsewhere_is_not() {
    let before = allocations();
    let v: Vec<u64> = Vec::with_capacity(16);
    assert_eq!(
        allocations(),
        before + 1,
        "Vec::with_capacity allocates once"
    );
    drop(v);
    let before = allocations();
    std::thread::spawn(|| drop(Vec::<u8>::with_capacity(64)))
        .join()
        .unwrap();
    let spawn_cost = allocations() - before;
    let before = allocations();
    std::thread::spawn(|| ()).join().unwrap();
    assert_eq!(
        allocations() - before,
        spawn_cost,
        "the other thread's allocation is not counted here"
    );
}
