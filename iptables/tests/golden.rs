//! Golden tests: for each `golden/<case>.args` (the flags, as an injection template would pass
//! them), the `--dry-run` output must equal `golden/<case>.golden`. The expected files follow
//! istio-iptables' own golden outputs for the same flags (`tools/istio-iptables/pkg/capture/
//! testdata/`, same case names), with two kinds of differences: skiff prints the TPROXY policy
//! routes after the rules, and it writes IPv6 nameservers the way Istio's resolv.conf reader
//! does (`::7f00:35`), where Istio's unit test injects the literal `::127.0.0.53`. Where Istio's
//! unit tests set the nameservers directly, the `.args` point `--resolv-conf` at a
//! `resolv-*.conf` here. `REFRESH_GOLDEN=1` rewrites them after a deliberate change.

use std::path::PathBuf;

use clap::Parser;
use skiff_iptables::{plan, Args, Config};

fn render(args_line: &str) -> String {
    let mut argv = vec!["skiff iptables".to_string()];
    argv.extend(args_line.split_whitespace().map(str::to_string));
    let args = Args::try_parse_from(&argv).unwrap_or_else(|e| panic!("{args_line}: {e}"));
    let config = Config::from_args(&args).unwrap_or_else(|e| panic!("{args_line}: {e}"));
    plan(&config).to_string()
}

#[test]
fn dry_run_output_matches_the_golden_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let refresh = std::env::var("REFRESH_GOLDEN").is_ok_and(|v| v == "1");
    let mut cases = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "args") {
            continue;
        }
        cases += 1;
        let args = std::fs::read_to_string(&path).expect("args file");
        let got = render(args.trim());
        let golden = path.with_extension("golden");
        if refresh {
            std::fs::write(&golden, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "{}:\n--- want\n{want}--- got\n{got}",
                golden.display()
            ));
        }
    }
    assert!(cases >= 20, "only {cases} golden cases");
    assert!(
        failures.is_empty(),
        "{} golden mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
