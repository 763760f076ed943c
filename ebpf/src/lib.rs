//! skiff's eBPF redirection: the kernel programs of `bpf/skiff.bpf.c`, embedded in the
//! binary, and the loader that attaches, enrols, pins and reports them.
//!
//! Everything lives under [`PIN_ROOT`] so `bpftool` can explain it:
//!
//! | pin | what |
//! |---|---|
//! | `maps/skiff_pods` | enrolled network namespaces (cookie → capture options) |
//! | `maps/skiff_orig_dst` | redirected connections → original destination |
//! | `maps/skiff_sk_dst` | per-socket original destination, between connect and established |
//! | `maps/skiff_listeners` | each pod's inbound listener, for sk_lookup |
//! | `maps/skiff_stats` | per-CPU counters |
//! | `maps/skiff_events` | the ring buffer of kernel events |
//! | `maps/skiff_socks` | the local sockets sk_msg short-circuits (pods enrolled with `--sk-msg`) |
//! | `maps/skiff_sk_msg_tcp` | per-socket: this one keeps TCP (its first message found no peer) |
//! | `sk_msg` | the sk_msg program's attachment to `skiff_socks` (a link) |
//! | `cgroup/<cgroup id>/{connect4,connect6,sockops,getsockopt}` | the cgroup attachments (links) |
//! | `netns/<netns cookie>/sk_lookup` | a pod's inbound attachment (link) |

pub mod abi;
pub mod cli;
pub mod netns;
mod sys;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, RingBuf, SockHash};
use aya::programs::{
    links::FdLink, CgroupAttachMode, CgroupSockAddr, CgroupSockopt, SkLookup, SkMsg, SockOps,
};
use aya::{Ebpf, EbpfLoader};
use skiff_iptables::{Capture, Select};

/// Where skiff pins its maps and links.
pub const PIN_ROOT: &str = "/sys/fs/bpf/skiff";

/// The kernel programs, built by clang from `bpf/skiff.bpf.c`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/skiff.bpf.o"));

/// The programs attached to a cgroup, with their pin names.
pub const CGROUP_PROGRAMS: [(&str, &str); 4] = [
    ("skiff_connect4", "connect4"),
    ("skiff_connect6", "connect6"),
    ("skiff_sockops", "sockops"),
    ("skiff_getsockopt", "getsockopt"),
];

const MAPS: [&str; 8] = [
    "skiff_pods",
    "skiff_orig_dst",
    "skiff_sk_dst",
    "skiff_listeners",
    "skiff_stats",
    "skiff_events",
    "skiff_socks",
    "skiff_sk_msg_tcp",
];

/// The pin of the sk_msg program's attachment to `skiff_socks`.
const SK_MSG_PIN: &str = "sk_msg";

/// What went wrong, said plainly; nothing half-done is left behind where it can be avoided.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    let text = e.to_string();
    let hint = if text.contains("Operation not permitted") || text.contains("EPERM") {
        " (needs root, or CAP_BPF with CAP_NET_ADMIN)"
    } else {
        ""
    };
    Error(format!("{what}: {text}{hint}"))
}

fn err_chain(what: impl std::fmt::Display, e: &dyn std::error::Error) -> Error {
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    err(what, text)
}

fn root() -> PathBuf {
    PathBuf::from(PIN_ROOT)
}

