//! `cargo xtask test`: what CI runs. Setup, lints, a debug skiff, the whole suite, then each
//! fuzz target for a bounded time from its seed corpus.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use crate::{cargo, envoy_bin, repo_root, run_status, setup, Result};

/// Seconds each fuzz target runs in CI (`SKIFF_FUZZ_SECONDS`, 0 skips fuzzing).
const FUZZ_SECONDS: u64 = 20;

pub fn run() -> Result {
    setup::run()?;
    // A clean clone gains nothing from incremental state, and for a hundred test binaries it
    // is gigabytes of disk.
    std::env::set_var("CARGO_INCREMENTAL", "0");
    let skip_lint = std::env::var("SKIFF_SKIP_LINT").is_ok_and(|v| !v.is_empty() && v != "0");
    if skip_lint {
        println!("SKIFF_SKIP_LINT set: skipping rustfmt and clippy");
    } else {
        step("cargo fmt --all -- --check");
        run_status(cargo().args(["fmt", "--all", "--", "--check"]))?;
        step("cargo clippy --workspace --all-targets -- -D warnings");
        run_status(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    step("cargo build -p skiff");
    let skiff = crate::build_skiff_path()?;
    let envoy = envoy_bin();
    step(&format!(
        "SKIFF_BIN={} ENVOY_BIN={} cargo test --workspace --no-fail-fast",
        skiff.display(),
        envoy.display()
    ));
    run_status(
        cargo()
            // Every test binary runs, so that one failure does not hide another.
            .args(["test", "--workspace", "--no-fail-fast"])
            .env("SKIFF_BIN", &skiff)
            .env("ENVOY_BIN", &envoy),
    )?;
    fuzz()
}

/// Runs every target under `fuzz/fuzz_targets` for a bounded time (cargo-fuzz on the nightly
/// toolchain), one per CPU at a time (libFuzzer runs on one thread; builds wait on cargo's
/// lock). New inputs go to a scratch directory; the seed corpus in the repository is read only.
/// Each run's output goes to a file: its last line (libFuzzer's count of runs) is printed when
/// it passes, its last 200 lines when it fails.
pub fn fuzz() -> Result {
    let seconds = std::env::var("SKIFF_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(FUZZ_SECONDS);
    if seconds == 0 {
        println!("SKIFF_FUZZ_SECONDS=0: skipping the fuzz targets");
        return Ok(());
    }
    let dir = repo_root().join("fuzz");
    let mut targets: Vec<String> = std::fs::read_dir(dir.join("fuzz_targets"))
        .map_err(|e| crate::Error(format!("fuzz/fuzz_targets: {e}")))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".rs").map(str::to_string)
        })
        .collect();
    targets.sort();
    targets.reverse(); // taken from the end
    let queue = Mutex::new(targets);
    let failed = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let Some(t) = queue.lock().ok().and_then(|mut q| q.pop()) else {
                    return;
                };
                if let Err(e) = fuzz_one(&dir, &t, seconds) {
                    println!("{e:?}");
                    if let Ok(mut f) = failed.lock() {
                        f.push(t);
                    }
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap_or_default();
    if !failed.is_empty() {
        crate::bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

/// One fuzz target for `seconds`, its output in a scratch file.
fn fuzz_one(dir: &Path, t: &str, seconds: u64) -> Result {
    step(&format!(
        "cargo fuzz run {t} (nightly, -max_total_time={seconds})"
    ));
    let scratch = std::env::temp_dir().join(format!("skiff-fuzz-{t}"));
    std::fs::create_dir_all(&scratch)
        .map_err(|e| crate::Error(format!("{}: {e}", scratch.display())))?;
    let log = std::env::temp_dir().join(format!("skiff-fuzz-{t}.log"));
    let out = std::fs::File::create(&log)?;
    let seeds = dir.join("corpus").join(t);
    // Through rustup: inside `cargo xtask`, `cargo` on PATH may be the stable toolchain's own.
    let mut cmd = Command::new("rustup");
    cmd.current_dir(dir)
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["run", "nightly", "cargo", "fuzz", "run", t])
        .arg(&scratch)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .stdout(out.try_clone()?)
        .stderr(out);
    let result = run_status(&mut cmd);
    remove_fuzz_binary(dir, t);
    let lines = if result.is_ok() { 1 } else { 200 };
    println!(
        "--- {t}: {}\n{}",
        if result.is_ok() { "ok" } else { "FAILED" },
        crate::process::tail(&log, lines)
    );
    let _ = std::fs::remove_file(&log);
    result
}

/// Deletes a fuzz target's executable once it has run: each is over 150 MB with its sanitizers,
/// and thirty of them fill a small disk. The libraries they share stay for the next target.
fn remove_fuzz_binary(fuzz_dir: &Path, target: &str) {
    let release = fuzz_dir
        .join("target")
        .join(std::env::consts::ARCH.to_string() + "-unknown-linux-gnu")
        .join("release");
    let _ = std::fs::remove_file(release.join(target));
    let prefix = format!("{target}-");
    if let Ok(entries) = std::fs::read_dir(release.join("deps")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_binary = name
                .strip_prefix(&prefix)
                .is_some_and(|hash| hash.chars().all(|c| c.is_ascii_hexdigit()));
            if is_binary {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn step(what: &str) {
    println!("==> {what}");
}
