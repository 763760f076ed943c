//! `cargo xtask build`: the release binary, optimized with a profile of the benchmark's loads.
//!
//! Three steps, as LLVM's profile-guided optimization goes:
//!
//! 1. an instrumented build (`-Cprofile-generate`) into `target/pgo-gen`;
//! 2. training: the instrumented binary carries the five ordinary bench rows' loads for a few
//!    seconds each, and writes its counters when it exits; `llvm-profdata` (rustup's
//!    `llvm-tools`, the LLVM of the compiler itself) merges them;
//! 3. the release build with `-Cprofile-use` into `target/pgo`, copied to `target/pgo/skiff`.
//!
//! The merged profile is kept under a hash of the sources, the compiler and `RUSTFLAGS`, so
//! building again without changes skips the first two steps. Both builds name the host target
//! explicitly, so the flags reach only what runs in the binary, not build scripts and proc
//! macros.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{bail, cargo, repo_root, run_status, setup, target_dir, Error, Result};

/// What the profile depends on: everything compiled into skiff, and the training's
/// configuration and load generators.
const SOURCES: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    "proxy",
    "ebpf",
    "iptables",
    "k8s-agent",
    "vendor",
    "xtask/src/bench/config.rs",
    "xtask/src/bench/load.rs",
];

/// Builds the profile-optimized release binary and returns its path.
pub fn build() -> Result<PathBuf> {
    setup::build_tools()?;
    let version = rustc_version()?;
    let host = host_triple(&version)?;
    let profdata = llvm_profdata(&host)?;
    let dir = target_dir().join("pgo");
    fs::create_dir_all(&dir)?;
    // The compiler and the flags the user gives it shape the code as much as the sources do.
    let compiler = format!(
        "{version}RUSTFLAGS={}",
        std::env::var("RUSTFLAGS").unwrap_or_default()
    );
    let key = source_key(&repo_root(), SOURCES, &compiler)?;
    let profile = dir.join(format!("skiff-{key:016x}.profdata"));
    if profile.is_file() {
        eprintln!("pgo: the profile of these sources is {}", profile.display());
    } else {
        make_profile(&host, &profdata, &dir, &profile)?;
    }

    eprintln!("pgo: release build with the profile");
    let mut cmd = cargo_build(&host, &dir, &format!("-Cprofile-use={}", profile.display()));
    run_status(&mut cmd)?;
    let built = dir.join(&host).join("release/skiff");
    let out = dir.join("skiff");
    // Replace rather than overwrite, so a running copy of the old binary is left alone.
    let tmp = dir.join("skiff.tmp");
    fs::copy(&built, &tmp).map_err(|e| Error(format!("cannot copy {}: {e}", built.display())))?;
    fs::rename(&tmp, &out)?;
    Ok(out)
}

/// Steps 1 and 2: the instrumented build, its training, and the merged profile at `profile`.
fn make_profile(host: &str, profdata: &Path, dir: &Path, profile: &Path) -> Result {
    let raw = dir.join("raw");
    let _ = fs::remove_dir_all(&raw);
    fs::create_dir_all(&raw)?;

    eprintln!("pgo: instrumented build");
    let gen = target_dir().join("pgo-gen");
    let mut cmd = cargo_build(host, &gen, &format!("-Cprofile-generate={}", raw.display()));
    run_status(&mut cmd)?;

    eprintln!("pgo: training on the bench loads");
    crate::bench::train(&gen.join(host).join("release/skiff"))?;
    let raws: Vec<PathBuf> = fs::read_dir(&raw)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "profraw"))
        .collect();
    if raws.is_empty() {
        bail!(
            "the instrumented skiff wrote no profile into {}",
            raw.display()
        );
    }

    let tmp = profile.with_extension("profdata.tmp");
    run_status(
        Command::new(profdata)
            .arg("merge")
            .arg("-o")
            .arg(&tmp)
            .args(&raws),
    )?;
    // Profiles of older sources are of no further use.
    for e in fs::read_dir(dir)?.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "profdata") {
            let _ = fs::remove_file(p);
        }
    }
    fs::rename(&tmp, profile)?;
    let _ = fs::remove_dir_all(&raw);
    Ok(())
}