/// The kernel features skiff needs, each probed and named when missing.
pub fn probe() -> Result<(), Error> {
    use aya::maps::MapType;
    use aya::programs::ProgramType;
    use aya::sys::{is_map_supported, is_program_supported};
    ensure_bpffs()?;
    let programs = [
        (
            ProgramType::CgroupSockAddr,
            "cgroup/connect4 programs (Linux 4.17)",
        ),
        (ProgramType::SockOps, "sockops programs (Linux 4.13)"),
        (
            ProgramType::CgroupSockopt,
            "cgroup/getsockopt programs (Linux 5.3)",
        ),
        (ProgramType::SkLookup, "sk_lookup programs (Linux 5.9)"),
    ];
    for (p, name) in programs {
        match is_program_supported(p) {
            Ok(true) => {}
            Ok(false) => return Err(Error(format!("this kernel lacks {name}"))),
            Err(e) => return Err(err_chain(format!("probing {name}"), &e)),
        }
    }
    let maps = [
        (MapType::SkStorage, "socket storage maps (Linux 5.2)"),
        (MapType::RingBuf, "ring buffer maps (Linux 5.8)"),
        (MapType::SockHash, "sockhash maps (Linux 4.18)"),
        (MapType::LruHash, "LRU hash maps (Linux 4.10)"),
    ];
    for (m, name) in maps {
        match is_map_supported(m) {
            Ok(true) => {}
            Ok(false) => return Err(Error(format!("this kernel lacks {name}"))),
            Err(e) => return Err(err(format!("probing {name}"), e)),
        }
    }
    netns::current_cookie().map_err(|e| err("reading the network namespace cookie", e))?;
    Ok(())
}

