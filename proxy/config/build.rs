//! Copies the Envoy descriptor set shipped inside the `envoy-types` package into OUT_DIR so the
//! crate can embed it: every Envoy v3 message, `@type` Anys included, decodes through it.
//!
//! The package is found through the version pinned in Cargo.lock and the cargo registry; when
//! that fails (a vendored or unusual layout), `cargo metadata` is asked.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let pkg = from_registry(&manifest_dir).or_else(|| from_metadata(&manifest_dir)).expect(
        "cannot find the envoy-types package (its src/generated/types.bin holds Envoy's descriptors)",
    );
    let bin = pkg.join("src/generated/types.bin");
    println!("cargo:rerun-if-changed={}", bin.display());
    let dest =
        PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("envoy_descriptors.bin");
    std::fs::copy(&bin, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", bin.display()));
}

fn from_registry(manifest_dir: &Path) -> Option<PathBuf> {
    let lock = std::fs::read_to_string(manifest_dir.parent()?.parent()?.join("Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    let version = loop {
        let line = lines.next()?;
        if line.trim() == "name = \"envoy-types\"" {
            let v = lines
                .next()?
                .trim()
                .strip_prefix("version = \"")?
                .strip_suffix('"')?
                .to_string();
            break v;
        }
    };
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .ok()
        .or_else(|| {
            std::env::var("HOME")
                .ok()
                .map(|h| PathBuf::from(h).join(".cargo"))
        })?;
    let src = home.join("registry/src");
    for entry in std::fs::read_dir(src).ok()?.flatten() {
        let candidate = entry.path().join(format!("envoy-types-{version}"));
        if candidate.join("src/generated/types.bin").exists() {
            return Some(candidate);
        }
    }
    None
}

fn from_metadata(manifest_dir: &Path) -> Option<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(manifest_dir.join("Cargo.toml"))
        .output()
        .ok()?;
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let pkg = meta["packages"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == "envoy-types")?;
    Some(
        PathBuf::from(pkg["manifest_path"].as_str()?)
            .parent()?
            .to_path_buf(),
    )
}
