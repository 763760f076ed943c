//! System calls the proxy needs that neither std nor socket2 wraps: setting an arbitrary socket
//! option, as Envoy's `SocketOption` (level, name, integer or bytes) does, and asking the
//! allocator (glibc's malloc) what it holds, for the overload manager; and the allocator
//! itself, glibc's malloc behind a cache on each worker thread.
#![allow(unsafe_code)] // setsockopt(2) with values from the configuration; mallinfo2, mallopt and malloc_trim;
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

    /// Page faults this thread has taken so far.
    fn faults() -> i64 {
        // SAFETY: getrusage fills the struct it is given; zeroes are a valid `rusage`.
        unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut usage), 0);
            usage.ru_minflt
        }
    }

    #[test]
    fn a_heap_keeps_what_a_thread_freed_for_its_next_requests() {
        keep_freed_memory();
        std::thread::spawn(|| {
            // Two MiB in 256 KiB buffers, written through, then freed: as a worker's read
            // buffers are between two bursts of requests.
            let round = || {
                let blocks: Vec<Vec<u8>> = (0..8).map(|_| vec![1u8; 256 << 10]).collect();
                std::hint::black_box(&blocks);
            };
            round();
            let before = faults();
            round();
            round();
            let again = faults() - before;
            // 512 pages a round: given back and faulted in again, they would all count.
            assert!(
                again < 64,
                "{again} page faults to reuse what the thread freed"
            );
        })
        .join()
        .expect("the thread's rounds");
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

/// Freed memory at the top of one of glibc's heaps that it keeps rather than return to the
/// system ([`keep_freed_memory`]).
pub const TRIM_THRESHOLD: usize = 4 << 20;
/// The smallest allocation glibc maps on its own rather than carve from a heap.
pub const MMAP_THRESHOLD: usize = 1 << 20;

/// Has glibc keep up to [`TRIM_THRESHOLD`] of freed memory in each heap, and carve allocations
/// under [`MMAP_THRESHOLD`] from its heaps, unless `GLIBC_TUNABLES` sets either.
///
/// By default glibc adjusts both as it goes: a worker's heap shrinks (`madvise`) as soon as its
/// free top passes twice the largest separately mapped block freed so far, then grows back for
/// the next requests, a page fault for each page it touches again. With 64 KiB responses that
/// was one fault a request, about a tenth of the proxy's CPU there. The overload manager's
/// `shrink_heap` ([`release_free_memory`]) still gives the kept memory back under pressure.
pub fn keep_freed_memory() {
    let tuned = std::env::var("GLIBC_TUNABLES")
        .is_ok_and(|t| t.contains("trim_threshold") || t.contains("mmap_threshold"));
    if tuned {
        return;
    }
    // SAFETY: mallopt sets one of glibc's malloc parameters from a plain integer; it takes the
    // allocator's lock.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
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
