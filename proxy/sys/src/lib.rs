//! System calls the proxy needs that neither std nor socket2 wraps: setting an arbitrary socket
//! option, as Envoy's `SocketOption` (level, name, integer or bytes) does.
#![allow(unsafe_code)] // setsockopt(2) with a level, a name and a value from the configuration.

use std::os::fd::{AsRawFd, BorrowedFd};

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
