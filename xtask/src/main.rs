//! `cargo xtask …`: the project's developer and CI tasks.
//!
//! Kept std-only so it builds in seconds on a small machine.

#![forbid(unsafe_code)]

mod bench;
mod ci;
mod demo;
mod ebpf;
mod http;
mod pgo;
mod pod;
mod process;
mod setup;
mod upstream;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  setup                 install missing tools (apt packages, Envoy 1.40 into .venv)
  test                  setup, lint, build skiff and run the whole test suite, then the fuzz targets
  fuzz                  only the fuzz targets, each for SKIFF_FUZZ_SECONDS (default 20)
                        (SKIFF_SKIP_LINT=1 skips clippy and rustfmt)
  build                 build the release skiff binary, optimized with a profile of the
                        bench's loads, into target/pgo/skiff (an instrumented build, a minute
                        of training, the release build; the profile is kept until the
                        sources change). `cargo build --release` is the same without profile
  build-ebpf            compile ebpf/bpf/skiff.bpf.c as the skiff build does, into
                        target/bpf/skiff.bpf.o (for bpftool prog loadall, llvm-objdump)
  load ARGS...          build skiff and run `skiff ebpf attach ARGS...` (root), e.g.
                        load --cgroup /sys/fs/cgroup/my-pod --netns /var/run/netns/my-pod -i '*' -b '*'
  unload [ARGS...]      build skiff and run `skiff ebpf detach ARGS...` (root);
                        with no arguments `detach --all`: everything skiff attached
  demo [--keep]         transparent proxying with eBPF (root): a pod and a remote host in
                        network namespaces, `skiff ebpf attach`, skiff in the pod as uid 1337
                        on examples/sidecar.yaml, outbound and inbound requests through it,
                        the bpftool view, then everything removed again
      --keep            leave the pod running until Enter
  demo --http [options] HTTP/1.1, h2c and TCP proxying on loopback (no root): skiff on
                        examples/demo.yaml in front of a built-in upstream
      --keep            leave it running until Ctrl-C
      --port-offset N   add N to every port of the demo (if 9901/10000/10001/18080 are taken)
      --bin PATH        run this Envoy-compatible binary instead of skiff (e.g. Envoy)
  bench [options]       direct vs skiff vs Envoy 1.40 (see benchmarking notes in BENCHMARKS.md)
      --reps N          repetitions, alternating the proxies (default 3)
      --duration S      seconds per measurement (default 10)
      --rows LIST       comma-separated subset of: h1,h1-64k,h2,close,tcp,update,scale,
                        xds-scale (and, as root, sidecar-h1,sidecar-close)
      --skiff PATH      use this skiff binary instead of `cargo xtask build`'s
      --baseline PATH   also measure this skiff binary, right after the other in every rep,
                        and print the first against it (the median of each rep's ratio);
                        a tuning field it refuses is dropped for every proxy
      --no-skiff        measure only direct and Envoy
      --write           rewrite BENCHMARKS.md with the results
";

/// An error carrying a message for the operator.
///
/// Deliberately not `Display`, so that any `Display` error converts into it with `?`.
pub struct Error(pub String);

impl<E: std::fmt::Display> From<E> for Error {
    fn from(e: E) -> Self {
        Error(e.to_string())
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub type Result<T = ()> = std::result::Result<T, Error>;

/// Returns early with an [`Error`] built like `format!`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::Error(format!($($arg)*)))
    };
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match cmd.as_str() {
        "setup" => no_args(rest).and_then(|()| setup::run()),
        "test" => no_args(rest).and_then(|()| ci::run()),
        "fuzz" => no_args(rest).and_then(|()| ci::fuzz()),
        "build" => no_args(rest).and_then(|()| {
            let bin = pgo::build()?;
            println!("built {}", bin.display());
            Ok(())
        }),
        "build-ebpf" => ebpf::build(rest),
        "load" => ebpf::load(rest),
        "unload" => ebpf::unload(rest),
        "demo" => demo::run(rest),
        // Helpers the demo starts inside its namespaces; not for people.
        "_serve" => upstream::serve_forever(rest),
        "_hold" => demo::hold(rest),
        "_reap" => pod::reap(rest),
        "bench" => bench::run(rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprintln!("unknown command `{other}`\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {cmd}: error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

fn no_args(rest: &[String]) -> Result {
    if let Some(a) = rest.first() {
        bail!("unexpected argument `{a}`");
    }
    Ok(())
}

/// The workspace root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `cargo`, the same one that runs this task.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(repo_root());
    cmd
}

/// Runs a command with inherited output; fails if it does not exit 0.
pub fn run_status(cmd: &mut Command) -> Result {
    let status = cmd
        .status()
        .map_err(|e| Error(format!("cannot run {cmd:?}: {e}")))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

/// A short human form of a command line.
pub fn describe(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    // Cargo's full toolchain path only adds noise.
    let mut s = if program.file_name().is_some_and(|f| f == "cargo") {
        "cargo".to_string()
    } else {
        program.to_string_lossy().into_owned()
    };
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Builds the debug `skiff` binary (what the tests and demos run) and returns its absolute
/// path. The release binary is [`pgo::build`]'s.
pub fn build_skiff_path() -> Result<PathBuf> {
    setup::build_tools()?;
    run_status(cargo().args(["build", "-p", "skiff"]))?;
    let bin = target_dir().join("debug").join("skiff");
    if !bin.is_file() {
        bail!("the build succeeded but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// Cargo's target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                repo_root().join(d)
            }
        }
        None => repo_root().join("target"),
    }
}

/// The Envoy binary: `ENVOY_BIN` if set, else the one `setup` put in `.venv`.
pub fn envoy_bin() -> PathBuf {
    match std::env::var_os("ENVOY_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join(".venv/bin/envoy"),
    }
}