/// Mounts the BPF filesystem at /sys/fs/bpf when it is not there yet.
fn ensure_bpffs() -> Result<(), Error> {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let dir = Path::new("/sys/fs/bpf");
    if fs_magic(dir) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    let out = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .output()
        .map_err(|e| err("mounting the BPF filesystem at /sys/fs/bpf", e))?;
    if !out.status.success() {
        return Err(Error(format!(
            "no BPF filesystem at /sys/fs/bpf and mounting one failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[allow(unsafe_code)] // statfs(2)
fn fs_magic(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statfs is valid; statfs fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and st a valid buffer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_type as i64)
}

/// Loads the object with its maps pinned (created on first use, shared afterwards).
fn load(netns_cookie: Option<u64>) -> Result<Ebpf, Error> {
    ensure_bpffs()?;
    let maps = root().join("maps");
    std::fs::create_dir_all(&maps).map_err(|e| err(format!("creating {}", maps.display()), e))?;
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(&maps);
    let cookie = netns_cookie.unwrap_or(0);
    loader.override_global("skiff_netns_cookie", &cookie, true);
    loader
        .load(OBJECT)
        .map_err(|e| err_chain("loading skiff's BPF programs", &e))
}

fn pin(link: FdLink, path: &Path) -> Result<(), Error> {
    link.pin(path)
        .map(drop)
        .map_err(|e| err_chain(format!("pinning {}", path.display()), &e))
}

/// The cgroup v2 directory at `path`, and its id.
pub(crate) fn cgroup(path: &Path) -> Result<(File, u64), Error> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;
    let f = File::open(path).map_err(|e| err(format!("--cgroup {}", path.display()), e))?;
    if fs_magic(path) != Some(CGROUP2_SUPER_MAGIC) {
        return Err(Error(format!(
            "--cgroup {}: not a cgroup v2 directory",
            path.display()
        )));
    }
    let id = f
        .metadata()
        .map_err(|e| err(format!("--cgroup {}", path.display()), e))?
        .ino();
    Ok((f, id))
}

/// Loads a cgroup program of aya type `$ty`, attaches it to `$cg` and hands back the link,
/// to be pinned (aya's program types share no trait for this).
macro_rules! cgroup_link {
    ($ty:ty, $program:expr, $cg:expr, $what:expr) => {{
        let p: &mut $ty = $program.try_into().map_err(|e| err_chain($what, &e))?;
        p.load().map_err(|e| err_chain($what, &e))?;
        let id = p
            .attach($cg, CgroupAttachMode::Single)
            .map_err(|e| err_chain($what, &e))?;
        let l = p.take_link(id).map_err(|e| err_chain($what, &e))?;
        FdLink::try_from(l).map_err(|e| err_chain($what, &e))?
    }};
}

/// Attaches the cgroup programs to `cgroup`; false when they already were (nothing changed).
pub fn attach_cgroup(path: &Path) -> Result<bool, Error> {
    let (cg, id) = cgroup(path)?;
    let dir = root().join("cgroup").join(id.to_string());
    let missing: Vec<_> = CGROUP_PROGRAMS
        .iter()
        .filter(|(_, pin)| !dir.join(pin).exists())
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    std::fs::create_dir_all(&dir).map_err(|e| err(format!("creating {}", dir.display()), e))?;
    let mut bpf = load(None)?;
    for (prog, name) in missing {
        let what = format!("attaching {prog} to {}", path.display());
        let program = bpf
            .program_mut(prog)
            .ok_or_else(|| Error(format!("{prog} missing from the object")))?;
        let link: FdLink = match *name {
            "connect4" | "connect6" => cgroup_link!(CgroupSockAddr, program, &cg, &what),
            "sockops" => cgroup_link!(SockOps, program, &cg, &what),
            _ => {
                // aya cannot hand out a cgroup/getsockopt link as an FdLink: create and pin
                // this one with the bpf(2) commands directly.
                let p: &mut CgroupSockopt = program.try_into().map_err(|e| err_chain(&what, &e))?;
                p.load().map_err(|e| err_chain(&what, &e))?;
                let prog = p.fd().map_err(|e| err_chain(&what, &e))?;
                let link = sys::link_create(prog.as_fd(), cg.as_fd(), sys::BPF_CGROUP_GETSOCKOPT)
                    .map_err(|e| err(&what, e))?;
                let path = dir.join(name);
                sys::obj_pin(link.as_fd(), &path)
                    .map_err(|e| err(format!("pinning {}", path.display()), e))?;
                continue;
            }
        };
        pin(link, &dir.join(name))?;
    }
    Ok(true)
}

/// Detaches the cgroup programs from `cgroup`; false when none were attached.
pub fn detach_cgroup(path: &Path) -> Result<bool, Error> {
    let (_, id) = cgroup(path)?;
    remove_links(&root().join("cgroup").join(id.to_string()))
}

fn remove_links(dir: &Path) -> Result<bool, Error> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(false);
    };
    for e in entries.flatten() {
        std::fs::remove_file(e.path())
            .map_err(|x| err(format!("unpinning {}", e.path().display()), x))?;
    }
    std::fs::remove_dir(dir).map_err(|e| err(format!("removing {}", dir.display()), e))?;
    Ok(true)
}

fn pinned_map(name: &str) -> Result<MapData, Error> {
    let path = root().join("maps").join(name);
    MapData::from_pin(&path).map_err(|e| err_chain(format!("opening {}", path.display()), &e))
}

fn pods_map() -> Result<BpfHashMap<MapData, u64, abi::Pod>, Error> {
    BpfHashMap::try_from(Map::HashMap(pinned_map("skiff_pods")?))
        .map_err(|e| err_chain("skiff_pods", &e))
}

/// Options of one pod beyond the shared capture flags.
#[derive(Debug, Clone, Default)]
pub struct PodOptions {
    /// Sockets with this SO_MARK are the proxy's (0: no mark exemption).
    pub mark: u32,
    /// Send kernel events to the ring buffer.
    pub events: bool,
    /// Short-circuit local hops with sk_msg.
    pub sk_msg: bool,
}

fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn fill_ports(flag: &str, list: &[u16], out: &mut [u16; abi::MAX_PORTS]) -> Result<u16, Error> {
    if list.len() > abi::MAX_PORTS {
        return Err(Error(format!(
            "--{flag}: at most {} ports with the eBPF backend, {} given",
            abi::MAX_PORTS,
            list.len()
        )));
    }
    out[..list.len()].copy_from_slice(list);
    Ok(list.len() as u16)
}

fn fill_cidrs(
    flag: &str,
    list: &[skiff_iptables::Cidr],
    out: &mut [abi::Cidr; abi::MAX_CIDRS],
) -> Result<u32, Error> {
    if list.len() > abi::MAX_CIDRS {
        return Err(Error(format!(
            "--{flag}: at most {} CIDRs with the eBPF backend, {} given",
            abi::MAX_CIDRS,
            list.len()
        )));
    }
    for (slot, c) in out.iter_mut().zip(list) {
        let extra = if c.ip.is_ipv4() { 96 } else { 0 };
        *slot = abi::Cidr {
            addr: mapped(c.ip),
            prefix: u32::from(c.prefix) + extra,
        };
    }
    Ok(list.len() as u32)
}

fn fill_ids(flag: &str, list: &[String], out: &mut [u32; abi::MAX_IDS]) -> Result<u32, Error> {
    if list.len() > abi::MAX_IDS {
        return Err(Error(format!(
            "--{flag}: at most {} ids with the eBPF backend, {} given",
            abi::MAX_IDS,
            list.len()
        )));
    }
    for (slot, id) in out.iter_mut().zip(list) {
        *slot = id
            .parse()
            .map_err(|_| Error(format!("--{flag}: '{id}' is not a numeric id")))?;
    }
    Ok(list.len() as u32)
}

/// The kernel's view of one pod's capture options; an option the kernel programs cannot
/// hold is refused naming its flag.
pub fn pod_config(c: &Capture, o: &PodOptions, addresses: &[IpAddr]) -> Result<abi::Pod, Error> {
    let mut p = abi::Pod {
        outbound_port: c.outbound_port,
        inbound_port: c.inbound_port,
        tunnel_port: c.tunnel_port,
        mark: o.mark,
        ..abi::Pod::default()
    };
    if o.events {
        p.flags |= abi::F_EVENTS;
    }
    if o.sk_msg {
        p.flags |= abi::F_SK_MSG;
    }
    p.n_uids = fill_ids("proxy-uid", &c.uids, &mut p.uids)?;
    p.n_gids = fill_ids("proxy-gid", &c.gids, &mut p.gids)?;
    match &c.inbound_ports {
        Select::None => {}
        Select::All => p.flags |= abi::F_IN_ALL_PORTS,
        Select::Some(list) => {
            p.n_in_ports = fill_ports("istio-inbound-ports", list, &mut p.in_ports)?
        }
    }
    p.n_in_exclude_ports = fill_ports(
        "istio-local-exclude-ports",
        &c.inbound_exclude_ports,
        &mut p.in_exclude_ports,
    )?;
    p.n_out_ports = fill_ports("istio-outbound-ports", &c.outbound_ports, &mut p.out_ports)?;
    p.n_out_exclude_ports = fill_ports(
        "istio-local-outbound-ports-exclude",
        &c.outbound_exclude_ports,
        &mut p.out_exclude_ports,
    )?;
    match &c.outbound_cidrs {
        Select::None => {}
        Select::All => p.flags |= abi::F_OUT_ALL_CIDRS,
        Select::Some(list) => {
            p.n_out_cidrs = fill_cidrs("istio-service-cidr", list, &mut p.out_cidrs)?
        }
    }
    p.n_out_exclude_cidrs = fill_cidrs(
        "istio-service-exclude-cidr",
        &c.outbound_exclude_cidrs,
        &mut p.out_exclude_cidrs,
    )?;
    for (slot, ip) in p.pod_ips.iter_mut().zip(addresses) {
        *slot = mapped(*ip);
        p.n_pod_ips += 1;
    }
    Ok(p)
}

/// An enrolled namespace.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// Its cookie, the key of `skiff_pods`.
    pub cookie: u64,
    /// The pod's addresses, never captured outbound.
    pub addresses: Vec<IpAddr>,
    /// Whether anything changed (false: it was already enrolled with these options).
    pub changed: bool,
}

