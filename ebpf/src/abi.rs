//! Mirrors of the map keys and values in `bpf/skiff.h`, field for field. The test at the
//! bottom compiles a C program against the header and compares every offset and size.
#![allow(unsafe_code)] // `aya::Pod` is an unsafe marker trait: these are plain C data.

/// `SKIFF_MAX_PORTS`.
pub const MAX_PORTS: usize = 16;
/// `SKIFF_MAX_CIDRS`.
pub const MAX_CIDRS: usize = 16;
/// `SKIFF_MAX_IDS`.
pub const MAX_IDS: usize = 4;
/// `SKIFF_MAX_POD_IPS`.
pub const MAX_POD_IPS: usize = 4;

/// `-i '*'`.
pub const F_OUT_ALL_CIDRS: u32 = 1 << 0;
/// `-b '*'`.
pub const F_IN_ALL_PORTS: u32 = 1 << 1;
/// Kernel events go to the ring buffer.
pub const F_EVENTS: u32 = 1 << 2;
/// Local hops are short-circuited with sk_msg.
pub const F_SK_MSG: u32 = 1 << 3;

/// `struct skiff_cidr`: IPv4 v4-mapped, its prefix plus 96.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cidr {
    pub addr: [u8; 16],
    pub prefix: u32,
}

/// `struct skiff_pod`: what one enrolled network namespace captures.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pod {
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub tunnel_port: u16,
    pub pad0: u16,
    pub flags: u32,
    pub mark: u32,
    pub n_uids: u32,
    pub n_gids: u32,
    pub uids: [u32; MAX_IDS],
    pub gids: [u32; MAX_IDS],
    pub n_in_ports: u16,
    pub n_in_exclude_ports: u16,
    pub n_out_ports: u16,
    pub n_out_exclude_ports: u16,
    pub in_ports: [u16; MAX_PORTS],
    pub in_exclude_ports: [u16; MAX_PORTS],
    pub out_ports: [u16; MAX_PORTS],
    pub out_exclude_ports: [u16; MAX_PORTS],
    pub n_out_cidrs: u32,
    pub n_out_exclude_cidrs: u32,
    pub n_pod_ips: u32,
    pub pad1: u32,
    pub out_cidrs: [Cidr; MAX_CIDRS],
    pub out_exclude_cidrs: [Cidr; MAX_CIDRS],
    pub pod_ips: [[u8; 16]; MAX_POD_IPS],
}

/// `struct skiff_tuple`: a redirected connection (key of `skiff_orig_dst`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tuple {
    pub netns: u64,
    pub client_ip: [u8; 16],
    pub proxy_ip: [u8; 16],
    pub client_port: u16,
    pub proxy_port: u16,
    pub pad: u32,
}

/// `struct skiff_orig`: where a redirected connection was going.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Orig {
    pub ip: [u8; 16],
    pub port: u16,
    pub family: u16,
    pub pad: u32,
}

/// `struct skiff_listener_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerKey {
    pub netns: u64,
    pub family: u32,
    pub pad: u32,
}

/// `struct skiff_sock_key`: a local socket as it sees itself (key of `skiff_socks`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SockKey {
    pub netns: u64,
    pub local_ip: [u8; 16],
    pub remote_ip: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub pad: u32,
}

/// `struct skiff_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Event {
    pub netns: u64,
    pub kind: u32,
    pub reason: u32,
    pub ip: [u8; 16],
    pub port: u16,
    pub pad: u16,
    pub pid: u32,
}

// SAFETY: all of these are `repr(C)` structs of integers and integer arrays with explicit
// padding fields, valid for any bit pattern.
unsafe impl aya::Pod for Cidr {}
unsafe impl aya::Pod for Pod {}
unsafe impl aya::Pod for Tuple {}
unsafe impl aya::Pod for Orig {}
unsafe impl aya::Pod for ListenerKey {}
unsafe impl aya::Pod for Event {}
unsafe impl aya::Pod for SockKey {}

