//! `keel-api admin …`: the operator's commands — create a superuser, list
//! users, stats, delete, verify, set a role. Passwords come from a prompt
//! or stdin, never from argv (where `ps` and shell history would show them).
//! Exit codes: 0 done, 1 failed, 2 usage.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::Context as _;
use clap::Subcommand;
use keel_shared::{
    Config, RedisClient,
    db::{
        self,
        users::{self, NewUser, ProfileChanges, User, UserFilter},
    },
    domain::{EmailAddress, Invalid, Password, Role, Username},
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    accounts::{TAKEN, change_role, delete_account},
    auth::{password::PasswordHasher, user_cache::UserCache},
    error::{ApiError, OnConstraint as _},
    responses::UserResponse,
};

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a superadmin: prompts on a terminal; for scripts, pass
    /// `--username --email` and the password on stdin with `--password-stdin`.
    CreateSuperuser {
        #[arg(long)]
        username: Option<String>,
        #[arg(long)]
        email: Option<String>,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users, newest first.
    ListUsers {
        #[arg(long)]
        json: bool,
    },
    /// Counts of users by role, active and verified.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Delete a user (by id or username); asks unless `--yes`.
    DeleteUser {
        user: String,
        #[arg(long)]
        yes: bool,
    },
    /// Mark a user's email as verified.
    VerifyUser { user: String },
    /// Set a user's role: user, admin or superadmin.
    SetRole {
        user: String,
        #[arg(value_parser = parse_role)]
        role: Role,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).map_err(|Invalid(m)| m)
}

/// A failure, and whether it was the caller's usage (exit 2) or not (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl From<ApiError> for AdminError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Client { detail, .. } => Self::Failed(anyhow::anyhow!(detail)),
            ApiError::Unavailable(cause) | ApiError::Internal(cause) => Self::Failed(cause),
            other => Self::Failed(anyhow::anyhow!(other.to_string())),
        }
    }
}

impl From<sqlx::Error> for AdminError {
    fn from(e: sqlx::Error) -> Self {
        Self::Failed(e.into())
    }
}

/// Runs one admin command against the configured database.
///
/// # Errors
/// See [`AdminError`].
pub async fn run(command: AdminCommand, config: &Config) -> Result<(), AdminError> {
    let db = db::connect(config).await?;
    let redis = RedisClient::lazy(config)?;
    let jobs = keel_shared::queue::JobQueue::new(redis.clone());
    // This process only publishes changes; it never checks a token.
    let users_cache = UserCache::new(redis, std::time::Duration::ZERO);
    match command {
        AdminCommand::CreateSuperuser {
            username,
            email,
            password_stdin,
        } => create_superuser(&db, username, email, password_stdin).await,
        AdminCommand::ListUsers { json } => list_users(&db, json).await,
        AdminCommand::Stats { json } => stats(&db, json).await,
        AdminCommand::DeleteUser { user, yes } => {
            let user = find(&db, &user).await?;
            if !yes {
                confirm(&format!(
                    "delete {} <{}> and everything they own?",
                    user.username, user.email
                ))?;
            }
            delete_account(&db, &jobs, &users_cache, None, user.id).await?;
            println!("deleted {}", user.username);
            Ok(())
        }
        AdminCommand::VerifyUser { user } => {
            let user = find(&db, &user).await?;
            users::set_email_verified(&db, user.id).await?;
            users_cache.invalidate(user.id).await;
            println!("verified {} <{}>", user.username, user.email);
            Ok(())
        }
        AdminCommand::SetRole { user, role } => {
            let user = find(&db, &user).await?;
            change_role(&db, &users_cache, user.id, role).await?;
            println!("{} is now {role}", user.username);
            Ok(())
        }
    }
}

/// A user by id, username or email.
async fn find(db: &PgPool, key: &str) -> Result<User, AdminError> {
    let found = match key.parse::<Uuid>() {
        Ok(id) => users::find_by_id(db, id).await?,
        Err(_) => users::find_by_login(db, key).await?,
    };
    found.ok_or_else(|| AdminError::Failed(anyhow::anyhow!("no user {key:?}")))
}

