//! Link settings of the skiff binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Relative relocations packed (DT_RELR): the loader touches a few KiB of relocation table
    // at start instead of ~750 KiB, which stays out of the proxy's resident memory.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}
