//! Every relative link in the project's Markdown files leads somewhere: the
//! file exists, and a `#fragment` names one of its headings (GitHub's
//! anchors). The manual is spread over a README per folder, linked from the
//! front page, so a moved section must not leave a dead link behind.

use std::path::{Path, PathBuf};

/// Folders that hold no documentation of ours.
const SKIPPED: &[&str] = &["target", ".data", "node_modules", ".git"];

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a readable folder") {
        let path = entry.expect("an entry").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if path.is_dir() {
            if !SKIPPED.contains(&name.as_ref()) {
                markdown_files(&path, out);
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// The lines of `text` outside fenced code blocks.
fn prose_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// The destinations of the `[text](destination)` links on `line`.
fn link_destinations(line: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        found.push(&after[..end]);
        rest = &after[end..];
    }
    found
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of every heading in a Markdown file.
fn anchors(text: &str) -> Vec<String> {
    prose_lines(text)
        .filter_map(|line| {
            let hashes = line.len() - line.trim_start_matches('#').len();
            (1..=6).contains(&hashes).then(|| anchor(&line[hashes..]))
        })
        .collect()
}

#[test]
fn every_relative_link_in_the_markdown_files_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository root");
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("api/README.md")) && files.len() >= 6,
        "the folders' READMEs are found: {files:?}"
    );

    let mut checked = 0;
    let mut dead = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable Markdown");
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        for line in prose_lines(&text) {
            for destination in link_destinations(line) {
                if destination.contains("://") || destination.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, fragment) = destination.split_once('#').unwrap_or((destination, ""));
                let target = if path.is_empty() {
                    file.clone()
                } else {
                    file.parent().expect("a folder").join(path)
                };
                if !target.exists() {
                    dead.push(format!("{shown}: `{destination}`: no such file"));
                    continue;
                }
                if !fragment.is_empty() {
                    let target_text = std::fs::read_to_string(&target).unwrap_or_default();
                    if !anchors(&target_text).iter().any(|a| a == fragment) {
                        dead.push(format!("{shown}: `{destination}`: no such heading"));
                    }
                }
            }
        }
    }
    assert!(dead.is_empty(), "dead links:\n{}", dead.join("\n"));
    // The front page links each folder's README; far fewer means the reader broke.
    assert!(checked >= 10, "only {checked} relative links found");
}
