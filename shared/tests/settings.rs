//! The settings every binary takes: the same flags and environment variables
//! as before they were grouped in sections, each under its section in
//! `--help`.

use clap::Args as _;
use keel_shared::Config;

/// The sections, in the order `--help` shows them.
const SECTIONS: &[&str] = &[
    "Process",
    "Database",
    "Redis",
    "HTTP",
    "Auth",
    "WebSocket",
    "SMTP",
    "OAuth",
    "Storage",
    "Worker",
    "Tasks",
];

fn command() -> clap::Command {
    Config::augment_args(clap::Command::new("keel"))
}

/// `--flag VARIABLE` for each setting.
fn settings(command: &clap::Command) -> Vec<String> {
    command
        .get_arguments()
        .map(|arg| {
            let long = arg
                .get_long()
                .unwrap_or_else(|| panic!("{arg:?} has a flag"));
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("--{long} has an environment variable"));
            format!("--{long} {}", env.to_string_lossy())
        })
        .collect()
}

#[test]
fn every_setting_keeps_its_flag_and_its_variable() {
    let before: Vec<&str> = include_str!("settings.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    let now = settings(&command());
    let missing: Vec<&&str> = before
        .iter()
        .filter(|s| !now.iter().any(|n| n == *s))
        .collect();
    let added: Vec<&String> = now
        .iter()
        .filter(|n| !before.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty() && added.is_empty(),
        "settings lost: {missing:?}; settings new or renamed: {added:?} (a new setting goes into settings.txt too)"
    );
    assert_eq!(now.len(), before.len(), "no setting twice");
}

#[test]
fn help_lists_the_settings_by_section() {
    let command = command();
    let mut seen = Vec::new();
    for arg in command.get_arguments() {
        let heading = arg
            .get_help_heading()
            .unwrap_or_else(|| panic!("--{:?} is in no section", arg.get_long()));
        assert!(
            SECTIONS.contains(&heading),
            "--{:?} is under {heading:?}, not a section",
            arg.get_long()
        );
        if seen.last() != Some(&heading) {
            assert!(!seen.contains(&heading), "{heading} is shown in two places");
            seen.push(heading);
        }
    }
    assert_eq!(seen, SECTIONS, "each section has settings, in this order");

    let help = command.clone().render_help().to_string();
    let positions: Vec<usize> = SECTIONS
        .iter()
        .map(|s| {
            help.find(&format!("\n{s}:\n"))
                .unwrap_or_else(|| panic!("no {s}: heading in\n{help}"))
        })
        .collect();
    assert!(positions.is_sorted(), "the headings in order:\n{help}");
    let smtp = &help[positions[6]..positions[7]];
    assert!(
        smtp.contains("--smtp-host") && smtp.contains("SMTP_HOST"),
        "SMTP_HOST is under SMTP:\n{smtp}"
    );
}
