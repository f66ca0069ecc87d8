//! Who is looking at the dashboard: `Admin`, the extractor every page and
//! action takes, and the sign-in and sign-out that set its cookie.
//!
//! The cookie holds an access token, so it ends like one: at its expiry, or
//! at once when the user's password, role or active flag changes. Actions
//! must carry `csrf`, a digest of the session's token that a page from
//! another origin cannot read; `Origin`, when the browser sends it, must be
//! ours as well.

use axum::{
    Form,
    extract::{FromRequestParts, Query, State},
    http::{HeaderMap, StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use keel_shared::{
    db::{refresh_tokens, users::User},
    domain::Role,
};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::{PageError, views};
use crate::{
    accounts::sessions::{self, issue},
    auth::{
        AuthMethod, Principal,
        client_ip::ClientIp,
        principal::{Credential, authenticate, credential},
        revocation,
    },
    error::ApiError,
    problems::Code,
    responses::SignIn,
    second_factor,
    state::AppState,
};

const COOKIE: &str = "keel_dashboard";
const PATH: &str = "/dashboard";

/// An admin, signed in by the dashboard's cookie, a bearer token or an API key.
#[derive(Debug)]
pub struct Admin {
    pub principal: Principal,
    /// What forms must send back as `csrf`.
    pub csrf: String,
    /// Whether the browser's cookie signed the request in (only then can a
    /// request be forged by another site).
    by_cookie: bool,
}

impl Admin {
    /// 403 unless `form_token` is this session's CSRF token (cookie sessions).
    ///
    /// # Errors
    /// The token is missing or wrong.
    pub fn check_csrf(&self, form_token: &str) -> Result<(), PageError> {
        if !self.by_cookie || constant_time_eq(form_token.as_bytes(), self.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::new(
                Code::CsrfFailed,
                "this form is stale or came from another site; reload the page and try again",
            )
            .into())
        }
    }
}

/// Not signed in: browsers go to the sign-in page and come back after.
#[derive(Debug)]
pub enum Refusal {
    /// `expired`: a session cookie came and no longer works, so it is dropped.
    SignIn {
        next: String,
        expired: bool,
    },
    Page(PageError),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::SignIn { next, expired } => {
                let target = format!("{PATH}/login?next={}", url_escape(&next));
                // Only a cookie that came and failed is dropped: a link from
                // another site arrives without the (SameSite=Strict) cookie,
                // and must not end the session the browser still holds.
                let jar = if expired {
                    CookieJar::new().add(removal())
                } else {
                    CookieJar::new()
                };
                (jar, Redirect::to(&target)).into_response()
            }
            Self::Page(e) => e.into_response(),
        }
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = Refusal;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // After signing in, come back here; an action (a POST) goes back to
        // the page it belongs to instead.
        let back = if parts.method == axum::http::Method::GET {
            parts.uri.path_and_query().map_or(PATH, |p| p.as_str())
        } else {
            parts
                .uri
                .path()
                .rsplit_once('/')
                .map_or(PATH, |(page, _)| page)
        };
        let back = back.to_owned();
        let sign_in = |expired| Refusal::SignIn {
            next: back.clone(),
            expired,
        };
        let header_credential = credential(parts).map_err(|e| Refusal::Page(e.into()))?;
        let jar = CookieJar::from_headers(&parts.headers);
        let (credential, by_cookie) = match header_credential {
            Some(credential) => (credential, false),
            None => match jar.get(COOKIE) {
                Some(cookie) => (Credential::Bearer(cookie.value()), true),
                None => return Err(sign_in(false)),
            },
        };
        let token_digest = match &credential {
            Credential::Bearer(token) | Credential::ApiKey(token) => csrf_token(token),
        };
        let principal = match authenticate(state, credential).await {
            Ok(principal) => principal,
            Err(ApiError::Unauthorized { .. }) if by_cookie => return Err(sign_in(true)),
            Err(e) => return Err(Refusal::Page(e.into())),
        };
        principal
            .require(Role::Admin)
            .map_err(|e| Refusal::Page(e.into()))?;
        Ok(Self {
            principal,
            csrf: token_digest,
            by_cookie,
        })
    }
}

