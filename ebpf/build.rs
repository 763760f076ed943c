//! Builds the kernel programs with clang (`-target bpf`) so the loader can embed them.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let obj = out.join("skiff.bpf.o");
    for f in ["bpf/skiff.bpf.c", "bpf/skiff.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I/usr/include/{arch}"))
        .args(["-c", "bpf/skiff.bpf.c", "-o"])
        .arg(&obj)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("clang failed to build bpf/skiff.bpf.c ({s})"),
        Err(e) => panic!(
            "skiff's eBPF programs need clang and libbpf-dev ({clang}: {e}); \
             `cargo xtask setup` installs them (apt-get install clang libbpf-dev)"
        ),
    }
}
