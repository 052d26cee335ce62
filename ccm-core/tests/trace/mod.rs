//! `CCM_TEST_TRACE=FILE`: a lab test process that calls [`to_file_if_asked`] also writes every node event
//! (`ccm::*` at info, with thread ids) to FILE, beyond the 256 a node's status keeps. `scripts/lab/run-tests`
//! sets it for every device test binary and prints the file's tail when one fails.

use std::sync::Mutex;

/// Install the trace once per process, if `CCM_TEST_TRACE` names a file. Off otherwise.
pub fn to_file_if_asked() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(path) = std::env::var("CCM_TEST_TRACE") else {
            return;
        };
        let file =
            std::fs::File::create(&path).unwrap_or_else(|e| panic!("CCM_TEST_TRACE {path}: {e}"));
        let _ = tracing_subscriber::fmt()
            .with_writer(Mutex::new(file))
            .with_ansi(false)
            .with_thread_ids(true)
            .with_max_level(tracing::Level::INFO)
            .try_init();
    });
}