/// The CSRF token of a session: a digest of its secret, so knowing it does
/// not reveal the secret, and another site cannot compute it.
fn csrf_token(secret: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"keel-dashboard-csrf\0")
        .chain_update(secret.as_bytes())
        .finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 403 when the browser says the form came from another origin. Browsers
/// send `Origin` on every form POST; tools that send none pass through to
/// the other checks.
///
/// # Errors
/// `Origin` names another host than the request's `Host`.
pub fn check_origin(headers: &HeaderMap) -> Result<(), PageError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err(ApiError::new(Code::CrossOrigin, "this form was posted from another site").into()),
    }
}

/// Only paths inside the dashboard are followed after sign-in (no open redirect).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        // Visible ASCII only: the path goes into a `Location` header.
        Some(n)
            if n.starts_with(PATH)
                && !n.starts_with("//")
                && !n.contains('\\')
                && n.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            n
        }
        _ => PATH,
    }
}

fn url_escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The cookie that makes the browser drop the session's.
fn removal() -> Cookie<'static> {
    let mut cookie = Cookie::build((COOKIE, "")).path(PATH).build();
    cookie.make_removal();
    cookie
}

fn session_cookie(access_token: String) -> Cookie<'static> {
    Cookie::build((COOKIE, access_token))
        .path(PATH)
        .http_only(true)
        // Browsers keep Secure cookies for http://localhost too, so this holds in development.
        .secure(true)
        .same_site(SameSite::Strict)
        // No Max-Age: the token inside expires on its own, and the browser
        // forgets the cookie when it closes.
        .build()
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

pub async fn login_page(Query(query): Query<LoginQuery>) -> Response {
    views::render(
        "login.html",
        minijinja::context! { next => safe_next(query.next.as_deref()) },
    )
    .into_response()
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    username_or_email: String,
    password: String,
    next: Option<String>,
}

/// The password step: the API's sign-in, then a cookie for an admin, or the
/// code step when 2FA is on.
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, PageError> {
    check_origin(&headers)?;
    let next = safe_next(form.next.as_deref()).to_owned();
    let signed_in = sessions::sign_in(&state, ip, &form.username_or_email, &form.password).await;
    match signed_in {
        Ok(SignIn::Tokens(tokens)) => {
            let principal = authenticate(&state, Credential::Bearer(&tokens.access_token)).await?;
            start_session(&principal.user, tokens.access_token, &next)
        }
        Ok(SignIn::Challenge(challenge)) => Ok(views::render(
            "login.html",
            minijinja::context! {
                next,
                challenge_id => challenge.challenge_id.to_string(),
                method => challenge.method.as_str(),
            },
        )
        .into_response()),
        Err(e) => Ok(refused(e, &next, None)),
    }
}

#[derive(Debug, Deserialize)]
pub struct SecondFactorForm {
    challenge_id: Uuid,
    code: String,
    next: Option<String>,
}

/// The code step of a 2FA sign-in.
pub async fn second_factor(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Form(form): Form<SecondFactorForm>,
) -> Result<Response, PageError> {
    check_origin(&headers)?;
    let next = safe_next(form.next.as_deref()).to_owned();
    match second_factor::pass_challenge(&state, ip, form.challenge_id, form.code.trim()).await {
        Ok(user) if user.role < Role::Admin => {
            Err(ApiError::forbidden("the dashboard is for admins").into())
        }
        Ok(user) => {
            let tokens = issue(&state, &user).await?;
            start_session(&user, tokens.access_token, &next)
        }
        Err(e) => Ok(refused(e, &next, Some(form.challenge_id))),
    }
}