/// Enrols the network namespace at `path`: its capture options go into `skiff_pods` and
/// sk_lookup is attached to it for inbound capture. Running it again changes nothing, or
/// only the options.
pub fn enroll(path: &Path, c: &Capture, o: &PodOptions) -> Result<Enrolled, Error> {
    let ns = File::open(path).map_err(|e| err(format!("--netns {}", path.display()), e))?;
    let info = netns::inspect(path).map_err(|e| err(format!("--netns {}", path.display()), e))?;
    let pod = pod_config(c, o, &info.addresses)?;
    let dir = root().join("netns").join(info.cookie.to_string());
    let link = dir.join("sk_lookup");
    if !root().join("maps").join("skiff_pods").exists() {
        drop(load(None)?); // creates and pins the maps
    }
    // Before the pod's flag: a socket put into skiff_socks takes the programs attached to
    // the map at that moment.
    let mut changed = o.sk_msg && attach_sk_msg()?;
    let mut pods = pods_map()?;
    let before = pods.get(&info.cookie, 0).ok();
    if before != Some(pod) {
        changed = true;
        pods.insert(info.cookie, pod, 0)
            .map_err(|e| err_chain("writing skiff_pods", &e))?;
    }
    if !link.exists() {
        std::fs::create_dir_all(&dir).map_err(|e| err(format!("creating {}", dir.display()), e))?;
        let what = format!("attaching sk_lookup to {}", path.display());
        let mut bpf = load(Some(info.cookie))?;
        let program = bpf
            .program_mut("skiff_sk_lookup")
            .ok_or_else(|| Error("skiff_sk_lookup missing from the object".into()))?;
        let p: &mut SkLookup = program.try_into().map_err(|e| err_chain(&what, &e))?;
        p.load().map_err(|e| err_chain(&what, &e))?;
        let id = p.attach(&ns).map_err(|e| err_chain(&what, &e))?;
        let l = p.take_link(id).map_err(|e| err_chain(&what, &e))?;
        pin(l.into(), &link)?;
        changed = true;
    }
    Ok(Enrolled {
        cookie: info.cookie,
        addresses: info.addresses,
        changed,
    })
}