/// `cargo build --release -p skiff --target HOST` into `target_dir`, with `flag` added to the
/// compiler flags.
fn cargo_build(host: &str, target_dir: &Path, flag: &str) -> Command {
    let mut cmd = cargo();
    let mut flags = std::env::var("RUSTFLAGS").unwrap_or_default();
    if !flags.is_empty() {
        flags.push(' ');
    }
    flags.push_str(flag);
    cmd.args(["build", "--release", "-p", "skiff", "--target", host])
        .env("CARGO_TARGET_DIR", target_dir)
        .env("RUSTFLAGS", flags)
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    cmd
}

fn rustc() -> Command {
    Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
}

/// `rustc -vV`: the compiler's version, commit and host.
fn rustc_version() -> Result<String> {
    let out = rustc()
        .arg("-vV")
        .output()
        .map_err(|e| Error(format!("cannot run rustc: {e}")))?;
    if !out.status.success() {
        bail!("rustc -vV failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The host target named in `rustc -vV`'s output.
fn host_triple(v: &str) -> Result<String> {
    match v.lines().find_map(|l| l.strip_prefix("host: ")) {
        Some(h) => Ok(h.trim().to_string()),
        None => bail!("no host in `rustc -vV`:\n{v}"),
    }
}

/// The `llvm-profdata` of the compiler's own LLVM (rustup's `llvm-tools` component), installed
/// if missing: a profile must be read by the LLVM that wrote it.
fn llvm_profdata(host: &str) -> Result<PathBuf> {
    let out = rustc().args(["--print", "sysroot"]).output()?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let tool = sysroot
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-profdata");
    if !tool.is_file() {
        let mut cmd = Command::new("rustup");
        cmd.args(["component", "add", "llvm-tools"]);
        run_status(&mut cmd)
            .map_err(|e| Error(format!("{e:?} (profile-guided builds need it)")))?;
    }
    if !tool.is_file() {
        bail!(
            "{} is missing after `rustup component add llvm-tools`",
            tool.display()
        );
    }
    Ok(tool)
}

/// A hash of every file under `sources` (relative to `root`; paths and contents, in sorted
/// order) and of `compiler`.
fn source_key(root: &Path, sources: &[&str], compiler: &str) -> Result<u64> {
    let mut files = Vec::new();
    for s in sources {
        collect(&root.join(s), &mut files)?;
    }
    files.sort();
    let mut h = DefaultHasher::new();
    h.write(compiler.as_bytes());
    for f in &files {
        let rel = f.strip_prefix(root).unwrap_or(f);
        h.write(rel.to_string_lossy().as_bytes());
        h.write_u8(0);
        h.write(&fs::read(f)?);
    }
    Ok(h.finish())
}

/// Every file under `path` (itself if it is a file), skipping build output.
fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result {
    if path.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    for e in fs::read_dir(path).map_err(|e| Error(format!("{}: {e}", path.display())))? {
        let p = e?.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            collect(&p, out)?;
        } else if p.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_source_key_follows_the_sources_and_the_compiler_but_not_build_output() {
        let dir = crate::process::TempDir::new("pgo-key").unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("src/target")).unwrap();
        fs::write(root.join("src/a.rs"), "fn a() {}").unwrap();
        fs::write(root.join("Cargo.lock"), "lock").unwrap();
        let sources = &["src", "Cargo.lock"];
        let key = |compiler: &str| source_key(root, sources, compiler).unwrap();
        let k = key("rustc 1");
        assert_eq!(k, key("rustc 1"));
        assert_ne!(k, key("rustc 2"));

        fs::write(root.join("src/target/out"), "build output").unwrap();
        assert_eq!(k, key("rustc 1"));

        fs::write(root.join("src/a.rs"), "fn a() { }").unwrap();
        assert_ne!(k, key("rustc 1"));
        fs::write(root.join("src/a.rs"), "fn a() {}").unwrap();
        assert_eq!(k, key("rustc 1"));

        // The same contents under another name are another source.
        fs::rename(root.join("src/a.rs"), root.join("src/b.rs")).unwrap();
        assert_ne!(k, key("rustc 1"));
    }
}
