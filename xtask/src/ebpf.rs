//! `cargo xtask build-ebpf | load | unload`: the kernel programs for development.

use std::path::PathBuf;
use std::process::Command;

use crate::{bail, describe, repo_root, run_status, setup, target_dir, Result};

/// clang's flags for `ebpf/bpf/skiff.bpf.c`, as `ebpf/build.rs` passes them (a test below
/// keeps the two in step).
const CLANG_FLAGS: [&str; 6] = ["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"];

/// The object `build-ebpf` writes.
pub fn object_path() -> PathBuf {
    target_dir().join("bpf").join("skiff.bpf.o")
}

/// `cargo xtask build-ebpf`: compiles the kernel programs exactly as the skiff build does
/// (which embeds its own copy in the binary) into target/bpf/skiff.bpf.o, for
/// `bpftool prog loadall`, `llvm-objdump -S` or `bpftool btf dump file`.
pub fn build(args: &[String]) -> Result {
    if let Some(a) = args.first() {
        bail!("unexpected argument `{a}`");
    }
    setup::build_tools()?;
    let obj = object_path();
    if let Some(dir) = obj.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch = match std::env::consts::ARCH {
        "aarch64" => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    let mut cmd = Command::new(&clang);
    cmd.current_dir(repo_root().join("ebpf"))
        .args(CLANG_FLAGS)
        .arg(format!("-I/usr/include/{arch}"))
        .args(["-c", "bpf/skiff.bpf.c", "-o"])
        .arg(&obj);
    println!("(cd ebpf && {})", describe(&cmd));
    run_status(&mut cmd)?;
    println!("{}", obj.display());
    Ok(())
}

/// `cargo xtask load <args>`: `skiff ebpf attach <args>` with a freshly built skiff.
pub fn load(args: &[String]) -> Result {
    skiff_ebpf("attach", args)
}

/// `cargo xtask unload [args]`: `skiff ebpf detach <args>`; with no arguments, everything
/// (`detach --all`).
pub fn unload(args: &[String]) -> Result {
    if args.is_empty() {
        return skiff_ebpf("detach", &["--all".to_string()]);
    }
    skiff_ebpf("detach", args)
}

fn skiff_ebpf(sub: &str, args: &[String]) -> Result {
    let skiff = crate::build_skiff_path()?;
    let mut cmd = Command::new(&skiff);
    cmd.args(["ebpf", sub]).args(args);
    let words: Vec<String> = std::iter::once(skiff.display().to_string())
        .chain(["ebpf".into(), sub.into()])
        .chain(args.iter().map(|a| shell_word(a)))
        .collect();
    println!("$ {}", words.join(" "));
    run_status(&mut cmd)
}

/// `a` as a shell would need it typed (`'*'` rather than `*`).
fn shell_word(a: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_./:=,@%+-".contains(c);
    if !a.is_empty() && a.chars().all(plain) {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(shell_word("--cgroup"), "--cgroup");
        assert_eq!(shell_word("/sys/fs/cgroup/a-b"), "/sys/fs/cgroup/a-b");
        assert_eq!(shell_word("*"), "'*'");
        assert_eq!(shell_word(""), "''");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }

    #[test]
    fn clang_flags_match_the_build_script() {
        let build_rs = include_str!("../../ebpf/build.rs");
        let quoted: Vec<String> = CLANG_FLAGS.iter().map(|f| format!("\"{f}\"")).collect();
        assert!(
            build_rs.contains(&format!("[{}]", quoted.join(", "))),
            "ebpf/build.rs no longer passes {CLANG_FLAGS:?}: update CLANG_FLAGS"
        );
        for rest in [
            "-I/usr/include/{arch}",
            "\"-c\", \"bpf/skiff.bpf.c\", \"-o\"",
        ] {
            assert!(build_rs.contains(rest), "ebpf/build.rs changed: {rest}");
        }
    }
}
