//! `Principal`: the authenticated caller of a request — a user, proven by a
//! bearer access token or an `X-API-Key` — and the role checks handlers make.

use axum::{
    extract::{FromRequestParts, OptionalFromRequestParts},
    http::request::Parts,
};
use keel_shared::{
    db::{api_keys, users::User},
    domain::Role,
};
use uuid::Uuid;

use super::tokens::{AccessClaims, TokenError, hash_secret};
use crate::problems::Code;
use crate::{error::ApiError, state::AppState};

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `session`: the sign-in the token belongs to, if it came from one;
    /// `expires`: its `exp` (Unix seconds).
    AccessToken { session: Option<Uuid>, expires: i64 },
    /// An API key acts as its owner, but cannot mint keys or change passwords.
    ApiKey { key_id: Uuid },
}

/// The caller: an active user, and how they signed in.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: User,
    pub method: AuthMethod,
}

impl Principal {
    pub fn id(&self) -> Uuid {
        self.user.id
    }

    pub fn role(&self) -> Role {
        self.user.role
    }

    pub fn is_admin(&self) -> bool {
        self.user.role >= Role::Admin
    }

    /// 403 unless the caller's role is at least `role`.
    ///
    /// # Errors
    /// The caller's role is lower.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.user.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("this needs the {role} role")))
        }
    }

    /// 403 for API keys: some acts need the user's own session.
    ///
    /// # Errors
    /// The caller used an API key.
    pub fn require_session(&self) -> Result<(), ApiError> {
        match self.method {
            AuthMethod::AccessToken { .. } => Ok(()),
            AuthMethod::ApiKey { .. } => Err(ApiError::new(
                Code::ApiKeyNotAllowed,
                "an API key cannot do this; sign in with a password",
            )),
        }
    }
}

/// The user an access token stands for, and its claims: the signature and
/// times checked, then the user — active, at the token's version (a
/// password, role or active change ends it), its sign-in not signed out.
///
/// # Errors
/// 401 `token_expired` or `invalid_token`; 503 with the database down.
pub(crate) async fn bearer(
    state: &AppState,
    token: &str,
) -> Result<(User, AccessClaims), ApiError> {
    let claims = state.tokens.verify_access(token).map_err(|e| match e {
        TokenError::Expired => ApiError::new(Code::TokenExpired, "the access token has expired"),
        TokenError::Invalid => ApiError::new(Code::InvalidToken, "the access token is invalid"),
    })?;
    match state.users.get(&state.db, claims.sub).await? {
        Some(cached)
            if cached.user.is_active
                && cached.user.token_version == claims.ver
                && !cached.session_ended(claims.sid) =>
        {
            Ok((cached.user, claims))
        }
        _ => Err(ApiError::new(
            Code::InvalidToken,
            "the access token is no longer valid",
        )),
    }
}

/// What the request presented, if anything.
pub(crate) enum Credential<'a> {
    Bearer(&'a str),
    ApiKey(&'a str),
}

pub(crate) fn credential(parts: &Parts) -> Result<Option<Credential<'_>>, ApiError> {
    if let Some(value) = parts.headers.get("authorization") {
        let value = value
            .to_str()
            .map_err(|_| ApiError::new(Code::InvalidToken, "malformed Authorization header"))?;
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(ApiError::new(
                Code::InvalidToken,
                "expected Authorization: Bearer <token>",
            ));
        }
        return Ok(Some(Credential::Bearer(token.trim())));
    }
    if let Some(value) = parts.headers.get("x-api-key") {
        let key = value
            .to_str()
            .map_err(|_| ApiError::new(Code::InvalidApiKey, "malformed X-API-Key header"))?;
        return Ok(Some(Credential::ApiKey(key.trim())));
    }
    Ok(None)
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match credential(parts)? {
            Some(credential) => authenticate(state, credential).await,
            None => Err(ApiError::new(
                Code::NotAuthenticated,
                "sign in: send a bearer token or an API key",
            )),
        }
    }
}

impl OptionalFromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    /// Anonymous is fine; a credential that is presented must be valid.
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        match credential(parts)? {
            Some(credential) => authenticate(state, credential).await.map(Some),
            None => Ok(None),
        }
    }
}

pub(crate) async fn authenticate(
    state: &AppState,
    credential: Credential<'_>,
) -> Result<Principal, ApiError> {
    match credential {
        Credential::Bearer(token) => {
            let (user, claims) = bearer(state, token).await?;
            Ok(Principal {
                user,
                method: AuthMethod::AccessToken {
                    session: claims.sid,
                    expires: claims.exp,
                },
            })
        }
        Credential::ApiKey(key) => {
            let invalid =
                || ApiError::new(Code::InvalidApiKey, "the API key is invalid or expired");
            let api_key = api_keys::find_live_by_hash(&state.db, &hash_secret(key))
                .await?
                .ok_or_else(invalid)?;
            let user = state.users.get(&state.db, api_key.user_id).await?;
            let user = user
                .map(|cached| cached.user)
                .filter(|u| u.is_active)
                .ok_or_else(invalid)?;
            api_keys::touch(&state.db, api_key.id).await?;
            Ok(Principal {
                user,
                method: AuthMethod::ApiKey { key_id: api_key.id },
            })
        }
    }
}
