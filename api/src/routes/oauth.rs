//! `/api/v1/auth/oauth`: sign-in through OAuth 2.0 / OpenID Connect
//! providers (authorization code with PKCE; state, nonce and a browser
//! binding cookie against forgery), and the accounts such sign-ins find,
//! link or create.
//!
//! Accounts link by a verified address only. A provider's account is found
//! by its subject first; else the account with the address the provider
//! verified is linked; else a new account is made. An address the provider
//! has not verified never signs in to, links to or creates an account.

use std::sync::Arc;

use anyhow::Context as _;
use axum::{
    Extension,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use base64::Engine as _;
use keel_shared::{
    Config,
    db::{
        email_deliveries, oauth,
        users::{self, User},
    },
    domain::{EmailAddress, Username},
    mail::EmailTemplate,
    queue::emails,
};
use openidconnect::{Nonce, PkceCodeVerifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    accounts::sessions::issue,
    auth::revocation::{self, Scope},
    error::ApiError,
    extract::{AppJson, AppPath, AppQuery},
    oauth::{
        http::OAuthHttp,
        provider::{self, Identity, Kind, Provider, Providers},
    },
    openapi::{NotFound, ResourceErrors},
    problems::{Code, problem_response},
    responses::SignIn,
    second_factor,
    state::AppState,
};

/// How long a started sign-in can be finished.
const STATE_TTL_SECS: u64 = 600;
/// The cookie that ties a callback to the browser that started the sign-in.
const BINDING_COOKIE: &str = "keel_oauth_binding";

/// The routes, with the providers of `config` (their discovered endpoints
/// and keys are cached per app, not per process).
///
/// # Panics
/// A provider URL of `config` does not parse; `Config`'s parsers refuse such values.
pub fn router(config: &Config) -> OpenApiRouter<AppState> {
    let oauth = OAuth {
        providers: Providers::from_config(config)
            .expect("OAuth provider settings were checked when the configuration was parsed"),
        http: OAuthHttp::new(),
        cookie_path: cookie_path(&config.oauth_redirect_uri("{provider}")),
        secure_cookie: config.oauth_redirect_uri("x").starts_with("https://"),
    };
    OpenApiRouter::new()
        .routes(routes!(providers))
        .routes(routes!(authorize))
        .routes(routes!(callback))
        .layer(Extension(Arc::new(oauth)))
}

/// The providers and what the flow shares between requests.
#[derive(Debug)]
struct OAuth {
    providers: Providers,
    http: OAuthHttp,
    /// Where the binding cookie is sent: the callbacks' common path.
    cookie_path: String,
    /// Secure when the callback is https (a browser drops Secure cookies
    /// on plain http, which development uses).
    secure_cookie: bool,
}

impl OAuth {
    fn provider(&self, name: &str) -> Result<&Provider, ApiError> {
        self.providers
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("no OAuth provider named {name:?}")))
    }

    fn binding_cookie(&self, value: String) -> Cookie<'static> {
        Cookie::build((BINDING_COOKIE, value))
            .path(self.cookie_path.clone())
            .http_only(true)
            // Lax: sent on the provider's top-level redirect back, not on cross-site subrequests.
            .same_site(SameSite::Lax)
            .secure(self.secure_cookie)
            // No Max-Age: the state it guards expires in Redis, and the
            // callback removes the cookie.
            .build()
    }

    fn binding_removal(&self) -> Cookie<'static> {
        let mut cookie = Cookie::build((BINDING_COOKIE, ""))
            .path(self.cookie_path.clone())
            .build();
        cookie.make_removal();
        cookie
    }
}

/// The callbacks' common path: the redirect URI's path up to `{provider}`
/// (`/` when the name is not in the path).
fn cookie_path(template: &str) -> String {
    const MARK: &str = "keel-provider-name";
    let path = url::Url::parse(&template.replace("{provider}", MARK))
        .map(|u| u.path().to_owned())
        .unwrap_or_default();
    let prefix = path
        .find(MARK)
        .map_or("", |at| path[..at].trim_end_matches('/'));
    if prefix.is_empty() {
        "/".to_owned()
    } else {
        prefix.to_owned()
    }
}