/// Attaches the sk_msg program to `skiff_socks`; false when it already was.
fn attach_sk_msg() -> Result<bool, Error> {
    let path = root().join(SK_MSG_PIN);
    if path.exists() {
        return Ok(false);
    }
    let what = "attaching skiff_sk_msg to skiff_socks";
    let mut bpf = load(None)?;
    let map = {
        let m = bpf
            .map("skiff_socks")
            .ok_or_else(|| Error("skiff_socks missing from the object".into()))?;
        let h: SockHash<&MapData, abi::SockKey> =
            SockHash::try_from(m).map_err(|e| err_chain(what, &e))?;
        h.fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| err(what, e))?
    };
    let program = bpf
        .program_mut("skiff_sk_msg")
        .ok_or_else(|| Error("skiff_sk_msg missing from the object".into()))?;
    let p: &mut SkMsg = program.try_into().map_err(|e| err_chain(what, &e))?;
    p.load().map_err(|e| err_chain(what, &e))?;
    let prog = p.fd().map_err(|e| err_chain(what, &e))?;
    match sys::link_create(prog.as_fd(), map.as_fd(), sys::BPF_SK_MSG_VERDICT) {
        Ok(link) => sys::obj_pin(link.as_fd(), &path)
            .map_err(|e| err(format!("pinning {}", path.display()), e)),
        // Before Linux 6.10 a sockmap takes programs only by BPF_PROG_ATTACH; the map then
        // holds the program for as long as it lives, and the pin names it.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            sys::prog_attach(prog.as_fd(), map.as_fd(), sys::BPF_SK_MSG_VERDICT)
                .map_err(|e| err(what, e))?;
            p.pin(&path)
                .map_err(|e| err_chain(format!("pinning {}", path.display()), &e))
        }
        Err(e) => Err(err(what, e)),
    }?;
    Ok(true)
}

/// Removes a namespace's enrolment, its inbound attachment and its recorded connections;
/// false when it was not enrolled.
pub fn unenroll(path: &Path) -> Result<bool, Error> {
    let info = netns::inspect(path).map_err(|e| err(format!("--netns {}", path.display()), e))?;
    unenroll_cookie(info.cookie)
}