/// The per-CPU counters of `skiff_stats`, in `enum skiff_stat` order, with the names
/// `skiff ebpf status` prints.
pub const STATS: &[&str] = &[
    "outbound_redirected",
    "outbound_excluded_owner",
    "outbound_excluded_mark",
    "outbound_excluded_port",
    "outbound_excluded_cidr",
    "outbound_not_included",
    "outbound_local",
    "outbound_loop_refused",
    "original_dst_recorded",
    "original_dst_deleted",
    "getsockopt_original_dst",
    "getsockopt_local_address",
    "getsockopt_miss",
    "inbound_assigned",
    "inbound_excluded",
    "inbound_no_listener",
    "inbound_assign_failed",
    "inbound_listener_registered",
    "events_dropped",
    "socket_storage_failed",
    "sk_msg_sockets",
    "sk_msg_redirected",
    "sk_msg_passed",
];

/// `enum skiff_event_kind`, as a word.
pub fn event_kind(kind: u32) -> &'static str {
    match kind {
        1 => "redirected",
        2 => "excluded",
        3 => "inbound_assigned",
        4 => "original_dst_lookup_miss",
        5 => "inbound_no_listener",
        _ => "unknown",
    }
}

/// `enum skiff_reason`, as a word.
pub fn reason(r: u32) -> &'static str {
    match r {
        0 => "",
        1 => "owner",
        2 => "mark",
        3 => "port",
        4 => "cidr",
        5 => "not_included",
        6 => "loop",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};
    use std::process::Command;

    /// `(C expression, Rust value)` for every size and offset in the header.
    macro_rules! layout {
        ($($ty:ident = $c:literal { $($f:ident),* })*) => {{
            let mut v: Vec<(String, usize)> = Vec::new();
            $(
                v.push((format!("sizeof(struct {})", $c), size_of::<$ty>()));
                $( v.push((format!("offsetof(struct {}, {})", $c, stringify!($f)), offset_of!($ty, $f))); )*
            )*
            v
        }};
    }

    #[test]
    fn rust_mirrors_agree_with_the_c_header() {
        let expected = layout! {
            Cidr = "skiff_cidr" { addr, prefix }
            Pod = "skiff_pod" { outbound_port, inbound_port, tunnel_port, pad0, flags, mark,
                n_uids, n_gids, uids, gids, n_in_ports, n_in_exclude_ports, n_out_ports,
                n_out_exclude_ports, in_ports, in_exclude_ports, out_ports, out_exclude_ports,
                n_out_cidrs, n_out_exclude_cidrs, n_pod_ips, pad1, out_cidrs,
                out_exclude_cidrs, pod_ips }
            Tuple = "skiff_tuple" { netns, client_ip, proxy_ip, client_port, proxy_port, pad }
            Orig = "skiff_orig" { ip, port, family, pad }
            ListenerKey = "skiff_listener_key" { netns, family, pad }
            Event = "skiff_event" { netns, kind, reason, ip, port, pad, pid }
            SockKey = "skiff_sock_key" { netns, local_ip, remote_ip, local_port, remote_port, pad }
        };
        let dir = std::env::temp_dir().join(format!("skiff-abi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut src = String::from(
            "#include <stdio.h>\n#include <stddef.h>\n#include \"skiff.h\"\nint main(void) {\n",
        );
        for (expr, _) in &expected {
            src.push_str(&format!("printf(\"%zu\\n\", (size_t){expr});\n"));
        }
        src.push_str(
            "printf(\"%d %d %d %d %d\\n\", SKIFF_MAX_PORTS, SKIFF_MAX_CIDRS, \
             SKIFF_MAX_IDS, SKIFF_MAX_POD_IPS, SKIFF_S_MAX);\nreturn 0; }\n",
        );
        let c = dir.join("layout.c");
        std::fs::write(&c, src).expect("write layout.c");
        let exe = dir.join("layout");
        let header_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/bpf");
        let cc = Command::new("cc")
            .arg("-I")
            .arg(header_dir)
            .arg(&c)
            .arg("-o")
            .arg(&exe)
            .output()
            .expect("run cc");
        assert!(
            cc.status.success(),
            "{}",
            String::from_utf8_lossy(&cc.stderr)
        );
        let out = Command::new(&exe).output().expect("run layout");
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let mut lines = text.lines();
        for (expr, rust) in &expected {
            let c: usize = lines.next().expect("a line").parse().expect("a number");
            assert_eq!(c, *rust, "{expr}: C says {c}, Rust says {rust}");
        }
        assert_eq!(
            lines.next(),
            Some(
                format!(
                    "{MAX_PORTS} {MAX_CIDRS} {MAX_IDS} {MAX_POD_IPS} {}",
                    STATS.len()
                )
                .as_str()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
