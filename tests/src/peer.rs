//! A test peer run as a process of its own (`rls-server`, `authz-server`): it prints one JSON
//! line when it is ready (its ports), then one per event, which are kept for the test to read.

use std::sync::{Arc, Mutex};

use tokio::io::AsyncBufReadExt;

/// A running peer and the lines it printed after its first.
pub struct Peer {
    /// Its first line, parsed.
    pub ready: serde_json::Value,
    lines: Arc<Mutex<Vec<String>>>,
    _child: tokio::process::Child,
}

impl Peer {
    /// Starts `bin` with `args`, and waits for its first line.
    pub async fn start(bin: &str, args: &[&str]) -> Peer {
        let mut child = tokio::process::Command::new(bin)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        let mut out = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = out.next_line().await.expect("read").expect("a ready line");
        let ready = serde_json::from_str(&first).expect("a JSON ready line");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let keep = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = out.next_line().await {
                keep.lock().unwrap_or_else(|e| e.into_inner()).push(l);
            }
        });
        Peer {
            ready,
            lines,
            _child: child,
        }
    }

    /// The port its ready line gives under `key`.
    pub fn port(&self, key: &str) -> u16 {
        self.ready[key].as_u64().expect("a port") as u16
    }

    /// The lines printed after the first `n`, once there are some or `wait` has passed (a
    /// peer's line reaches the test a moment after its answer reaches the proxy).
    pub async fn lines_after(&self, n: usize, wait: std::time::Duration) -> Vec<String> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let lines = self.lines();
            if lines.len() > n || tokio::time::Instant::now() >= until {
                return lines.get(n..).map(<[String]>::to_vec).unwrap_or_default();
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
