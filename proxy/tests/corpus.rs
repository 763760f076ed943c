//! Real Envoy configurations from public projects (the corpus beside the repository, with
//! Envoy 1.40's verdict on each): every one Envoy accepts is loaded as `skiff --mode validate`
//! would load it, and the result recorded with the reason for each refusal. The configurations
//! skiff accepted before (`tests/corpus_accepted.txt`) must still load: the number only goes up.
//! The full report goes to `target/corpus-report.tsv`, a summary of the refusals to the test's
//! output. Each refusal's message is kept in `tests/corpus_refusals.tsv`: a configuration still
//! refused must be refused with the same words (path and reason) unless the file is regenerated
//! on purpose (`SKIFF_UPDATE_REFUSALS=1`), so a change to translation cannot lose an error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn corpus_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SKIFF_CORPUS") {
        return Some(PathBuf::from(d));
    }
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus");
    d.is_dir().then_some(d)
}

/// A certificate and its key, for configurations that name certificate files.
fn pki() -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["example.com".to_string()]).expect("params");
    let cert = params.self_signed(&key).expect("cert");
    (cert.pem(), key.serialize_pem())
}

/// Creates what a configuration needs (`files_to_generate`) inside `scratch`, rewriting the
/// configuration's paths to point there.
fn prepare(text: &str, needs: &str, scratch: &Path, pki: &(String, String)) -> String {
    let mut text = text.to_string();
    for need in needs.split(';').map(str::trim).filter(|n| !n.is_empty()) {
        let mut parts = need.split_whitespace();
        let (Some(kind), Some(path)) = (parts.next(), parts.next()) else {
            continue;
        };
        let target = scratch.join(path.trim_start_matches('/'));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        match kind {
            "cert" => std::fs::write(&target, &pki.0).expect("write cert"),
            "key" => std::fs::write(&target, &pki.1).expect("write key"),
            "dir" => std::fs::create_dir_all(&target).expect("mkdir"),
            _ => std::fs::write(&target, "{}").expect("write file"),
        }
        text = text.replace(path, &target.display().to_string());
    }
    text
}

/// A refusal's path without indices and map keys, to group refusals by field.
fn field_of(err: &str) -> String {
    let (path, msg) = err.split_once(": ").unwrap_or((err, ""));
    let mut out = String::new();
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    let last = out.rsplit('.').take(2).collect::<Vec<_>>();
    let short: Vec<&str> = last.into_iter().rev().collect();
    let msg = if msg.starts_with("unsupported") {
        "unsupported".to_string()
    } else {
        msg.chars().take(60).collect()
    };
    format!("{} ({msg})", short.join("."))
}

#[test]
fn corpus_configurations_that_envoy_accepts_load_or_are_refused_with_a_reason() {
    let Some(dir) = corpus_dir() else {
        eprintln!("the corpus (../shared/corpus) is not here: nothing to check");
        return;
    };
    let verdicts = std::fs::read_to_string(dir.join("VERDICTS.tsv")).expect("VERDICTS.tsv");
    let scratch = std::env::temp_dir().join(format!("skiff-corpus-{}", std::process::id()));
    let pki = pki();
    let mut accepted = BTreeSet::new();
    let mut report = String::from("file\tskiff\treason\n");
    let mut refused: BTreeMap<String, String> = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut only: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0;
    for (i, line) in verdicts.lines().skip(1).enumerate() {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.get(2) != Some(&"ok") {
            continue;
        }
        total += 1;
        let file = cols[0];
        let needs = cols.get(4).copied().unwrap_or("");
        let Ok(text) = std::fs::read_to_string(dir.join(file)) else {
            continue;
        };
        let text = prepare(&text, needs, &scratch.join(i.to_string()), &pki);
        match skiff::config::load_text(&text) {
            Ok(_) => {
                accepted.insert(file.to_string());
                report.push_str(&format!("{file}\tok\t\n"));
            }
            Err(e) => {
                // Every field that blocks this file, so the report ranks what to build next.
                let all = skiff::config::refusals(&text);
                let fields: BTreeSet<String> =
                    all.iter().map(|e| field_of(&e.to_string())).collect();
                for f in &fields {
                    *reasons.entry(f.clone()).or_default() += 1;
                }
                if fields.len() == 1 {
                    *only
                        .entry(fields.iter().next().cloned().unwrap_or_default())
                        .or_default() += 1;
                }
                let e = e.to_string().replace(['\t', '\n'], " ");
                refused.insert(file.to_string(), e.clone());
                report.push_str(&format!("{file}\trefused\t{}\n", e.replace('\t', " ")));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/corpus-report.tsv");
    let _ = std::fs::write(&out, &report);
    let mut top: Vec<(&String, &usize)> = reasons.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    eprintln!(
        "corpus: skiff loads {} of the {total} configurations Envoy 1.40 accepts (report: {})",
        accepted.len(),
        out.display()
    );
    eprintln!("configurations blocked by each field (and blocked by it alone):");
    for (reason, n) in top.iter().take(60) {
        eprintln!(
            "  {n:4} {:4}  {reason}",
            only.get(*reason).copied().unwrap_or(0)
        );
    }
    let golden_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus_refusals.tsv");
    if std::env::var_os("SKIFF_UPDATE_REFUSALS").is_some() {
        let text: String = refused.iter().map(|(f, e)| format!("{f}\t{e}\n")).collect();
        std::fs::write(&golden_path, text).expect("write corpus_refusals.tsv");
    }
    let golden = std::fs::read_to_string(&golden_path).unwrap_or_default();
    let mut changed = Vec::new();
    for line in golden.lines() {
        let Some((file, was)) = line.split_once('\t') else {
            continue;
        };
        if let Some(now) = refused.get(file) {
            if now != was {
                changed.push(format!("{file}:\n  was: {was}\n  now: {now}"));
            }
        }
    }
    assert!(
        changed.is_empty(),
        "refusals worded differently (regenerate with SKIFF_UPDATE_REFUSALS=1 if intended):\n{}",
        changed.join("\n")
    );
    let listed = include_str!("corpus_accepted.txt");
    let listed: BTreeSet<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let lost: Vec<&&str> = listed.iter().filter(|f| !accepted.contains(**f)).collect();
    assert!(
        lost.is_empty(),
        "configurations skiff loaded before are refused now: {lost:?} (see {})",
        out.display()
    );
    let new: Vec<&String> = accepted
        .iter()
        .filter(|f| !listed.contains(f.as_str()))
        .collect();
    if !new.is_empty() {
        eprintln!(
            "newly loading (add them to proxy/tests/corpus_accepted.txt):\n  {}",
            new.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
}
