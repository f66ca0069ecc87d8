//! `/api/v1/api-keys`: the caller's own API keys. A key is shown once, at
//! creation or regeneration; only its hash is kept. A key cannot mint keys.

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use chrono::{DateTime, Utc};
use keel_shared::{
    db::{
        api_keys::{self, ApiKey},
        email_deliveries::{self, Delivery},
        refresh_tokens,
    },
    mail::EmailTemplate,
    queue::emails,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::{Principal, revocation, tokens},
    error::{ApiError, FieldError},
    extract::{AppJson, AppPath, AppQuery},
    openapi::{
        ApiKeyNotAllowed, JsonBodyErrors, NotFound, OwnObject, ResourceErrors, SessionOnly,
        SignedIn, Unauthorized, ValidationFailed,
    },
    pagination::{Page, PageQuery, PageRequest},
    problems::{Code, problem_response},
    state::AppState,
};

/// Keys one user may hold.
pub const MAX_KEYS_PER_USER: usize = 25;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_keys, create_key))
        .routes(routes!(regenerate_key))
        .routes(routes!(delete_key))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "ci deploys", "expires_at": "2027-01-01T00:00:00Z"}))]
pub struct NewApiKey {
    /// 1 to 100 characters, not all white space.
    #[schema(
        example = "ci deploys",
        min_length = 1,
        max_length = 100,
        pattern = r"[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub name: String,
    /// When the key stops working; never when absent.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A key with its secret: the only time it is shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "01936f0e-8b2c-7e3d-8f4a-5b6c7d8e9fa0", "name": "ci deploys", "prefix": "keel_3f9a1c2b",
    "created_at": "2026-01-12T10:00:00Z", "last_used_at": "2026-01-15T09:30:00Z", "expires_at": null,
    "key": "keel_3f9a1c2b_Xq7vN2pL9sT4wK8mR1cY6hB3jF0dG5zA2eU7iO4nQ9x"
}))]
pub struct ApiKeyWithSecret {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Send as `X-API-Key`. Shown once.
    pub key: String,
}

impl ApiKeyWithSecret {
    fn new(key: ApiKey, secret: String) -> Self {
        Self {
            id: key.id,
            name: key.name,
            prefix: key.prefix,
            created_at: key.created_at,
            last_used_at: key.last_used_at,
            expires_at: key.expires_at,
            key: secret,
        }
    }
}

/// The caller's keys, newest first (never their secrets).
#[utoipa::path(get, path = "/api/v1/api-keys", tag = "api-keys", security(("bearer" = []), ("api_key" = [])),
    params(PageQuery),
    responses(
        SignedIn,
        (status = 200, description = "A page of the caller's keys", body = Page<ApiKey>,
            example = json!({"items": [{
                "id": "01936f0e-8b2c-7e3d-8f4a-5b6c7d8e9fa0", "name": "ci deploys", "prefix": "keel_3f9a1c2b",
                "created_at": "2026-01-12T10:00:00Z", "last_used_at": "2026-01-15T09:30:00Z", "expires_at": null
            }], "total": 1, "page": 1, "size": 20, "pages": 1})),
        (status = 422, response = ValidationFailed),
    ))]
async fn list_keys(
    State(state): State<AppState>,
    principal: Principal,
    AppQuery(query): AppQuery<PageQuery>,
) -> Result<AppJson<Page<ApiKey>>, ApiError> {
    let page = PageRequest::parse(query)?;
    // A user holds at most MAX_KEYS_PER_USER keys: paging them in memory is cheap.
    let keys = api_keys::list_for_user(&state.db, principal.id()).await?;
    let total = i64::try_from(keys.len()).unwrap_or(i64::MAX);
    let offset = usize::try_from(page.offset()).unwrap_or(usize::MAX);
    let items = keys
        .into_iter()
        .skip(offset)
        .take(page.size as usize)
        .collect();
    Ok(AppJson(Page::new(items, total, page)))
}

/// Creates a key that acts as the caller; the caller's email address must
/// be verified. The owner is mailed that a key was added. A password reset
/// or change deletes every key.
#[utoipa::path(post, path = "/api/v1/api-keys", tag = "api-keys", security(("bearer" = [])), request_body = NewApiKey,
    responses(
        JsonBodyErrors, SessionOnly,
        (status = 201, description = "The key, with its secret `key`: the only time it is shown", body = ApiKeyWithSecret),
        (status = 409, response = inline(KeyRefused)),
    ))]
