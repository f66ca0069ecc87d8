//! Secrets hygiene, over the whole suite: no log that Keel wrote during the
//! run — its processes' output and the in-process apps' `tracing` — holds
//! a password, token, API key, 2FA code or signing key that a test used.
//! The test command runs this after everything else, on the log directory
//! (`KEEL_TEST_LOG_DIR`) the rest of the run filled.

use std::{collections::BTreeSet, path::PathBuf};

use aho_corasick::AhoCorasick;

/// Fewer secrets than this means the recording broke, not that the suite is clean.
const MIN_SECRETS: usize = 200;

fn files(dir: &PathBuf, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| keep(&n.to_string_lossy())))
        .collect();
    found.sort();
    found
}

/// Whether the match at `start..end` of `text` stands alone: a short
/// all-digit secret (a 2FA code) inside a longer number — a timestamp's
/// microseconds, a byte count — is no leak.
fn stands_alone(text: &[u8], start: usize, end: usize) -> bool {
    let joined = |i: Option<&u8>| i.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'.');
    !joined(start.checked_sub(1).and_then(|i| text.get(i))) && !joined(text.get(end))
}

#[test]
fn the_suite_logged_no_secret_its_tests_used() {
    let dir = keel_testing::log_dir().expect(
        "KEEL_TEST_LOG_DIR is unset: this test checks the logs of a whole run, \
         and deploy/local/test.sh runs it last",
    );
    let mut secrets = BTreeSet::new();
    for file in files(&dir, |n| n.starts_with("secrets-")) {
        secrets.extend(
            std::fs::read_to_string(&file)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .filter(|s| s.len() >= 6),
        );
    }
    let secrets: Vec<String> = secrets.into_iter().collect();
    assert!(
        secrets.len() >= MIN_SECRETS,
        "only {} secrets recorded in {}: did the suite run first?",
        secrets.len(),
        dir.display()
    );
    // Keel's own logs; the SMTP server, Redis and PostgreSQL are peers, not Keel.
    let logs = files(&dir, |n| {
        n.ends_with(".log") && (n.starts_with("keel-") || n.starts_with("in-process-"))
    });
    let searcher = AhoCorasick::new(&secrets).unwrap();
    let (mut bytes, mut leaks) = (0, Vec::new());
    for log in &logs {
        let text = std::fs::read(log).unwrap();
        bytes += text.len();
        for found in searcher.find_overlapping_iter(&text) {
            let secret = &secrets[found.pattern().as_usize()];
            let numeric = secret.bytes().all(|b| b.is_ascii_digit());
            if numeric && !stands_alone(&text, found.start(), found.end()) {
                continue;
            }
            let from = found.start().saturating_sub(80);
            let to = (found.end() + 80).min(text.len());
            leaks.push(format!(
                "{}: …{}…",
                log.file_name().unwrap().to_string_lossy(),
                String::from_utf8_lossy(&text[from..to])
            ));
        }
    }
    println!(
        "{} secrets looked for in {} logs ({} KiB)",
        secrets.len(),
        logs.len(),
        bytes / 1024
    );
    assert!(
        logs.len() > 10 && bytes > 0,
        "the run left no logs in {}",
        dir.display()
    );
    assert!(
        leaks.is_empty(),
        "secrets in the logs:\n{}",
        leaks.join("\n")
    );
}
