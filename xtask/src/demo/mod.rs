//! `cargo xtask demo`: transparent proxying with eBPF (needs root); `cargo xtask demo --http`:
//! HTTP/1.1, h2c and TCP through skiff on loopback (no root).

mod http;
mod transparent;

use crate::Result;

pub fn run(args: &[String]) -> Result {
    match args.split_first() {
        Some((first, rest)) if first == "--http" => http::run(rest),
        _ => transparent::run(args),
    }
}

/// `cargo xtask _hold <addr>`: connects to `addr`, prints the socket's two ends, and keeps the
/// connection open until its stdin closes (the transparent demo shows the kernel's record of
/// it meanwhile).
pub fn hold(args: &[String]) -> Result {
    use std::io::{Read, Write};
    let [addr] = args else {
        crate::bail!("usage: xtask _hold <address:port>");
    };
    let addr: std::net::SocketAddr = addr.parse()?;
    let s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
    let c = crate::upstream::canonical;
    println!("{} {}", c(s.local_addr()?), c(s.peer_addr()?));
    std::io::stdout().flush()?;
    let mut rest = Vec::new();
    std::io::stdin().read_to_end(&mut rest)?;
    Ok(())
}