async fn create_key(
    State(state): State<AppState>,
    principal: Principal,
    AppJson(request): AppJson<NewApiKey>,
) -> Result<impl IntoResponse, ApiError> {
    principal.require_session()?;
    require_verified_email(&principal)?;
    let name = request.name.trim();
    let mut errors = Vec::new();
    if name.is_empty() || name.chars().count() > 100 {
        errors.push(FieldError {
            field: "name".into(),
            message: "must be 1 to 100 characters".into(),
        });
    }
    if request.expires_at.is_some_and(|at| at <= Utc::now()) {
        errors.push(FieldError {
            field: "expires_at".into(),
            message: "must be in the future".into(),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    // Counted under the user's row lock, so concurrent requests cannot all pass at the limit.
    let mut tx = state.db.begin().await?;
    refresh_tokens::lock_user(&mut *tx, principal.id()).await?;
    revocation::ensure_current(&mut tx, &principal).await?;
    if api_keys::list_for_user(&mut *tx, principal.id())
        .await?
        .len()
        >= MAX_KEYS_PER_USER
    {
        return Err(ApiError::new(
            Code::TooManyApiKeys,
            format!("at most {MAX_KEYS_PER_USER} keys per user"),
        ));
    }
    let (secret, prefix, hash) = tokens::new_api_key();
    let key = api_keys::insert(
        &mut *tx,
        principal.id(),
        name,
        &prefix,
        &hash,
        request.expires_at,
    )
    .await?;
    let notice = record_notice(&mut tx, &principal.user, &key).await?;
    tx.commit().await?;
    emails::push(&state.db, &state.jobs, &notice).await;
    tracing::info!(user_id = %principal.id(), key_id = %key.id, "API key created");
    Ok((
        StatusCode::CREATED,
        AppJson(ApiKeyWithSecret::new(key, secret)),
    ))
}

/// 409 `email_not_verified`: a credential that outlives a password reset
/// is only minted for an address its holder has proven, so whoever
/// registers someone else's address cannot keep a way in.
fn require_verified_email(principal: &Principal) -> Result<(), ApiError> {
    if principal.user.email_verified {
        Ok(())
    } else {
        Err(ApiError::new(
            Code::EmailNotVerified,
            "verify your email address before creating API keys",
        ))
    }
}

/// Records, in the transaction that adds `key`, the mail telling the owner
/// a new way to act as them exists; pushed once it commits.
async fn record_notice(
    tx: &mut sqlx::PgConnection,
    user: &keel_shared::db::users::User,
    key: &ApiKey,
) -> Result<Delivery, sqlx::Error> {
    let data =
        serde_json::json!({"username": user.username, "name": key.name, "prefix": key.prefix});
    email_deliveries::insert(
        &mut *tx,
        &user.email,
        EmailTemplate::ApiKeyCreated.name(),
        &data,
    )
    .await
}

/// Gives the key a new secret; the old one stops working at once, with
/// the WebSockets it opened. The owner is mailed, as for a new key.
#[utoipa::path(post, path = "/api/v1/api-keys/{id}/regenerate", tag = "api-keys", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The key's id")),
    responses(
        ResourceErrors,
        (status = 200, description = "The key with its new secret `key`, shown once", body = ApiKeyWithSecret),
        (status = 401, response = Unauthorized),
        (status = 403, response = ApiKeyNotAllowed),
        (status = 404, response = NotFound),
        (status = 409, response = inline(Unverified)),
    ))]
async fn regenerate_key(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(id): AppPath<Uuid>,
) -> Result<AppJson<ApiKeyWithSecret>, ApiError> {
    principal.require_session()?;
    require_verified_email(&principal)?;
    let (secret, prefix, hash) = tokens::new_api_key();
    let mut tx = state.db.begin().await?;
    refresh_tokens::lock_user(&mut *tx, principal.id()).await?;
    revocation::ensure_current(&mut tx, &principal).await?;
    let key = api_keys::replace_secret(&mut *tx, id, principal.id(), &prefix, &hash)
        .await?
        .ok_or_else(|| ApiError::not_found("no such API key"))?;
    let notice = record_notice(&mut tx, &principal.user, &key).await?;
    tx.commit().await?;
    // Sockets opened with the old secret close.
    revocation::announce(&state, principal.id()).await;
    emails::push(&state.db, &state.jobs, &notice).await;
    Ok(AppJson(ApiKeyWithSecret::new(key, secret)))
}

/// Deletes one of the caller's keys.
#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", tag = "api-keys", security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "The key's id")),
    responses(
        OwnObject,
        (status = 204, description = "Deleted; the key stops working at once"),
    ))]
async fn delete_key(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(id): AppPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    if api_keys::delete(&state.db, id, principal.id()).await? {
        // Sockets the key opened close.
        revocation::announce(&state, principal.id()).await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such API key"))
    }
}

problem_response!(
    /// `too_many_api_keys` (25 at most), or `email_not_verified`.
    KeyRefused = [TooManyApiKeys, EmailNotVerified]
);
problem_response!(
    /// `email_not_verified`.
    Unverified = [EmailNotVerified]
);
