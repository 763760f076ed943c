//! The `skiff` binary.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let opts = skiff::cli::Options::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(format!("skiff={}", opts.tracing_level()))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("skiff=info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    skiff::server::run(opts)
}
