//! What an account does below the routes: signing in and the tokens it
//! gets ([`sessions`]), the verification link ([`verification`]), changes of
//! role and deletion (which keep one active superadmin and are the
//! operator's commands too), and the profile fields of a request as domain
//! values. Routes, the dashboard and `keel-api admin` call these.

pub mod links;
pub mod sessions;
pub mod verification;

use keel_shared::{
    db::{
        email_deliveries, refresh_tokens,
        users::{self, ProfileChanges, User},
    },
    domain::{
        DEFAULT_LANGUAGE, DEFAULT_TIMEZONE, Invalid, Language, ProfileText, Role, Timezone,
        parse_avatar_url, parse_phone_number,
    },
    mail::EmailTemplate,
    queue::{JobQueue, emails},
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    auth::{Principal, user_cache::UserCache},
    error::{ApiError, FieldError},
    problems::Code,
};

/// 404 for a user that does not exist, or that the caller may not see.
pub(crate) fn no_such_user() -> ApiError {
    ApiError::not_found("no such user")
}

/// Profile fields of a request, as domain values.
#[derive(Debug, Default)]
pub struct ProfileInput {
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub phone_number: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
    pub bio: Option<Option<String>>,
    /// `Some(None)` resets it to [`DEFAULT_TIMEZONE`].
    pub timezone: Option<Option<String>>,
    /// `Some(None)` resets it to [`DEFAULT_LANGUAGE`].
    pub language: Option<Option<String>>,
}

impl ProfileInput {
    /// Parses every field, collecting each one's reason.
    pub fn parse(self, errors: &mut Vec<FieldError>) -> ProfileChanges {
        let mut check = |field: &str, result: Result<String, Invalid>| match result {
            Ok(value) => Some(value),
            Err(Invalid(message)) => {
                errors.push(FieldError {
                    field: field.into(),
                    message,
                });
                None
            }
        };
        let text =
            |max: usize| move |s: &str| ProfileText::parse(s, max).map(ProfileText::into_inner);
        let line = |max: usize| {
            move |s: &str| ProfileText::parse_line(s, max).map(ProfileText::into_inner)
        };
        let mut optional =
            |field: &str,
             value: Option<Option<String>>,
             parse: &dyn Fn(&str) -> Result<String, Invalid>| {
                // Only white space is no value: stored as null, not "".
                value.map(|v| {
                    v.and_then(|s| check(field, parse(&s)))
                        .filter(|s| !s.is_empty())
                })
            };
        let first_name = optional("first_name", self.first_name, &line(100));
        let last_name = optional("last_name", self.last_name, &line(100));
        let phone_number = optional("phone_number", self.phone_number, &parse_phone_number);
        let avatar_url = optional("avatar_url", self.avatar_url, &parse_avatar_url);
        let bio = optional("bio", self.bio, &text(1000));
        // `null` is the default, never "no change": a client that clears a
        // field is told what it now is.
        let timezone = self.timezone.and_then(|tz| {
            let tz = tz.as_deref().unwrap_or(DEFAULT_TIMEZONE);
            check(
                "timezone",
                Timezone::parse(tz).map(|t| t.as_str().to_owned()),
            )
        });
        let language = self.language.and_then(|l| {
            let l = l.as_deref().unwrap_or(DEFAULT_LANGUAGE);
            check(
                "language",
                Language::parse(l).map(|l| l.as_str().to_owned()),
            )
        });
        ProfileChanges {
            first_name,
            last_name,
            phone_number,
            avatar_url,
            bio,
            timezone,
            language,
            is_active: None,
        }
    }
}

/// An admin manages users below or at their own role, never above it.
pub(crate) fn ensure_outranks(principal: &Principal, target: &User) -> Result<(), ApiError> {
    if principal.id() != target.id && target.role > principal.role() {
        return Err(ApiError::forbidden(
            "you cannot manage a user of a higher role",
        ));
    }
    Ok(())
}

/// 409 if `target` is the only active superadmin; the superadmin rows stay
/// locked until the transaction ends, so two concurrent demotions cannot
/// both pass.
pub(crate) async fn ensure_not_last_superadmin(
    tx: &mut sqlx::PgConnection,
    target: &User,
) -> Result<(), ApiError> {
    if target.role != Role::Superadmin || !target.is_active {
        return Ok(());
    }
    let superadmins = users::lock_active_superadmins(&mut *tx).await?;
    if superadmins.len() <= 1 {
        return Err(ApiError::new(
            Code::LastSuperadmin,
            "the last active superadmin cannot be demoted, deactivated or deleted",
        ));
    }
    Ok(())
}

/// Sets `id`'s role, ends their sessions, and keeps one active superadmin.
///
/// # Errors
/// Not found, or the last superadmin would be demoted.
pub async fn change_role(
    db: &PgPool,
    users_cache: &UserCache,
    id: Uuid,
    role: Role,
) -> Result<User, ApiError> {
    let mut tx = db.begin().await?;
    let target = users::find_by_id(&mut *tx, id)
        .await?
        .ok_or_else(no_such_user)?;
    if role != Role::Superadmin {
        ensure_not_last_superadmin(&mut tx, &target).await?;
    }
    let user = users::set_role(&mut *tx, id, role)
        .await?
        .ok_or_else(no_such_user)?;
    refresh_tokens::revoke_all_for_user(&mut *tx, id).await?;
    tx.commit().await?;
    users_cache.invalidate(id).await;
    Ok(user)
}

/// Deletes `id` as `actor` would (`None`: the operator's command line),
/// and mails the account's address that it is gone. The mail is recorded in
/// the deleting transaction (a delivery outlives its user), so it goes out
/// if and only if the delete happened.
///
/// # Errors
/// Not found, outranked, or the last superadmin.
pub async fn delete_account(
    db: &PgPool,
    jobs: &JobQueue,
    users_cache: &UserCache,
    actor: Option<&Principal>,
    id: Uuid,
) -> Result<(), ApiError> {
    let mut tx = db.begin().await?;
    let target = users::find_by_id(&mut *tx, id)
        .await?
        .ok_or_else(no_such_user)?;
    if let Some(actor) = actor {
        ensure_outranks(actor, &target)?;
    }
    ensure_not_last_superadmin(&mut tx, &target).await?;
    // As with deactivation: an admin's own account is closed by another admin.
    if actor.is_some_and(|a| a.id() == id) {
        return Err(ApiError::forbidden(
            "you cannot delete your own account; another admin can",
        ));
    }
    users::delete(&mut *tx, id).await?;
    let notice = email_deliveries::insert(
        &mut *tx,
        &target.email,
        EmailTemplate::AccountDeleted.name(),
        &serde_json::json!({"username": target.username}),
    )
    .await?;
    tx.commit().await?;
    users_cache.invalidate(id).await;
    emails::push(db, jobs, &notice).await;
    Ok(())
}

/// 409 `username_taken`: a username is a public handle, so a taken one may
/// say so (an address may not).
pub(crate) fn username_taken() -> ApiError {
    ApiError::from(Code::UsernameTaken)
}

/// The unique constraints of an account that are the client's 409 (where
/// telling that an address has an account is fine: `keel-api admin`
/// commands; registration answers a taken email as a fresh account).
pub const TAKEN: &[(&str, Code)] = &[
    ("users_username_key", Code::UsernameTaken),
    ("users_email_key", Code::EmailTaken),
];
