//! System calls the proxy needs that neither std nor socket2 wraps: setting an arbitrary socket
//! option, as Envoy's `SocketOption` (level, name, integer or bytes) does, and asking the
//! allocator (glibc's malloc) what it holds, for the overload manager; and the allocator
//! itself, glibc's malloc behind a cache on each worker thread.
#![allow(unsafe_code)] // setsockopt(2) with values from the configuration; mallinfo2 and malloc_trim;
                       // the global allocator.

use std::os::fd::{AsRawFd, BorrowedFd};

pub mod alloc;

/// `setsockopt(fd, level, name, value)`.
pub fn setsockopt(fd: BorrowedFd<'_>, level: i32, name: i32, value: &[u8]) -> std::io::Result<()> {
    let len = libc::socklen_t::try_from(value.len())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: the descriptor is open for the borrow's lifetime; the pointer and length describe
    // `value`, which outlives the call; the kernel only reads `len` bytes from it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast::<libc::c_void>(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `setsockopt` with a C `int` value, as an integer `SocketOption` is set.
pub fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: i32,
    name: i32,
    value: i32,
) -> std::io::Result<()> {
    setsockopt(fd, level, name, &value.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn an_integer_option_is_set_and_a_bad_one_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        setsockopt_int(l.as_fd(), libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1).expect("keepalive");
        let e = setsockopt_int(l.as_fd(), libc::SOL_SOCKET, 99_999, 1).expect_err("no such option");
        assert!(e.raw_os_error().is_some());
    }
}

/// What glibc's allocator holds, from `mallinfo2(3)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapInfo {
    /// Bytes handed out and not yet freed: chunks in use in the arenas plus directly mapped
    /// ones (`uordblks + hblkhd`).
    pub in_use: u64,
    /// Free bytes kept in the arenas (`fordblks`).
    pub free: u64,
}

/// The allocator's counts now.
pub fn heap_info() -> HeapInfo {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value; glibc locks
    // each arena while it sums it.
    let m = unsafe { libc::mallinfo2() };
    HeapInfo {
        in_use: (m.uordblks + m.hblkhd) as u64,
        free: m.fordblks as u64,
    }
}

/// Gives the allocator's free memory back to the system (`malloc_trim(0)`). The blocks workers
/// keep in their caches ([`alloc`]) stay there: they are bounded, and in use again soon.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only releases memory no allocation uses; it takes a plain integer.
    unsafe {
        libc::malloc_trim(0);
    }
}
