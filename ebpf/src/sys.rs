//! The bpf(2) commands aya does not expose for every program type: creating a link, pinning
//! it, and attaching a program to a sockmap without aya's detach-on-drop.
#![allow(unsafe_code)] // the bpf(2) system call

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_attach_type`: BPF_CGROUP_GETSOCKOPT.
pub const BPF_CGROUP_GETSOCKOPT: u32 = 21;
/// `enum bpf_attach_type`: BPF_SK_MSG_VERDICT.
pub const BPF_SK_MSG_VERDICT: u32 = 7;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 8]) -> io::Result<libc::c_long> {
    // SAFETY: attr is a zero-padded bpf_attr of 64 bytes for the command.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// BPF_LINK_CREATE of `prog` on `target` (a cgroup) for `attach_type`.
pub fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 8];
    // struct { __u32 prog_fd; __u32 target_fd; __u32 attach_type; __u32 flags; }
    attr[0] = u64::from(prog.as_raw_fd() as u32) | (u64::from(target.as_raw_fd() as u32) << 32);
    attr[1] = u64::from(attach_type);
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_PROG_ATTACH of `prog` to `target` (a sockmap) for `attach_type`.
pub fn prog_attach(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<()> {
    let mut attr = [0u64; 8];
    // struct { __u32 target_fd; __u32 attach_bpf_fd; __u32 attach_type; __u32 attach_flags; }
    attr[0] = u64::from(target.as_raw_fd() as u32) | (u64::from(prog.as_raw_fd() as u32) << 32);
    attr[1] = u64::from(attach_type);
    bpf(BPF_PROG_ATTACH, &mut attr)?;
    Ok(())
}

/// BPF_OBJ_PIN of `fd` at `path` on a BPF filesystem.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
    let mut attr = [0u64; 8];
    // struct { __u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    attr[0] = c.as_ptr() as u64;
    attr[1] = u64::from(fd.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr)?;
    Ok(())
}
