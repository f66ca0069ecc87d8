//! The command line around the configuration: `.env`, parsing, and a bad
//! value reported in one line naming its environment variable, exit code 2.

use std::error::Error as _;

use clap::Parser;

use super::{Config, ConfigError};

/// Prints each error on its own line (`binary: configuration error: VAR: …`)
/// and exits 2.
pub fn exit_config(errors: &[ConfigError]) -> ! {
    let (last, rest) = errors.split_last().expect("at least one error");
    for e in rest {
        eprintln!("{}: configuration error: {e}", binary_name());
    }
    exit_usage(&last.to_string())
}

/// Exit code for a configuration or usage error, as clap uses.
pub const USAGE_EXIT_CODE: u8 = 2;

#[derive(Parser)]
struct ConfigOnly {
    #[command(flatten)]
    config: Config,
}

impl Config {
    /// A configuration from command-line style flags alone (and the
    /// environment), for tools such as `keel-bench` and the test harness.
    ///
    /// # Errors
    /// A flag or variable does not parse.
    pub fn from_flags<I, T>(flags: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args = std::iter::once(std::ffi::OsString::from("keel"))
            .chain(flags.into_iter().map(Into::into));
        Ok(ConfigOnly::try_parse_from(args)?.config)
    }
}

/// Loads `.env` (without overriding the real environment) and parses the
/// command line of the binary `P`. On an error it prints one line naming the
/// environment variable (or flag) and what is wrong, and exits 2; `--help`
/// and `--version` print and exit 0.
pub fn parse_cli<P: clap::Parser>() -> P {
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        exit_usage(&format!(".env: {e}"));
    }
    let mut command = P::command();
    let matches = match command.try_get_matches_from_mut(std::env::args_os()) {
        Ok(m) => m,
        Err(e) => exit_clap(&command, e),
    };
    P::from_arg_matches(&matches).unwrap_or_else(|e| exit_clap(&command, e))
}

/// Prints `binary: configuration error: …` and exits 2.
pub fn exit_usage(message: &str) -> ! {
    eprintln!("{}: configuration error: {message}", binary_name());
    std::process::exit(USAGE_EXIT_CODE.into())
}

/// The running binary's file name, for messages.
fn binary_name() -> String {
    std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "keel".to_owned())
}

/// Turns clap's multi-line error into one line that names the environment
/// variable behind the flag, since most deployments set variables, not flags.
fn exit_clap(command: &clap::Command, e: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {}
    }
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let flag = context(ContextKind::InvalidArg);
    let env = flag.as_deref().and_then(|flag| env_of_flag(command, flag));
    let value = context(ContextKind::InvalidValue);
    let reason = e
        .source()
        .map(ToString::to_string)
        .or_else(|| {
            context(ContextKind::ValidValue).or_else(|| match e.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(v)) => {
                    Some(format!("expected one of: {}", v.join(", ")))
                }
                _ => None,
            })
        })
        .unwrap_or_else(|| first_line(&e.to_string()));
    let message = match (env, flag, value) {
        (Some(env), _, Some(value)) => format!("{env}: invalid value {value:?}: {reason}"),
        (Some(env), _, None) => format!("{env}: {reason}"),
        (None, Some(flag), _) => format!("{flag}: {reason}"),
        (None, None, _) => reason,
    };
    exit_usage(&message)
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned()
}

/// Finds the environment variable of the argument clap reports as `--long <VALUE>`.
fn env_of_flag(command: &clap::Command, reported: &str) -> Option<String> {
    let long = reported.strip_prefix("--")?.split([' ', '=']).next()?;
    let find = |cmd: &clap::Command| {
        cmd.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
    };
    find(command).or_else(|| command.get_subcommands().find_map(find))
}