/// A configured provider, as a sign-in page lists it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "name": "google", "display_name": "Google", "kind": "oidc",
    "authorize_url": "/api/v1/auth/oauth/google/authorize"
}))]
pub struct ProviderInfo {
    /// Its name in the paths below.
    #[schema(example = "google")]
    pub name: String,
    #[schema(example = "Google")]
    pub display_name: String,
    pub kind: ProviderKind,
    /// Where a browser starts signing in (this API's path, not the provider's).
    #[schema(example = "/api/v1/auth/oauth/google/authorize")]
    pub authorize_url: String,
}

/// `oidc`: OpenID Connect (a signed ID token); `oauth2`: plain OAuth 2.0 (GitHub).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Oidc,
    #[serde(rename = "oauth2")]
    OAuth2,
}

/// The providers one can sign in with, in a fixed order: Google, GitHub,
/// then those of `OAUTH_OIDC_PROVIDERS`. Empty when none is configured.
#[utoipa::path(get, path = "/api/v1/auth/oauth/providers", tag = "auth",
    responses(
        ResourceErrors,
        (status = 200, description = "The configured providers", body = Vec<ProviderInfo>,
            example = json!([
                {"name": "google", "display_name": "Google", "kind": "oidc",
                    "authorize_url": "/api/v1/auth/oauth/google/authorize"},
                {"name": "github", "display_name": "GitHub", "kind": "oauth2",
                    "authorize_url": "/api/v1/auth/oauth/github/authorize"},
            ])),
    ))]
async fn providers(Extension(oauth): Extension<Arc<OAuth>>) -> AppJson<Vec<ProviderInfo>> {
    AppJson(
        oauth
            .providers
            .iter()
            .map(|p| ProviderInfo {
                name: p.name.clone(),
                display_name: p.display_name.clone(),
                kind: match p.kind() {
                    Kind::Oidc => ProviderKind::Oidc,
                    Kind::OAuth2 => ProviderKind::OAuth2,
                },
                authorize_url: format!("/api/v1/auth/oauth/{}/authorize", p.name),
            })
            .collect(),
    )
}

/// A started sign-in, kept in Redis under the hash of its `state` until
/// the callback takes it (once) or it expires.
#[derive(Debug, Serialize, Deserialize)]
struct PendingSignIn {
    provider: String,
    pkce_verifier: String,
    nonce: Option<String>,
    /// SHA-256 (hex) of the binding cookie's value.
    binding: String,
    /// Seconds since the epoch.
    created_at: i64,
}

fn state_key(state: &AppState, oauth_state: &str) -> String {
    state
        .redis
        .key(&format!("oauth-state:{}", sha256_hex(oauth_state)))
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Starts signing in with `provider`: 302 to its authorization page, with a
/// fresh `state`, PKCE challenge (S256) and, for OpenID Connect, `nonce`;
/// sets the HttpOnly cookie the callback must bring back. The sign-in must
/// be finished within 10 minutes, in the same browser.
#[utoipa::path(get, path = "/api/v1/auth/oauth/{provider}/authorize", tag = "auth",
    params(("provider" = String, Path, description = "A name from `GET /api/v1/auth/oauth/providers`", example = "google")),
    responses(
        ResourceErrors,
        (status = 302, description = "To the provider's authorization page",
            headers(
                ("Location" = String, description = "The provider's authorization URL"),
                ("Set-Cookie" = String, description = "`keel_oauth_binding`: HttpOnly, SameSite=Lax, for the callback"),
            )),
        (status = 404, response = NotFound),
        (status = 503, response = inline(ProviderDown)),
    ))]
