//! `cargo xtask test`: what CI runs. Setup, lints, a debug skiff, then the whole suite.

use crate::{cargo, envoy_bin, run_status, setup, Profile, Result};

pub fn run() -> Result {
    setup::run()?;
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
    let skiff = crate::build_skiff_path(Profile::Debug)?;
    let envoy = envoy_bin();
    step(&format!(
        "SKIFF_BIN={} ENVOY_BIN={} cargo test --workspace",
        skiff.display(),
        envoy.display()
    ));
    run_status(
        cargo()
            .args(["test", "--workspace"])
            .env("SKIFF_BIN", &skiff)
            .env("ENVOY_BIN", &envoy),
    )
}

fn step(what: &str) {
    println!("==> {what}");
}
