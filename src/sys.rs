//! The few operating-system calls std lacks: the open-file limit, sizing the descriptor table, randomness.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use std::io;
use std::os::fd::AsFd;

/// The process's open-file limits (`None` in rlimit terms is unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    /// The soft limit: what `accept` and `open` run into.
    pub soft: u64,
    /// The hard limit: how far the soft one may be raised.
    pub hard: u64,
}

/// Reads `RLIMIT_NOFILE`. An unlimited value reads as `u32::MAX`, more than
/// the kernel's descriptor ceiling anyway.
pub fn open_file_limit() -> OpenFileLimit {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let unlimited = u64::from(u32::MAX);
    OpenFileLimit { soft: current.unwrap_or(unlimited), hard: maximum.unwrap_or(unlimited) }
}

/// Raises the soft open-file limit to the hard one and returns the new soft
/// limit. Real deployments hold far more sockets than the usual soft 1024.
pub fn raise_open_file_limit() -> u64 {
    let limit = open_file_limit();
    if limit.soft < limit.hard {
        let wanted = Rlimit { current: Some(limit.hard), maximum: Some(limit.hard) };
        if let Err(error) = setrlimit(Resource::Nofile, wanted) {
            log::warn!(
                "could not raise the open-file limit from {} to {}: {error}",
                limit.soft,
                limit.hard
            );
            return limit.soft;
        }
    }
    open_file_limit().soft
}

/// Grows the process's descriptor table to hold descriptors up to `highest`
/// now, before any shard thread exists. Linux doubles the table as it fills
/// (past 256, 512, 1024, ...) and each doubling in a multi-threaded process
/// waits for an RCU grace period: about 15 ms with every thread stalled.
/// Duplicating a descriptor onto a number near the limit pays that once, here.
pub fn reserve_descriptor_table(highest: u64) -> io::Result<()> {
    let target = i32::try_from(highest.min(1 << 20)).unwrap_or(i32::MAX).max(3);
    let null = std::fs::File::open("/dev/null")?;
    match rustix::io::fcntl_dupfd_cloexec(null.as_fd(), target - 1) {
        // Dropping the duplicate closes it; the table keeps its size.
        Ok(_duplicate) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// `len` bytes from the kernel's random source.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let Some(rest) = buf.get_mut(filled..) else { break };
        match rustix::rand::getrandom(rest, rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => continue,
            // getrandom(2) cannot fail on Linux >= 3.17 once the pool is
            // initialised; a failure here is a broken system, not a peer.
            Err(error) => panic!("getrandom failed: {error}"),
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_differ() {
        let a = random_bytes(16);
        let b = random_bytes(16);
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
    }

    #[test]
    fn limits_are_ordered() {
        let limit = open_file_limit();
        assert!(limit.soft <= limit.hard);
    }
}