async fn authorize(
    State(state): State<AppState>,
    Extension(oauth): Extension<Arc<OAuth>>,
    AppPath(name): AppPath<String>,
) -> Result<Response, ApiError> {
    let provider = oauth.provider(&name)?;
    let authorization = provider.authorize(&oauth.http).await?;
    let binding = random_token();
    let pending = PendingSignIn {
        provider: provider.name.clone(),
        pkce_verifier: authorization.pkce_verifier.secret().clone(),
        nonce: authorization.nonce.map(|n| n.secret().clone()),
        binding: sha256_hex(&binding),
        created_at: chrono::Utc::now().timestamp(),
    };
    let value = serde_json::to_string(&pending).context("serialising a pending sign-in")?;
    let _: () = redis::cmd("SET")
        .arg(state_key(&state, authorization.state.secret()))
        .arg(value)
        .arg("EX")
        .arg(STATE_TTL_SECS)
        .query_async(&mut state.redis.conn())
        .await?;
    let location = HeaderValue::from_str(authorization.url.as_str())
        .context("the authorization URL is not a header value")?;
    let jar = CookieJar::new().add(oauth.binding_cookie(binding));
    Ok((
        StatusCode::FOUND,
        jar,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response())
}

/// 32 random bytes, URL-safe base64.
fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What a provider sends the browser back with.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CallbackQuery {
    /// The authorization code, on success.
    code: Option<String>,
    /// The `state` of `authorize`'s redirect.
    state: Option<String>,
    /// The provider's error code, when the user declined or it refused (`access_denied`).
    error: Option<String>,
    /// The provider's explanation of `error`.
    #[allow(
        dead_code,
        reason = "documented for providers; free text from the browser, so neither logged nor echoed"
    )]
    error_description: Option<String>,
    /// The provider's issuer (RFC 9207); when present it must be the provider's.
    iss: Option<String>,
}

/// Finishes signing in: checks `state` (single use, 10 minutes, this
/// browser's cookie), exchanges the code with its PKCE verifier, checks the
/// ID token (signature, issuer, audience, expiry, nonce), and answers as
/// `login` does: tokens, or a 2FA challenge when the account has 2FA on.
///
/// The account is the one linked to the provider's account; else the one
/// with the address the provider verified (linked now; if that account's
/// address was never verified, its password is removed and its sessions
/// end, as whoever set them never proved the address); else a new account
/// without a password. An address the provider did not verify is refused
/// (409) whether or not an account has it, so the answer tells nothing.
#[utoipa::path(get, path = "/api/v1/auth/oauth/{provider}/callback", tag = "auth",
    params(("provider" = String, Path, description = "The provider the sign-in started with", example = "google"), CallbackQuery),
    responses(
        ResourceErrors,
        (status = 200, description = "Tokens; or, with 2FA on, a challenge for `verify-2fa`. The binding cookie is removed whatever the answer.", body = SignIn,
            examples(
                ("tokens" = (summary = "signed in", value = json!({
                    "access_token": "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIwMTkzNmYwZS01YzRkLTdhMWItOWUyZi0zYTRiNWM2ZDdlOGYifQ.c2lnbmF0dXJl",
                    "refresh_token": "r7Vq2xN4b9TzK1mPwE3sYhL8uJ5cA0dG6fQ2iR4oX7k", "token_type": "bearer", "expires_in": 1800}))),
                ("challenge" = (summary = "2FA on: a code was mailed", value = json!({
                    "two_factor_required": true, "challenge_id": "01936f0e-9c3d-7f4e-8a5b-6c7d8e9fa0b1",
                    "method": "email", "expires_in": 600}))),
            )),
        (status = 400, response = inline(CallbackRefused)),
        (status = 401, response = inline(AccountDisabled)),
        (status = 404, response = NotFound),
        (status = 409, response = inline(EmailUnverified)),
        (status = 503, response = inline(ProviderOrStoreDown)),
    ))]
