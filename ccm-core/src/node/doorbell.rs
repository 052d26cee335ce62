//! A doorbell: a nonblocking pipe that wakes a thread asleep in `poll(2)`. Any thread
//! [`ring`](Doorbell::ring)s it; the sleeper polls its read end ([`AsFd`]) next to its other fds, or
//! [`wait`](Doorbell::wait)s on it, then [`drain`](Doorbell::drain)s it before it looks for work. Rung while
//! already ringing, it stays readable once until drained: a full pipe drops the byte, not the wake-up, and
//! no ringer ever blocks. The node's driver and the NVRAM mirror thread sleep on one each.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// See the module doc.
#[derive(Debug)]
pub struct Doorbell {
    rx: OwnedFd,
    tx: OwnedFd,
}

impl Doorbell {
    /// A new pipe, both ends nonblocking.
    pub fn new() -> std::io::Result<Doorbell> {
        let (rx, tx) = nix::unistd::pipe()?;
        for fd in [&rx, &tx] {
            fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        }
        Ok(Doorbell { rx, tx })
    }

    /// Wake the sleeper (one `write` system call; never blocks).
    pub fn ring(&self) {
        let _ = nix::unistd::write(&self.tx, &[1u8]);
    }

    /// Sleep until the doorbell rang, `also` (an fd) is readable, or `timeout` passed.
    pub fn wait(&self, also: Option<BorrowedFd<'_>>, timeout: Duration) {
        let mut fds = [
            PollFd::new(self.rx.as_fd(), PollFlags::POLLIN),
            PollFd::new(also.unwrap_or(self.rx.as_fd()), PollFlags::POLLIN),
        ];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let _ = poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        );
    }

    /// Empty the pipe: the next wait sleeps until the next ring.
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!(nix::unistd::read(self.rx.as_raw_fd(), &mut buf), Ok(n) if n > 0) {}
    }
}

impl AsFd for Doorbell {
    /// The read end, readable while the doorbell rang and was not drained.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.rx.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_ring_wakes_the_sleeper_once_until_drained_and_many_rings_never_block() {
        let bell = Doorbell::new().unwrap();
        let t = Instant::now();
        bell.wait(None, Duration::from_millis(30));
        assert!(
            t.elapsed() >= Duration::from_millis(25),
            "unrung: sleeps its timeout"
        );
        // Far more rings than a pipe holds: none blocks.
        for _ in 0..200_000 {
            bell.ring();
        }
        let t = Instant::now();
        bell.wait(None, Duration::from_secs(5));
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "rung: returns at once"
        );
        bell.drain();
        let t = Instant::now();
        bell.wait(None, Duration::from_millis(30));
        assert!(
            t.elapsed() >= Duration::from_millis(25),
            "drained: sleeps again"
        );
    }
}
