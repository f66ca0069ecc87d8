//! The `keel-api` command line: serve (the default), `migrate`, and
//! `gen-secret [--write-env]`.

use std::{io::Write as _, path::Path, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use keel_shared::{
    Config, RedisClient,
    config::{self, Environment, SigningKey},
    db, process, shutdown,
};

use crate::{
    admin::{self, AdminCommand, AdminError},
    startup::Application,
};

/// Keel's HTTP and WebSocket API.
#[derive(Debug, Parser)]
#[command(name = "keel-api", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (what `keel-api` alone does).
    Serve,
    /// Create the database if needed and apply pending migrations.
    Migrate,
    /// Operator commands: users, roles, stats.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Print a fresh SECRET_KEY.
    GenSecret {
        /// Write it into `.env` instead of printing it.
        #[arg(long)]
        write_env: bool,
        /// With `--write-env`, replace a SECRET_KEY already there (signs out every session).
        #[arg(long, requires = "write_env")]
        force: bool,
    },
}

/// `keel-api` offering `kinds` instead of the built-in ones: the `main` of
/// a team's own API binary (`worker/example/` shows one). Build the worker
/// with the same registry.
pub fn main_with_kinds(kinds: keel_shared::kinds::Registry) -> ExitCode {
    if keel_shared::kinds::registry::install(kinds).is_err() {
        eprintln!("keel-api: the task kinds were installed twice");
        return ExitCode::from(2);
    }
    main()
}

/// Runs `keel-api`; the exit code is 0 on success, 1 on failure and 2 on a
/// usage or configuration error.
pub fn main() -> ExitCode {
    let Cli { command, config } = config::parse_cli();
    let command = command.unwrap_or(Command::Serve);
    if let Command::GenSecret { write_env, force } = command {
        return process::exit_code("keel-api", gen_secret(write_env, force));
    }
    let mut errors = config.validate().err().map(|e| e.0).unwrap_or_default();
    // Only serving signs tokens; its key's faults are listed with the rest.
    let signing_key = match command {
        Command::Serve => config.signing_key().map_err(|e| errors.push(e)).ok(),
        _ => None,
    };
    if !errors.is_empty() {
        config::exit_config(&errors);
    }
    if let Command::Admin { command } = command {
        return run_admin(command, config);
    }
    process::run_main("keel-api", &config.clone(), async move {
        match signing_key {
            Some(key) => serve(config, key).await,
            None => migrate(&config).await,
        }
    })
}

fn run_admin(command: AdminCommand, config: Config) -> ExitCode {
    let mut usage = None;
    let code = process::run_main("keel-api", &config.clone(), async {
        match admin::run(command, &config).await {
            Ok(()) => Ok(()),
            Err(AdminError::Usage(message)) => {
                usage = Some(message);
                Ok(())
            }
            Err(AdminError::Failed(e)) => Err(e),
        }
    });
    match usage {
        Some(message) => config::exit_usage(&message),
        None => code,
    }
}

async fn serve(config: Config, signing_key: SigningKey) -> anyhow::Result<()> {
    if signing_key.ephemeral {
        tracing::warn!(
            "SECRET_KEY is not set (or shorter than 32 bytes): using a key made for this process only; \
             tokens will not survive a restart. `keel-api gen-secret --write-env` makes a lasting one"
        );
    }
    let development = config.process.environment == Environment::Development;
    if development
        && db::create_database_if_missing(&config)
            .await
            .unwrap_or(false)
    {
        tracing::info!("created the database");
    }
    let pool = db::connect(&config).await?;
    if development {
        db::migrate(&pool).await?;
    } else if !db::migrations_current(&pool).await.unwrap_or(false) {
        tracing::warn!(
            "the database has pending migrations; run `keel-api migrate` (/ready answers 503 until then)"
        );
    }
    let redis = RedisClient::connect(&config).await?;
    let app = Application::build_with(config, signing_key, pool, redis).await?;
    tracing::info!(address = %app.local_addr(), scheme = app.scheme(), "keel-api listening");
    shutdown::cancel_on_signal(app.shutdown_token());
    app.run_until_stopped().await.context("serving HTTP")?;
    tracing::info!("keel-api stopped");
    Ok(())
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    if db::create_database_if_missing(config).await? {
        println!("created the database");
    }
    let pool = db::connect(config).await?;
    db::migrate(&pool).await?;
    let applied = db::MIGRATOR.iter().count();
    println!("migrations are current ({applied} in all)");
    Ok(())
}

fn gen_secret(write_env: bool, force: bool) -> anyhow::Result<()> {
    let secret = config::generate_secret();
    if !write_env {
        println!("{secret}");
        return Ok(());
    }
    write_env_secret(Path::new(".env"), &secret, force)?;
    println!("wrote a new SECRET_KEY to .env");
    Ok(())
}

/// Sets `SECRET_KEY` in the dotenv file at `path`, keeping every other line.
fn write_env_secret(path: &Path, secret: &str, force: bool) -> anyhow::Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).context("reading .env"),
    };
    let is_key = |line: &str| {
        line.trim_start()
            .trim_start_matches("export ")
            .starts_with("SECRET_KEY=")
    };
    if existing.lines().any(is_key) && !force {
        anyhow::bail!(
            ".env already has a SECRET_KEY; pass --force to replace it (every session will be signed out)"
        );
    }
    let mut lines: Vec<String> = existing
        .lines()
        .filter(|l| !is_key(l))
        .map(str::to_owned)
        .collect();
    lines.push(format!("SECRET_KEY={secret}"));
    let mut file = open_private(path).context("writing .env")?;
    file.write_all((lines.join("\n") + "\n").as_bytes())
        .context("writing .env")?;
    Ok(())
}

/// Opens `path` for writing, readable by its owner only: it holds secrets.
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::write_env_secret;

    #[test]
    fn write_env_keeps_other_lines_and_refuses_to_replace_without_force() {
        let dir = std::env::temp_dir().join(format!("keel-env-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".env");
        std::fs::write(&path, "PORT=9000\n").unwrap();

        write_env_secret(&path, "first", false).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "PORT=9000\nSECRET_KEY=first\n"
        );

        assert!(
            write_env_secret(&path, "second", false).is_err(),
            "an existing key needs --force"
        );
        write_env_secret(&path, "second", true).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "PORT=9000\nSECRET_KEY=second\n"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