async fn callback(
    State(state): State<AppState>,
    Extension(oauth): Extension<Arc<OAuth>>,
    AppPath(name): AppPath<String>,
    AppQuery(query): AppQuery<CallbackQuery>,
    jar: CookieJar,
) -> Response {
    let binding = jar.get(BINDING_COOKIE).map(|c| c.value().to_owned());
    let result = finish(&state, &oauth, &name, query, binding.as_deref()).await;
    // Single use, like the state: gone whatever the outcome.
    let jar = jar.add(oauth.binding_removal());
    (
        jar,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        result.map(AppJson),
    )
        .into_response()
}

fn invalid_state() -> ApiError {
    ApiError::new(
        Code::InvalidOauthState,
        "this sign-in is unknown, expired, already finished, or was started in another browser; start again",
    )
}

async fn finish(
    state: &AppState,
    oauth: &OAuth,
    name: &str,
    query: CallbackQuery,
    binding: Option<&str>,
) -> Result<SignIn, ApiError> {
    let provider = oauth.provider(name)?;
    let oauth_state = query.state.as_deref().ok_or_else(invalid_state)?;
    // Taken out, not read: a state works once, whatever follows.
    let pending: Option<String> = redis::cmd("GETDEL")
        .arg(state_key(state, oauth_state))
        .query_async(&mut state.redis.conn())
        .await?;
    let pending: PendingSignIn = pending
        .and_then(|p| serde_json::from_str(&p).ok())
        .ok_or_else(invalid_state)?;
    let fresh = chrono::Utc::now().timestamp() - pending.created_at <= STATE_TTL_SECS as i64;
    let same_browser = binding.is_some_and(|b| sha256_hex(b) == pending.binding);
    if pending.provider != provider.name || !fresh || !same_browser {
        return Err(invalid_state());
    }
    // RFC 9207: an answer naming another issuer is a mix-up attack.
    if let (Some(iss), Some(issuer)) = (query.iss.as_deref(), provider.issuer())
        && iss != issuer
    {
        return Err(ApiError::new(
            Code::OauthIssuerMismatch,
            "the answer came from another issuer than the provider's; start again",
        ));
    }
    if let Some(error) = query.error.as_deref() {
        tracing::info!(provider = %provider.name, error = %provider::printable(error), "the provider ended the sign-in with an error");
        return Err(ApiError::new(
            Code::OauthDenied,
            format!(
                "{} did not sign you in ({})",
                provider.display_name,
                provider::printable(error)
            ),
        ));
    }
    let code = query.code.ok_or_else(|| {
        ApiError::new(
            Code::OauthCodeMissing,
            "the provider sent no authorization code",
        )
    })?;
    let identity = provider
        .exchange(
            &oauth.http,
            code,
            PkceCodeVerifier::new(pending.pkce_verifier),
            pending.nonce.map(Nonce::new),
        )
        .await?;
    let user = account_for(state, provider, &identity).await?;
    if !user.is_active {
        return Err(ApiError::new(
            Code::InvalidCredentials,
            "this account cannot sign in",
        ));
    }
    // The provider is one factor; an account with 2FA on still asks for its second.
    if user.two_fa_enabled || user.totp_enabled {
        return second_factor::challenge(state, &user)
            .await
            .map(SignIn::Challenge);
    }
    users::record_login(&state.db, user.id).await?;
    tracing::info!(user_id = %user.id, provider = %provider.name, "signed in through OAuth");
    issue(state, &user).await.map(SignIn::Tokens)
}

/// The account `identity` signs in to, linked or created as the module says.
/// Concurrent first sign-ins of one identity race on unique keys; the loser
/// starts over and finds what the winner stored.
async fn account_for(
    state: &AppState,
    provider: &Provider,
    identity: &Identity,
) -> Result<User, ApiError> {
    const ATTEMPTS: usize = 3;
    for attempt in 1..=ATTEMPTS {
        match try_account_for(state, provider, identity).await {
            Err(Race::Lost(e)) if attempt < ATTEMPTS => {
                tracing::debug!(error = %e, "a concurrent sign-in linked first; looking again");
            }
            Err(Race::Lost(e)) => return Err(e.into()),
            Err(Race::Failed(e)) => return Err(e),
            Ok(user) => return Ok(user),
        }
    }
    unreachable!("the last attempt returns")
}

