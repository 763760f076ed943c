//! What the resource monitors read: the allocator's own count of the bytes it has handed out
//! (`fixed_heap`), and the memory use and limit of the process's cgroup (`cgroup_memory`).

use std::path::{Path, PathBuf};

/// Bytes the allocator has handed out and not had back: glibc's `mallinfo2`, its arenas'
/// chunks in use plus its directly mapped ones. This is the count Envoy's `fixed_heap` reads
/// from its own allocator (`fixed_heap_use_allocated`).
pub fn heap_in_use() -> u64 {
    skiff_sys::heap_info().in_use
}

/// Free bytes the allocator keeps (in its arenas) rather than returning to the system.
pub fn heap_free() -> u64 {
    skiff_sys::heap_info().free
}

/// Gives the allocator's free memory back to the system (`shrink_heap`).
pub fn release_free_memory() {
    skiff_sys::release_free_memory()
}

/// The pressure written in an injected monitor's file: a number from 0 to 1, as Envoy's
/// `injected_resource` reads it.
pub fn injected_pressure(path: &Path) -> Result<f64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_pressure(&text)
}

/// The pressure an injected monitor's file says (Envoy's messages for what it refuses).
pub fn parse_pressure(text: &str) -> Result<f64, String> {
    let p: f64 = text
        .trim()
        .parse()
        .map_err(|_| "failed to parse injected resource pressure".to_string())?;
    if !(0.0..=1.0).contains(&p) {
        return Err("pressure out of range".into());
    }
    Ok(p)
}

/// Memory of one cgroup: what it uses and its limit, if it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupMemory {
    /// `memory.current` (v2) or `memory.usage_in_bytes` (v1).
    pub usage: u64,
    /// `memory.max` (v2) or `memory.limit_in_bytes` (v1); none when unlimited.
    pub limit: Option<u64>,
}

/// The memory of the cgroup this process is in now: the unified hierarchy's when it has the
/// memory controller, else the v1 memory hierarchy's.
pub fn cgroup_memory() -> std::io::Result<CgroupMemory> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup")?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dirs = cgroup_dirs(&cgroups, &mounts);
    if let Some(dir) = &dirs.v2 {
        if dir.join("memory.current").exists() {
            let usage = read_number(&dir.join("memory.current"))?;
            let limit = read_limit(&dir.join("memory.max"))?;
            return Ok(CgroupMemory { usage, limit });
        }
    }
    if let Some(dir) = &dirs.v1 {
        let usage = read_number(&dir.join("memory.usage_in_bytes"))?;
        let limit = read_limit(&dir.join("memory.limit_in_bytes"))?;
        return Ok(CgroupMemory { usage, limit });
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "no memory cgroup for this process",
    ))
}

fn read_number(p: &Path) -> std::io::Result<u64> {
    let s = std::fs::read_to_string(p)?;
    s.trim().parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: not a number", p.display()),
        )
    })
}

/// A limit: `max` or a v1 "unlimited" value (the largest page-aligned i64) is none.
fn read_limit(p: &Path) -> std::io::Result<Option<u64>> {
    let s = std::fs::read_to_string(p)?;
    let s = s.trim();
    if s == "max" {
        return Ok(None);
    }
    let n: u64 = s.parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: not a limit", p.display()),
        )
    })?;
    Ok((n < (1 << 62)).then_some(n))
}

/// The directories of this process's memory cgroup.
#[derive(Debug, Default, PartialEq)]
struct CgroupDirs {
    v2: Option<PathBuf>,
    v1: Option<PathBuf>,
}

/// Finds the process's cgroup directories from `/proc/self/cgroup` and `/proc/self/mountinfo`
/// (a mount's root is taken off the cgroup's path, as inside a container).
fn cgroup_dirs(cgroups: &str, mountinfo: &str) -> CgroupDirs {
    let mut out = CgroupDirs::default();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            out.v2 = mount_of(mountinfo, |fstype, _| fstype == "cgroup2")
                .map(|(root, at)| join(&at, &root, path));
        } else if controllers.split(',').any(|c| c == "memory") {
            out.v1 = mount_of(mountinfo, |fstype, opts| {
                fstype == "cgroup" && opts.split(',').any(|o| o == "memory")
            })
            .map(|(root, at)| join(&at, &root, path));
        }
    }
    out
}

/// The first mount whose filesystem type and super options `pick` takes: its root and mount
/// point.
fn mount_of(mountinfo: &str, pick: impl Fn(&str, &str) -> bool) -> Option<(String, PathBuf)> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        let mut r = right.split(' ');
        let fstype = r.next()?;
        let _source = r.next();
        let opts = r.next().unwrap_or("");
        if !pick(fstype, opts) {
            return None;
        }
        Some((fields.get(3)?.to_string(), PathBuf::from(fields.get(4)?)))
    })
}

fn join(mount_point: &Path, root: &str, path: &str) -> PathBuf {
    let rel = path.strip_prefix(root).unwrap_or(path);
    mount_point.join(rel.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_directories_come_from_the_process_files() {
        let mounts = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
35 25 0:31 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
36 25 0:32 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
";
        let cgroups = "9:pids:/\n4:memory:/a/b\n0::/c\n";
        assert_eq!(
            cgroup_dirs(cgroups, mounts),
            CgroupDirs {
                v2: Some(PathBuf::from("/sys/fs/cgroup/unified/c")),
                v1: Some(PathBuf::from("/sys/fs/cgroup/memory/a/b")),
            }
        );
        // Inside a container the mount's root is the container's cgroup.
        let mounts = "40 30 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup_dirs("0::/kubepods/pod1/x\n", mounts).v2,
            Some(PathBuf::from("/sys/fs/cgroup/x"))
        );
    }

    #[test]
    fn injected_pressure_is_a_number_from_zero_to_one() {
        assert_eq!(parse_pressure("0.95\n"), Ok(0.95));
        assert_eq!(parse_pressure(" 1 "), Ok(1.0));
        assert_eq!(parse_pressure("1.5"), Err("pressure out of range".into()));
        assert_eq!(parse_pressure("NaN"), Err("pressure out of range".into()));
        assert!(parse_pressure("high").is_err());
    }

    #[test]
    fn the_heap_count_follows_allocations() {
        // Other tests allocate and free on their own threads meanwhile, so the
        // comparisons leave 16 MiB of slack around a 64 MiB block.
        const BIG: u64 = 64 << 20;
        const SLACK: u64 = 16 << 20;
        let before = heap_in_use();
        let big = vec![1u8; BIG as usize];
        let during = heap_in_use();
        assert!(during + SLACK >= before + BIG, "{before} {during}");
        drop(big);
        let after = heap_in_use();
        assert!(after + BIG <= during + SLACK, "{during} {after}");
    }

    #[test]
    fn this_process_has_a_memory_cgroup_reading() {
        // Every Linux process is in some cgroup; the reading works wherever the memory
        // controller is mounted (v1 or v2).
        if let Ok(m) = cgroup_memory() {
            assert!(m.usage > 0);
        }
    }
}