async fn create_superuser(
    db: &PgPool,
    username: Option<String>,
    email: Option<String>,
    password_stdin: bool,
) -> Result<(), AdminError> {
    let interactive = std::io::stdin().is_terminal();
    let ask = |what: &str, given: Option<String>| -> Result<String, AdminError> {
        match given {
            Some(value) => Ok(value),
            None if interactive && !password_stdin => prompt(what),
            None => Err(AdminError::Usage(format!(
                "--{what} is required when not at a terminal"
            ))),
        }
    };
    let username = Username::parse(&ask("username", username)?)
        .map_err(|Invalid(m)| AdminError::Usage(format!("username {m}")))?;
    let email = EmailAddress::parse(&ask("email", email)?)
        .map_err(|Invalid(m)| AdminError::Usage(format!("email {m}")))?;
    let password = if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else if interactive {
        let first = rpassword::prompt_password("password: ").context("reading the password")?;
        let second =
            rpassword::prompt_password("password (again): ").context("reading the password")?;
        if first != second {
            return Err(AdminError::Usage("the passwords differ".into()));
        }
        first
    } else {
        return Err(AdminError::Usage(
            "pass --password-stdin when not at a terminal".into(),
        ));
    };
    let password = Password::parse(&password)
        .map_err(|Invalid(m)| AdminError::Usage(format!("password {m}")))?;
    let password_hash = PasswordHasher::new().hash(&password).await?;
    let new = NewUser {
        username,
        email,
        password_hash,
        role: Role::Superadmin,
        email_verified: true,
        profile: ProfileChanges::default(),
    };
    let user = users::insert(db, &new).await.on_constraint(TAKEN)?;
    println!("created superadmin {} ({})", user.username, user.id);
    Ok(())
}

fn prompt(what: &str) -> Result<String, AdminError> {
    print!("{what}: ");
    std::io::stdout().flush().context("writing the prompt")?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading an answer")?;
    Ok(line.trim().to_owned())
}

fn confirm(question: &str) -> Result<(), AdminError> {
    if !std::io::stdin().is_terminal() {
        return Err(AdminError::Usage(
            "pass --yes to confirm when not at a terminal".into(),
        ));
    }
    if prompt(&format!("{question} [y/N]"))?.eq_ignore_ascii_case("y") {
        Ok(())
    } else {
        Err(AdminError::Failed(anyhow::anyhow!(
            "not confirmed; nothing deleted"
        )))
    }
}

async fn list_users(db: &PgPool, json: bool) -> Result<(), AdminError> {
    let mut all = Vec::new();
    let (mut offset, page) = (0, 500);
    loop {
        let (users, total) = users::list(db, &UserFilter::default(), page, offset).await?;
        all.extend(users.into_iter().map(UserResponse::from));
        offset += page;
        if offset >= total {
            break;
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&all).context("serialising users")?
        );
        return Ok(());
    }
    println!(
        "{:<36}  {:<20}  {:<30}  {:<10}  {:<6}  {:<8}  created",
        "id", "username", "email", "role", "active", "verified"
    );
    for u in &all {
        println!(
            "{:<36}  {:<20}  {:<30}  {:<10}  {:<6}  {:<8}  {}",
            u.id,
            u.username,
            u.email,
            u.role.as_str(),
            u.is_active,
            u.email_verified,
            u.created_at.format("%Y-%m-%d %H:%M")
        );
    }
    println!("{} users", all.len());
    Ok(())
}

async fn stats(db: &PgPool, json: bool) -> Result<(), AdminError> {
    let stats = users::stats(db).await?;
    if json {
        println!("{}", serde_json::json!({ "users": stats }));
        return Ok(());
    }
    println!("users     {}", stats.total);
    println!("active    {}", stats.active);
    println!("verified  {}", stats.verified);
    for (role, count) in &stats.by_role {
        println!("{role:<10}{count}");
    }
    Ok(())
}