/// A failure, or a unique violation to retry after.
enum Race {
    Lost(sqlx::Error),
    Failed(ApiError),
}

impl From<ApiError> for Race {
    fn from(e: ApiError) -> Self {
        Self::Failed(e)
    }
}

impl From<sqlx::Error> for Race {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Lost(e),
            _ => Self::Failed(e.into()),
        }
    }
}

async fn try_account_for(
    state: &AppState,
    provider: &Provider,
    identity: &Identity,
) -> Result<User, Race> {
    let db = &state.db;
    if let Some(user_id) = oauth::find_user_id(db, &provider.name, &identity.subject).await?
        && let Some(user) = users::find_by_id(db, user_id).await?
    {
        oauth::record_email(
            db,
            &provider.name,
            &identity.subject,
            identity.email.as_deref(),
        )
        .await?;
        return Ok(user);
    }
    let email = identity
        .email
        .as_deref()
        .and_then(|e| EmailAddress::parse(e).ok())
        .ok_or_else(|| {
            ApiError::new(
                Code::OauthEmailMissing,
                format!(
                    "{} gave no usable email address; allow Keel to read it, then sign in again",
                    provider.display_name
                ),
            )
        })?;
    if !identity.email_verified {
        tracing::info!(provider = %provider.name, "sign-in refused: the provider has not verified the address");
        return Err(ApiError::new(
            Code::OauthEmailUnverified,
            format!(
                "{} has not verified your email address; verify it there, then sign in again",
                provider.display_name
            ),
        )
        .into());
    }
    if let Some(user) = users::find_by_login(db, email.as_str()).await? {
        if !user.is_active {
            // Answered by the caller; nothing is linked to a disabled account.
            return Ok(user);
        }
        let mut tx = db.begin().await?;
        let claimed = oauth::claim_unverified_account(&mut *tx, user.id).await?;
        // Whoever registered the address without proving it keeps nothing:
        // sessions, API keys, sockets, and the second factors they set.
        let notice = if claimed {
            let ended = revocation::end_all(&mut tx, user.id, Scope::Claim).await?;
            let data = serde_json::json!({
                "username": user.username, "provider": provider.display_name,
                "api_keys_deleted": ended.api_keys, "second_factors_removed": ended.second_factors,
            });
            Some(
                email_deliveries::insert(
                    &mut *tx,
                    &user.email,
                    EmailTemplate::AccountClaimed.name(),
                    &data,
                )
                .await?,
            )
        } else {
            None
        };
        oauth::link(
            &mut *tx,
            &provider.name,
            &identity.subject,
            user.id,
            Some(email.as_str()),
        )
        .await?;
        tx.commit().await?;
        if let Some(notice) = notice {
            revocation::announce(state, user.id).await;
            emails::push(&state.db, &state.jobs, &notice).await;
            tracing::warn!(user_id = %user.id, provider = %provider.name,
                "an account with an unverified address went to the address's proven owner: password, sessions, API keys and second factors removed");
        }
        tracing::info!(user_id = %user.id, provider = %provider.name, "OAuth identity linked by verified email");
        return Ok(users::find_by_id(db, user.id).await?.unwrap_or(user));
    }
    let username = free_username(state, identity, &email).await?;
    let mut tx = db.begin().await?;
    let user_id = oauth::insert_user(&mut *tx, &username, &email).await?;
    oauth::link(
        &mut *tx,
        &provider.name,
        &identity.subject,
        user_id,
        Some(email.as_str()),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(%user_id, provider = %provider.name, "account created through OAuth");
    let user = users::find_by_id(db, user_id)
        .await?
        .context("the account just created is gone")
        .map_err(ApiError::from)?;
    Ok(user)
}

/// A username no account has, from the provider's handle or the address's
/// local part, with a random suffix when taken.
async fn free_username(
    state: &AppState,
    identity: &Identity,
    email: &EmailAddress,
) -> Result<Username, ApiError> {
    let local = email.as_str().split('@').next().unwrap_or_default();
    let base = [identity.username.as_deref(), Some(local)]
        .into_iter()
        .flatten()
        .map(username_stem)
        .find(|stem| stem.len() >= 3)
        .unwrap_or_else(|| "user".to_owned());
    for attempt in 0..5 {
        let candidate = if attempt == 0 {
            base.clone()
        } else {
            let suffix: u32 = rand::random();
            format!("{base}_{:06x}", suffix & 0xff_ffff)
        };
        let username = Username::parse(&candidate)
            .map_err(|e| anyhow::anyhow!("derived username {candidate:?} is invalid: {}", e.0))?;
        if !users::username_taken(&state.db, &username).await? {
            return Ok(username);
        }
    }
    // Five taken in a row: a longer suffix, and the insert's unique key decides.
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    Username::parse(&format!("{base}_{}", &suffix[..12]))
        .map_err(|e| anyhow::anyhow!("derived username is invalid: {}", e.0).into())
}

/// `s` cut down to what a username may hold (`[A-Za-z0-9_.-]`), at most 36
/// characters so a suffix still fits in 50.
fn username_stem(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') => Some(c),
            ' ' => Some('_'),
            _ => None,
        })
        .take(36)
        .collect()
}

