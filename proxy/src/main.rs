#![forbid(unsafe_code)]
//! The `skiff` binary.

use std::process::ExitCode;

use clap::Parser;

/// glibc's malloc, with a cache of freed blocks on each worker thread.
#[global_allocator]
static ALLOCATOR: skiff_sys::alloc::Allocator = skiff_sys::alloc::Allocator;

fn main() -> ExitCode {
    skiff_sys::keep_freed_memory();
    // Installed in the CNI bin dir as `skiff-cni`, skiff is run by that name without arguments.
    if skiff_k8s::cni::invoked_as_plugin() {
        return skiff_k8s::cni::main();
    }
    let opts = skiff::cli::Options::parse();
    if let Some(skiff::cli::Command::Cni) = &opts.command {
        return skiff_k8s::cni::main();
    }
    if let Some(skiff::cli::Command::NodeAgent(args)) = &opts.command {
        return skiff_k8s::agent::main(args);
    }
    if opts.decode_config_to_stdout {
        return decode_for_parent(&opts);
    }
    if opts.discovery_decoder {
        return serve_decoder();
    }
    if let Some(skiff::cli::Command::Iptables(args)) = &opts.command {
        return match skiff_iptables::run(args) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e @ skiff_iptables::ApplyError::Validation(_)) => {
                eprintln!("skiff iptables: {e}");
                ExitCode::from(skiff_iptables::validation::VALIDATION_ERROR_CODE)
            }
            Err(e) => {
                eprintln!("skiff iptables: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(skiff::cli::Command::ValidateCapture {
        listen,
        dial,
        bind,
        timeout_ms,
    }) = &opts.command
    {
        let probe = skiff_iptables::validation::Probe {
            listen: listen.clone(),
            dial: *dial,
            bind: *bind,
            timeout: std::time::Duration::from_millis(*timeout_ms),
        };
        return match skiff_iptables::validation::run(&probe) {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(msg) => {
                eprintln!("{msg}");
                ExitCode::from(skiff_iptables::validation::VALIDATION_ERROR_CODE)
            }
        };
    }
    let filter = tracing_subscriber::EnvFilter::try_new(format!("skiff={}", opts.tracing_level()))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("skiff=info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    if let Some(skiff::cli::Command::Ebpf { command }) = &opts.command {
        return match skiff_ebpf::cli::run(command) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) if e.0.starts_with("validation failed") => {
                eprintln!("skiff ebpf: {e}");
                ExitCode::from(skiff_iptables::validation::VALIDATION_ERROR_CODE)
            }
            Err(e) => {
                eprintln!("skiff ebpf: {e}");
                ExitCode::FAILURE
            }
        };
    }
    skiff::server::run(opts)
}

/// The child side of `config::load_isolated`.
fn decode_for_parent(opts: &skiff::cli::Options) -> ExitCode {
    use std::io::Write;
    let source = skiff::config::Source {
        path: opts.config_path.clone(),
        yaml: opts.config_yaml.clone(),
        allow_unknown_fields: opts.allow_unknown_static_fields,
    };
    let mut out = Vec::new();
    match skiff::config::decode_for_parent(&source, &mut out) {
        Ok(()) => {
            if std::io::stdout().lock().write_all(&out).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let err = skiff::config::ChildError {
                path: e.path,
                message: e.message,
            };
            let _ = std::io::stdout()
                .lock()
                .write_all(&serde_json::to_vec(&err).unwrap_or_default());
            ExitCode::from(2)
        }
    }
}

/// The discovery decoder helper (see `config::discovery::Decoder`).
fn serve_decoder() -> ExitCode {
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match skiff::config::discovery::serve_decoder(stdin.lock(), &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}