/// [`unenroll`] by the namespace's cookie, for when the namespace itself is already gone
/// (a CNI DEL after the sandbox was torn down); false when it was not enrolled.
pub fn unenroll_cookie(cookie: u64) -> Result<bool, Error> {
    let mut found = remove_links(&root().join("netns").join(cookie.to_string()))?;
    if root().join("maps").join("skiff_pods").exists() {
        let mut pods = pods_map()?;
        found |= pods.remove(&cookie).is_ok();
        let mut orig: BpfHashMap<MapData, abi::Tuple, abi::Orig> =
            BpfHashMap::try_from(Map::LruHashMap(pinned_map("skiff_orig_dst")?))
                .map_err(|e| err_chain("skiff_orig_dst", &e))?;
        let stale: Vec<abi::Tuple> = orig
            .keys()
            .flatten()
            .filter(|k| k.netns == cookie)
            .collect();
        for k in stale {
            let _ = orig.remove(&k);
        }
    }
    Ok(found)
}

/// Removes everything skiff attached, enrolled and pinned.
pub fn detach_all() -> Result<(), Error> {
    for kind in ["cgroup", "netns"] {
        if let Ok(entries) = std::fs::read_dir(root().join(kind)) {
            for e in entries.flatten() {
                remove_links(&e.path())?;
            }
        }
    }
    remove_unused()?;
    Ok(())
}

/// Once nothing is attached or enrolled any more, removes the maps and the pin directory,
/// so no program, link or pin is left behind.
pub fn remove_unused() -> Result<bool, Error> {
    let busy = |kind: &str| {
        std::fs::read_dir(root().join(kind))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    };
    if busy("cgroup") || busy("netns") {
        return Ok(false);
    }
    let sk_msg = root().join(SK_MSG_PIN);
    if sk_msg.exists() {
        std::fs::remove_file(&sk_msg)
            .map_err(|e| err(format!("unpinning {}", sk_msg.display()), e))?;
    }
    for m in MAPS {
        let p = root().join("maps").join(m);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| err(format!("unpinning {}", p.display()), e))?;
        }
    }
    for d in ["maps", "cgroup", "netns", ""] {
        let _ = std::fs::remove_dir(root().join(d));
    }
    Ok(true)
}

/// What `skiff ebpf status` reports.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Every pin under [`PIN_ROOT`], relative to it.
    pub pins: Vec<String>,
    /// Enrolled namespaces and their options.
    pub pods: Vec<(u64, abi::Pod)>,
    /// Counter name → total over CPUs.
    pub counters: BTreeMap<&'static str, u64>,
    /// Live entries of `skiff_orig_dst`.
    pub orig_dst_entries: usize,
    /// Inbound listeners registered for sk_lookup: (netns cookie, address family).
    pub listeners: Vec<(u64, u32)>,
    /// Sockets in `skiff_socks` (open local hops sk_msg short-circuits).
    pub sk_msg_sockets: usize,
}