problem_response!(
    /// `oauth_provider_unavailable`: the provider's discovery document cannot be
    /// fetched; or `service_unavailable`: Redis is down.
    ProviderDown = [OauthProviderUnavailable, ServiceUnavailable]
);
problem_response!(
    /// `invalid_oauth_state` (unknown, expired or used `state`, or not this
    /// browser's), `oauth_denied` (the provider sent `error`),
    /// `oauth_code_missing`, `oauth_code_rejected` (the provider refused the code),
    /// `oauth_id_token_invalid`, `oauth_issuer_mismatch`, `oauth_email_missing`.
    CallbackRefused = [InvalidOauthState, OauthDenied, OauthCodeMissing, OauthCodeRejected, OauthIdTokenInvalid, OauthIssuerMismatch, OauthEmailMissing]
);
problem_response!(
    /// `invalid_credentials`: the account is disabled.
    AccountDisabled = [InvalidCredentials]
);
problem_response!(
    /// `oauth_email_unverified`: the provider has not verified the address.
    EmailUnverified = [OauthEmailUnverified]
);
problem_response!(
    /// `oauth_provider_unavailable`: the provider cannot be reached or answers
    /// nonsense; or `service_unavailable`: PostgreSQL or Redis is down.
    ProviderOrStoreDown = [OauthProviderUnavailable, ServiceUnavailable]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_keep_to_the_alphabet_and_leave_room_for_a_suffix() {
        assert_eq!(username_stem("Ada Lovelace"), "Ada_Lovelace");
        assert_eq!(username_stem("josé+tag"), "jostag");
        assert_eq!(username_stem("日本"), "");
        assert_eq!(username_stem(&"x".repeat(80)).len(), 36);
        let longest = format!("{}_{:06x}", username_stem(&"x".repeat(80)), 0xff_ffff);
        assert!(Username::parse(&longest).is_ok(), "{longest}");
    }

    #[test]
    fn the_binding_cookie_goes_to_the_callbacks_path() {
        for (template, path) in [
            (
                "http://localhost:8000/api/v1/auth/oauth/{provider}/callback",
                "/api/v1/auth/oauth",
            ),
            (
                "https://keel.example.com/app/api/v1/auth/oauth/{provider}/callback",
                "/app/api/v1/auth/oauth",
            ),
            ("https://keel.example.com/{provider}", "/"),
            ("https://keel.example.com/cb?p={provider}", "/"),
        ] {
            assert_eq!(cookie_path(template), path, "{template}");
        }
    }
}
