//! Scheduling weight of the calling thread, for ccm's background threads.
//!
//! The node's driver thread sends every heartbeat. Its helper threads (VI creation and connection,
//! teardown) do bursts of device work that can take hundreds of milliseconds on a small or emulated
//! machine; run at a lower weight they cannot starve the driver thread of the CPU.

/// Set the nice value of the calling thread (Linux: nice is per thread). Raising it (being nicer)
/// needs no privilege.
pub fn set_current_thread_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority takes plain integers (no pointers); PRIO_PROCESS with a thread id sets
    // that thread's nice value on Linux. Errors are reported through the return value and errno.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_can_be_made_nicer_without_touching_the_others() {
        let main_before = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        std::thread::spawn(|| {
            set_current_thread_nice(7).unwrap();
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            // Field 19 is the nice value (after the parenthesised command name).
            let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
            let nice: i32 = after_comm.split(' ').nth(16).unwrap().parse().unwrap();
            assert_eq!(nice, 7);
        })
        .join()
        .unwrap();
        let main_after = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let nice_of = |s: &str| -> i32 {
            s[s.rfind(')').unwrap() + 2..]
                .split(' ')
                .nth(16)
                .unwrap()
                .parse()
                .unwrap()
        };
        assert_eq!(nice_of(&main_before), nice_of(&main_after));
    }
}