/// The cookie holds the access token of a sign-in of its own, so the
/// dashboard's sign-out ends it (and nothing else) everywhere.
fn start_session(user: &User, access_token: String, next: &str) -> Result<Response, PageError> {
    if user.role < Role::Admin {
        return Err(ApiError::forbidden("the dashboard is for admins").into());
    }
    tracing::info!(user_id = %user.id, "dashboard session started");
    let jar = CookieJar::new().add(session_cookie(access_token));
    Ok((jar, Redirect::to(next)).into_response())
}

/// The sign-in page again, with the reason and the status the API would give.
fn refused(e: ApiError, next: &str, challenge_id: Option<Uuid>) -> Response {
    let paused = matches!(
        e,
        ApiError::Paused {
            code: Code::SecondFactorLocked,
            ..
        }
    );
    let (parts, _) = PageError::from(e).into_response().into_parts();
    let message = match parts.status {
        StatusCode::UNAUTHORIZED if challenge_id.is_some() => "That code is wrong or expired.",
        StatusCode::UNAUTHORIZED => "Wrong username, email or password.",
        StatusCode::TOO_MANY_REQUESTS if paused => {
            "Too many wrong codes: the second step is paused for an hour, and the account's owner was mailed."
        }
        StatusCode::TOO_MANY_REQUESTS => "Too many attempts; wait a minute and try again.",
        _ => "Sign-in is unavailable right now; try again shortly.",
    };
    let html = views::render(
        "login.html",
        minijinja::context! { next, challenge_id => challenge_id.map(|id| id.to_string()), message },
    );
    // The refusal's headers stay (Retry-After on 429 and 503).
    Response::from_parts(parts, html.0.into())
}

#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    csrf: String,
}

/// Signs the dashboard's session out: the cookie is dropped, and its
/// sign-in ended, so a copy of the cookie's token no longer works as a
/// bearer token either.
pub async fn logout(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Result<Response, PageError> {
    check_origin(&headers)?;
    admin.check_csrf(&form.csrf)?;
    if let AuthMethod::AccessToken {
        session: Some(session),
        ..
    } = admin.principal.method
    {
        let user_id = admin.principal.id();
        refresh_tokens::revoke_session(&state.db, user_id, session)
            .await
            .map_err(ApiError::from)?;
        revocation::announce(&state, user_id).await;
    }
    let jar = CookieJar::new().add(removal());
    Ok((jar, Redirect::to(&format!("{PATH}/login"))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dashboard_paths_are_followed_after_sign_in() {
        assert_eq!(
            safe_next(Some("/dashboard/tasks?status=failed")),
            "/dashboard/tasks?status=failed"
        );
        assert_eq!(safe_next(Some("https://evil.example/")), PATH);
        assert_eq!(safe_next(Some("//evil.example/dashboard")), PATH);
        assert_eq!(safe_next(Some("/api/v1/users")), PATH);
        assert_eq!(safe_next(None), PATH);
        assert_eq!(
            safe_next(Some("/dashboard\r\nX: y")),
            PATH,
            "no header injection"
        );
        assert_eq!(safe_next(Some("/dashboard\u{7f}")), PATH);
        assert_eq!(safe_next(Some("/dashboard/tasks?q=a b")), PATH);
    }

    #[test]
    fn a_csrf_token_is_a_stable_digest_of_its_session() {
        let token = csrf_token("session-a");
        assert_eq!(token.len(), 32);
        assert_eq!(token, csrf_token("session-a"));
        assert_ne!(token, csrf_token("session-b"));
        assert!(constant_time_eq(
            token.as_bytes(),
            csrf_token("session-a").as_bytes()
        ));
        assert!(!constant_time_eq(b"short", token.as_bytes()));
    }

    #[test]
    fn origin_must_match_host_when_sent() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:8000".parse().unwrap());
        assert!(
            check_origin(&headers).is_ok(),
            "no Origin: other checks decide"
        );
        headers.insert(header::ORIGIN, "http://127.0.0.1:8000".parse().unwrap());
        assert!(check_origin(&headers).is_ok());
        headers.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(check_origin(&headers).is_err());
        headers.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(check_origin(&headers).is_err());
    }
}