/// Reads the pins, the enrolled namespaces and the counters.
pub fn status() -> Result<Status, Error> {
    let mut s = Status::default();
    let r = root();
    if !r.exists() {
        return Ok(s);
    }
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if p.is_dir() {
                walk(&p, base, out);
            } else if let Ok(rel) = p.strip_prefix(base) {
                out.push(rel.display().to_string());
            }
        }
    }
    walk(&r, &r, &mut s.pins);
    if !r.join("maps").join("skiff_pods").exists() {
        return Ok(s);
    }
    let pods = pods_map()?;
    for item in pods.iter().flatten() {
        s.pods.push(item);
    }
    s.pods.sort_by_key(|p| p.0);
    let stats: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(pinned_map("skiff_stats")?))
            .map_err(|e| err_chain("skiff_stats", &e))?;
    for (i, name) in abi::STATS.iter().enumerate() {
        let total = stats
            .get(&(i as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0);
        s.counters.insert(name, total);
    }
    let orig: BpfHashMap<MapData, abi::Tuple, abi::Orig> =
        BpfHashMap::try_from(Map::LruHashMap(pinned_map("skiff_orig_dst")?))
            .map_err(|e| err_chain("skiff_orig_dst", &e))?;
    s.orig_dst_entries = orig.keys().flatten().count();
    let listeners: SockHash<MapData, abi::ListenerKey> =
        SockHash::try_from(Map::SockHash(pinned_map("skiff_listeners")?))
            .map_err(|e| err_chain("skiff_listeners", &e))?;
    s.listeners = listeners
        .keys()
        .flatten()
        .map(|k| (k.netns, k.family))
        .collect();
    s.listeners.sort_unstable();
    // Older pins (before sk_msg) have no skiff_socks.
    if root().join("maps").join("skiff_socks").exists() {
        let socks: SockHash<MapData, abi::SockKey> =
            SockHash::try_from(Map::SockHash(pinned_map("skiff_socks")?))
                .map_err(|e| err_chain("skiff_socks", &e))?;
        s.sk_msg_sockets = socks.keys().flatten().count();
    }
    Ok(s)
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pins.is_empty() {
            return writeln!(f, "nothing attached ({PIN_ROOT} is empty)");
        }
        writeln!(f, "pinned under {PIN_ROOT}:")?;
        for p in &self.pins {
            writeln!(f, "  {p}")?;
        }
        writeln!(f, "enrolled network namespaces: {}", self.pods.len())?;
        for (cookie, p) in &self.pods {
            let families: Vec<&str> = self
                .listeners
                .iter()
                .filter(|(c, _)| c == cookie)
                .map(|(_, fam)| if *fam == 2 { "IPv4" } else { "IPv6" })
                .collect();
            let listener = if families.is_empty() {
                "not registered (start the proxy after attaching)".to_string()
            } else {
                format!("registered ({})", families.join(", "))
            };
            writeln!(
                f,
                "  netns {cookie}: outbound {} inbound {} addresses {}{}",
                p.outbound_port,
                p.inbound_port,
                describe_ips(p),
                if p.flags & abi::F_SK_MSG != 0 {
                    " sk_msg"
                } else {
                    ""
                }
            )?;
            writeln!(f, "    inbound listener: {listener}")?;
        }
        writeln!(
            f,
            "original destinations recorded: {}",
            self.orig_dst_entries
        )?;
        writeln!(f, "sk_msg sockets: {}", self.sk_msg_sockets)?;
        writeln!(f, "counters:")?;
        for (name, v) in &self.counters {
            writeln!(f, "  {name}: {v}")?;
        }
        Ok(())
    }
}

fn describe_ips(p: &abi::Pod) -> String {
    let mut s = String::new();
    for ip in p.pod_ips.iter().take(p.n_pod_ips as usize) {
        if !s.is_empty() {
            s.push(',');
        }
        let _ = write!(s, "{}", display_ip(ip));
    }
    if s.is_empty() {
        s.push('-');
    }
    s
}

/// A 16-byte address as IPv4 when it is v4-mapped.
pub fn display_ip(ip: &[u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(*ip);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Reads kernel events from the pinned ring buffer and hands each to `each`, until it
/// returns false.
pub fn follow_events(mut each: impl FnMut(&abi::Event) -> bool) -> Result<(), Error> {
    let mut rb = RingBuf::try_from(Map::RingBuf(pinned_map("skiff_events")?))
        .map_err(|e| err_chain("skiff_events", &e))?;
    loop {
        while let Some(item) = rb.next() {
            if item.len() < std::mem::size_of::<abi::Event>() {
                continue;
            }
            #[allow(unsafe_code)]
            // SAFETY: the kernel wrote a struct skiff_event; read_unaligned copes with
            // any alignment of the ring's bytes.
            let ev: abi::Event =
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<abi::Event>()) };
            if !each(&ev) {
                return Ok(());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
