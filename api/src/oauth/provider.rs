//! The providers Keel signs in with — the Google and GitHub presets and
//! OpenID Connect providers by issuer — and the two halves of their flow:
//! the authorization URL, and a code exchanged for a checked identity.
//!
//! A discovered provider's endpoints and every provider's signing keys are
//! fetched on first use and kept for an hour, so a provider that is down
//! makes only its own sign-ins fail (503), and only while it is down.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use keel_shared::Config;
use oauth2::basic::{BasicClient, BasicErrorResponseType};
use openidconnect::{
    AccessToken, AuthType, AuthUrl, AuthorizationCode, ClaimsVerificationError, ClientId,
    ClientSecret, CsrfToken, DiscoveryError, IssuerUrl, JsonWebKeySetUrl, Nonce,
    OAuth2TokenResponse as _, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError,
    Scope, SignatureVerificationError, StandardErrorResponse, TokenResponse as _, TokenUrl,
    UserInfoError, UserInfoUrl,
    core::{
        CoreAuthenticationFlow, CoreClient, CoreClientAuthMethod, CoreIdTokenClaims,
        CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJwsSigningAlgorithm, CoreProviderMetadata,
        CoreUserInfoClaims,
    },
    http::{self, header},
    url::Url,
};
use secrecy::ExposeSecret as _;
use serde::Deserialize;

use super::http::{CallError, OAuthHttp};
use crate::error::ApiError;
use crate::problems::Code;

// Google publishes these in its discovery document; they are fixed here so
// that the authorize URL needs no call out.
const GOOGLE_ISSUER: &str = "https://accounts.google.com";
const GOOGLE_AUTHORIZE: &str = "https://accounts.google.com/o/oauth2/v2/auth";
const GOOGLE_TOKEN: &str = "https://oauth2.googleapis.com/token";
const GOOGLE_USERINFO: &str = "https://openidconnect.googleapis.com/v1/userinfo";
const GOOGLE_JWKS: &str = "https://www.googleapis.com/oauth2/v3/certs";

const GITHUB_AUTHORIZE: &str = "https://github.com/login/oauth/authorize";
const GITHUB_TOKEN: &str = "https://github.com/login/oauth/access_token";
const GITHUB_API: &str = "https://api.github.com";

/// How long discovered endpoints and fetched keys are used before being fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);

/// The ID-token signatures accepted: asymmetric ones only. An HMAC signed
/// with the client secret would let anyone holding the secret mint tokens.
const SIGNING_ALGS: [CoreJwsSigningAlgorithm; 9] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// How a provider tells who signed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// OpenID Connect: a signed ID token.
    Oidc,
    /// Plain OAuth 2.0: the provider's own API (GitHub).
    OAuth2,
}

/// The configured providers: the presets with credentials, then `OAUTH_OIDC_PROVIDERS`.
#[derive(Debug)]
pub struct Providers {
    list: Vec<Provider>,
}

impl Providers {
    /// # Errors
    /// A URL of the configuration does not parse (the config's parsers
    /// already refused such values, so this is not expected).
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let mut list = Vec::new();
        if let (Some(id), Some(secret)) = (
            &config.oauth.google_client_id,
            &config.oauth.google_client_secret,
        ) {
            let endpoints = Endpoints {
                authorize: AuthUrl::new(GOOGLE_AUTHORIZE.into())?,
                token: TokenUrl::new(GOOGLE_TOKEN.into())?,
                userinfo: Some(UserInfoUrl::new(GOOGLE_USERINFO.into())?),
                jwks: JsonWebKeySetUrl::new(GOOGLE_JWKS.into())?,
                auth_type: AuthType::BasicAuth,
            };
            list.push(Provider::new(
                config,
                ("google", "Google"),
                (id, secret.expose_secret()),
                &["email", "profile"],
                Protocol::Oidc(Box::new(Oidc::new(
                    IssuerUrl::new(GOOGLE_ISSUER.into())?,
                    Some(endpoints),
                ))),
            )?);
        }
        if let (Some(id), Some(secret)) = (
            &config.oauth.github_client_id,
            &config.oauth.github_client_secret,
        ) {
            list.push(Provider::new(
                config,
                ("github", "GitHub"),
                (id, secret.expose_secret()),
                &["read:user", "user:email"],
                Protocol::GitHub,
            )?);
        }
        for p in &config.oauth.oidc_providers.0 {
            let scopes: Vec<&str> = p.scopes.iter().map(String::as_str).collect();
            list.push(Provider::new(
                config,
                (&p.name, &p.display_name),
                (&p.client_id, p.client_secret.expose_secret()),
                &scopes,
                Protocol::Oidc(Box::new(Oidc::new(IssuerUrl::new(p.issuer.clone())?, None))),
            )?);
        }
        Ok(Self { list })
    }

    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.list.iter().find(|p| p.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Provider> {
        self.list.iter()
    }
}

/// One provider, as Keel's client of it.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub display_name: String,
    client_id: ClientId,
    client_secret: ClientSecret,
    redirect_uri: RedirectUrl,
    /// Besides `openid`, which the OpenID Connect client always adds.
    scopes: Vec<Scope>,
    protocol: Protocol,
}

#[derive(Debug)]
enum Protocol {
    Oidc(Box<Oidc>),
    GitHub,
}

/// An OpenID Connect provider's endpoints and keys, cached.
#[derive(Debug)]
struct Oidc {
    issuer: IssuerUrl,
    /// Known in advance (a preset): never discovered.
    fixed: Option<Endpoints>,
    discovered: Mutex<Option<(Endpoints, Instant)>>,
    keys: Mutex<Option<(CoreJsonWebKeySet, Instant)>>,
}

#[derive(Clone, Debug)]
struct Endpoints {
    authorize: AuthUrl,
    token: TokenUrl,
    userinfo: Option<UserInfoUrl>,
    jwks: JsonWebKeySetUrl,
    /// How the client secret goes to the token endpoint.
    auth_type: AuthType,
}

/// Where to send the browser, and what the callback needs to finish. The
/// verifier and nonce are secrets until the flow ends.
#[derive(Debug)]
pub struct Authorization {
    pub url: Url,
    pub state: CsrfToken,
    pub pkce_verifier: PkceCodeVerifier,
    /// OpenID Connect only.
    pub nonce: Option<Nonce>,
}

/// Who signed in, as the provider vouches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The provider's stable id of the account (`sub`; GitHub's numeric id).
    pub subject: String,
    pub email: Option<String>,
    /// Whether the provider says the address is its owner's.
    pub email_verified: bool,
    /// A handle to derive a username from (`preferred_username`, GitHub's login).
    pub username: Option<String>,
}

impl Provider {
    fn new(
        config: &Config,
        (name, display_name): (&str, &str),
        (client_id, client_secret): (&str, &str),
        scopes: &[&str],
        protocol: Protocol,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            name: name.to_owned(),
            display_name: display_name.to_owned(),
            client_id: ClientId::new(client_id.to_owned()),
            client_secret: ClientSecret::new(client_secret.to_owned()),
            redirect_uri: RedirectUrl::new(config.oauth_redirect_uri(name))?,
            scopes: scopes.iter().map(|s| Scope::new((*s).to_owned())).collect(),
            protocol,
        })
    }

    pub fn kind(&self) -> Kind {
        match self.protocol {
            Protocol::Oidc(_) => Kind::Oidc,
            Protocol::GitHub => Kind::OAuth2,
        }
    }

    /// The issuer an OpenID Connect provider names itself by.
    pub fn issuer(&self) -> Option<&str> {
        match &self.protocol {
            Protocol::Oidc(oidc) => Some(oidc.issuer.as_str()),
            Protocol::GitHub => None,
        }
    }

    /// A fresh authorization request: state, PKCE (S256) and, for OpenID
    /// Connect, a nonce. Discovers the provider first if need be.
    ///
    /// # Errors
    /// Discovery fails: 503 `oauth_provider_unavailable`.
    pub async fn authorize(&self, http: &OAuthHttp) -> Result<Authorization, ApiError> {
        let (challenge, pkce_verifier) = PkceCodeChallenge::new_random_sha256();
        match &self.protocol {
            Protocol::Oidc(oidc) => {
                let endpoints = oidc.endpoints(self, http).await?;
                // The keys are not needed to build a URL.
                let client = CoreClient::new(
                    self.client_id.clone(),
                    oidc.issuer.clone(),
                    CoreJsonWebKeySet::new(Vec::new()),
                )
                .set_auth_uri(endpoints.authorize)
                .set_redirect_uri(self.redirect_uri.clone());
                let (url, state, nonce) = client
                    .authorize_url(
                        CoreAuthenticationFlow::AuthorizationCode,
                        CsrfToken::new_random,
                        Nonce::new_random,
                    )
                    .add_scopes(self.scopes.iter().cloned())
                    .set_pkce_challenge(challenge)
                    .url();
                Ok(Authorization {
                    url,
                    state,
                    pkce_verifier,
                    nonce: Some(nonce),
                })
            }
            Protocol::GitHub => {
                let (url, state) = self
                    .github_client()?
                    .authorize_url(CsrfToken::new_random)
                    .add_scopes(self.scopes.iter().cloned())
                    .set_pkce_challenge(challenge)
                    .url();
                Ok(Authorization {
                    url,
                    state,
                    pkce_verifier,
                    nonce: None,
                })
            }
        }
    }

    /// Exchanges `code` (with the verifier of its request) and tells who signed in.
    ///
    /// # Errors
    /// The provider refuses the code (400 `oauth_code_rejected`), its ID
    /// token fails a check (400 `oauth_id_token_invalid`), or it cannot be
    /// reached or answers nonsense (503 `oauth_provider_unavailable`).
    pub async fn exchange(
        &self,
        http: &OAuthHttp,
        code: String,
        pkce_verifier: PkceCodeVerifier,
        nonce: Option<Nonce>,
    ) -> Result<Identity, ApiError> {
        match &self.protocol {
            Protocol::Oidc(oidc) => {
                let nonce = nonce.ok_or_else(|| {
                    anyhow::anyhow!("an OpenID Connect sign-in was stored without its nonce")
                })?;
                self.exchange_oidc(oidc, http, code, pkce_verifier, &nonce)
                    .await
            }
            Protocol::GitHub => self.exchange_github(http, code, pkce_verifier).await,
        }
    }

    async fn exchange_oidc(
        &self,
        oidc: &Oidc,
        http: &OAuthHttp,
        code: String,
        pkce_verifier: PkceCodeVerifier,
        nonce: &Nonce,
    ) -> Result<Identity, ApiError> {
        let endpoints = oidc.endpoints(self, http).await?;
        let client = CoreClient::new(
            self.client_id.clone(),
            oidc.issuer.clone(),
            CoreJsonWebKeySet::new(Vec::new()),
        )
        .set_client_secret(self.client_secret.clone())
        .set_auth_type(endpoints.auth_type.clone())
        .set_auth_uri(endpoints.authorize.clone())
        .set_token_uri(endpoints.token.clone())
        .set_redirect_uri(self.redirect_uri.clone());
        let response = client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(pkce_verifier)
            .request_async(http)
            .await
            .map_err(|e| self.token_error(e))?;
        let id_token = response
            .id_token()
            .ok_or_else(|| id_token_invalid(&self.name, "the token response has no ID token"))?;

        let keys = oidc.keys(self, &endpoints, http, false).await?;
        let claims: CoreIdTokenClaims = match id_token.claims(&self.verifier(oidc, keys), nonce) {
            Ok(claims) => claims.clone(),
            // Keys rotate: an unknown key id is worth one fresh fetch.
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                let keys = oidc.keys(self, &endpoints, http, true).await?;
                id_token
                    .claims(&self.verifier(oidc, keys), nonce)
                    .map_err(|e| id_token_invalid(&self.name, e))?
                    .clone()
            }
            Err(e) => return Err(id_token_invalid(&self.name, e)),
        };

        let mut identity = Identity {
            subject: claims.subject().as_str().to_owned(),
            email: claims.email().map(|e| e.as_str().to_owned()),
            email_verified: claims.email_verified().unwrap_or(false),
            username: claims.preferred_username().map(|u| u.as_str().to_owned()),
        };
        // Many providers put only `sub` in the ID token and the rest in userinfo.
        if identity.email.is_none()
            && let Some(userinfo) = endpoints.userinfo
        {
            let info: CoreUserInfoClaims = client
                .set_user_info_url(userinfo)
                .user_info(
                    AccessToken::new(response.access_token().secret().clone()),
                    // Refused unless userinfo speaks of the ID token's subject.
                    Some(claims.subject().clone()),
                )
                .request_async(http)
                .await
                .map_err(|e| self.userinfo_error(e))?;
            identity.email = info.email().map(|e| e.as_str().to_owned());
            identity.email_verified = info.email_verified().unwrap_or(false);
            identity.username = identity
                .username
                .or_else(|| info.preferred_username().map(|u| u.as_str().to_owned()));
        }
        Ok(identity)
    }

    fn verifier(&self, oidc: &Oidc, keys: CoreJsonWebKeySet) -> CoreIdTokenVerifier<'static> {
        // A public-client verifier: without the secret, no HMAC can verify.
        CoreIdTokenVerifier::new_public_client(self.client_id.clone(), oidc.issuer.clone(), keys)
            .set_allowed_algs(SIGNING_ALGS)
    }

    fn github_client(
        &self,
    ) -> Result<
        BasicClient<
            oauth2::EndpointSet,
            oauth2::EndpointNotSet,
            oauth2::EndpointNotSet,
            oauth2::EndpointNotSet,
            oauth2::EndpointSet,
        >,
        ApiError,
    > {
        let url = |e: oauth2::url::ParseError| anyhow::Error::new(e).context("a GitHub URL");
        Ok(BasicClient::new(self.client_id.clone())
            .set_client_secret(self.client_secret.clone())
            // GitHub reads the client's credentials from the form, not from Basic auth.
            .set_auth_type(AuthType::RequestBody)
            .set_auth_uri(AuthUrl::new(GITHUB_AUTHORIZE.into()).map_err(url)?)
            .set_token_uri(TokenUrl::new(GITHUB_TOKEN.into()).map_err(url)?)
            .set_redirect_uri(self.redirect_uri.clone()))
    }

    async fn exchange_github(
        &self,
        http: &OAuthHttp,
        code: String,
        pkce_verifier: PkceCodeVerifier,
    ) -> Result<Identity, ApiError> {
        let response = self
            .github_client()?
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(pkce_verifier)
            .request_async(http)
            .await
            .map_err(|e| self.token_error(e))?;
        let token = response.access_token();
        let user: GitHubUser = self.github_get(http, token, "/user").await?;
        let emails: Vec<GitHubEmail> = self.github_get(http, token, "/user/emails").await?;
        let (email, email_verified) = github_email(&emails)
            .map_or((None, false), |(email, verified)| {
                (Some(email.to_owned()), verified)
            });
        Ok(Identity {
            subject: user.id.to_string(),
            email,
            email_verified,
            username: Some(user.login),
        })
    }

    async fn github_get<T: serde::de::DeserializeOwned>(
        &self,
        http: &OAuthHttp,
        token: &AccessToken,
        path: &str,
    ) -> Result<T, ApiError> {
        let request = http::Request::get(format!("{GITHUB_API}{path}"))
            .header(header::ACCEPT, "application/vnd.github+json")
            .header(header::AUTHORIZATION, format!("Bearer {}", token.secret()))
            // GitHub refuses requests without one.
            .header(header::USER_AGENT, "keel")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .body(Vec::new())
            .map_err(|e| anyhow::Error::new(e).context("building a GitHub API request"))?;
        let response = http
            .send(request)
            .await
            .map_err(|e| unavailable(self, "the GitHub API is unreachable", e))?;
        if !response.status().is_success() {
            return Err(unavailable(
                self,
                "the GitHub API refused a call",
                format!("GET {path}: {}", response.status()),
            ));
        }
        serde_json::from_slice(response.body()).map_err(|e| {
            unavailable(
                self,
                "the GitHub API answered what Keel cannot read",
                format!("GET {path}: line {} column {}", e.line(), e.column()),
            )
        })
    }

    /// The token endpoint's refusal of a code is the client's 400; anything
    /// else is the provider's (or Keel's configuration's) fault.
    fn token_error(
        &self,
        e: RequestTokenError<CallError, StandardErrorResponse<BasicErrorResponseType>>,
    ) -> ApiError {
        let refusal = match e {
            RequestTokenError::ServerResponse(refusal) => refusal,
            // GitHub answers a refused code with 200 and an error body.
            RequestTokenError::Parse(_, body) => {
                match serde_json::from_slice::<StandardErrorResponse<BasicErrorResponseType>>(&body)
                {
                    Ok(refusal) => refusal,
                    // The parser's message may quote the body, which may hold a token.
                    Err(_) => {
                        return unavailable(
                            self,
                            "the token endpoint answered what Keel cannot read",
                            "unparsable token response",
                        );
                    }
                }
            }
            RequestTokenError::Request(e) => {
                return unavailable(self, "the token endpoint is unreachable", e);
            }
            RequestTokenError::Other(reason) => {
                return unavailable(self, "the token request failed", reason);
            }
        };
        let code = refusal.error().as_ref();
        if matches!(
            code,
            "invalid_client" | "unauthorized_client" | "incorrect_client_credentials"
        ) {
            tracing::error!(
                provider = %self.name,
                error = code,
                "the provider refuses Keel's client credentials; check its client id and secret"
            );
            return provider_unavailable(&self.display_name);
        }
        tracing::info!(provider = %self.name, error = code, "the provider refused an authorization code");
        ApiError::new(
            Code::OauthCodeRejected,
            format!(
                "{} refused the authorization code ({}); sign in again",
                self.display_name,
                printable(code)
            ),
        )
    }

    fn userinfo_error(&self, e: UserInfoError<CallError>) -> ApiError {
        match e {
            UserInfoError::ClaimsVerification(e) => id_token_invalid(&self.name, e),
            UserInfoError::Request(e) => unavailable(self, "userinfo is unreachable", e),
            UserInfoError::Response(status, _, reason) => {
                unavailable(self, "userinfo refused", format!("{status}: {reason}"))
            }
            UserInfoError::Parse(e) => unavailable(
                self,
                "userinfo answered what Keel cannot read",
                format!("at {}", e.path()),
            ),
            e => unavailable(self, "userinfo failed", e),
        }
    }
}

impl Oidc {
    fn new(issuer: IssuerUrl, fixed: Option<Endpoints>) -> Self {
        Self {
            issuer,
            fixed,
            discovered: Mutex::new(None),
            keys: Mutex::new(None),
        }
    }

    /// The preset's endpoints, or the discovered ones (fetched when missing
    /// or older than the TTL; a failure is not remembered).
    async fn endpoints(
        &self,
        provider: &Provider,
        http: &OAuthHttp,
    ) -> Result<Endpoints, ApiError> {
        if let Some(fixed) = &self.fixed {
            return Ok(fixed.clone());
        }
        if let Some((endpoints, at)) = &*lock(&self.discovered)
            && at.elapsed() < METADATA_TTL
        {
            return Ok(endpoints.clone());
        }
        let metadata = CoreProviderMetadata::discover_async(self.issuer.clone(), http)
            .await
            .map_err(|e| unavailable(provider, "discovery failed", describe(&e)))?;
        let token = metadata.token_endpoint().cloned().ok_or_else(|| {
            unavailable(
                provider,
                "discovery failed",
                "the provider has no token endpoint",
            )
        })?;
        // client_secret_basic unless the provider takes only client_secret_post.
        let methods = metadata.token_endpoint_auth_methods_supported();
        let post_only = methods.is_some_and(|m| {
            m.contains(&CoreClientAuthMethod::ClientSecretPost)
                && !m.contains(&CoreClientAuthMethod::ClientSecretBasic)
        });
        let endpoints = Endpoints {
            authorize: metadata.authorization_endpoint().clone(),
            token,
            userinfo: metadata.userinfo_endpoint().cloned(),
            jwks: metadata.jwks_uri().clone(),
            auth_type: if post_only {
                AuthType::RequestBody
            } else {
                AuthType::BasicAuth
            },
        };
        let now = Instant::now();
        // Discovery fetched the keys too.
        *lock(&self.keys) = Some((metadata.jwks().clone(), now));
        *lock(&self.discovered) = Some((endpoints.clone(), now));
        tracing::info!(provider = %provider.name, issuer = %self.issuer.as_str(), "OpenID Connect provider discovered");
        Ok(endpoints)
    }

    /// The provider's signing keys: cached, or fetched when missing, stale or `refresh`.
    async fn keys(
        &self,
        provider: &Provider,
        endpoints: &Endpoints,
        http: &OAuthHttp,
        refresh: bool,
    ) -> Result<CoreJsonWebKeySet, ApiError> {
        if !refresh
            && let Some((keys, at)) = &*lock(&self.keys)
            && at.elapsed() < METADATA_TTL
        {
            return Ok(keys.clone());
        }
        let keys = CoreJsonWebKeySet::fetch_async(&endpoints.jwks, http)
            .await
            .map_err(|e| unavailable(provider, "fetching the signing keys failed", describe(&e)))?;
        *lock(&self.keys) = Some((keys.clone(), Instant::now()));
        Ok(keys)
    }
}

/// A cache's lock; a panic while it was held left only a stale cache behind.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A discovery or key-fetch failure, without the body the provider sent.
fn describe(e: &DiscoveryError<CallError>) -> String {
    match e {
        DiscoveryError::Request(e) => e.to_string(),
        DiscoveryError::Response(status, _, reason) => format!("{status}: {reason}"),
        DiscoveryError::Parse(e) => format!("unreadable document at {}", e.path()),
        e => e.to_string(),
    }
}

/// 503 `oauth_provider_unavailable`, with the cause in the log only.
fn unavailable(provider: &Provider, what: &str, cause: impl std::fmt::Display) -> ApiError {
    tracing::warn!(provider = %provider.name, error = %cause, "OAuth provider unavailable: {what}");
    provider_unavailable(&provider.display_name)
}

fn provider_unavailable(provider: &str) -> ApiError {
    ApiError::new(
        Code::OauthProviderUnavailable,
        format!("sign-in with {provider} is unavailable right now; try again shortly"),
    )
}

fn id_token_invalid(provider: &str, cause: impl std::fmt::Display) -> ApiError {
    tracing::warn!(provider, error = %cause, "an ID token failed its checks");
    ApiError::new(
        Code::OauthIdTokenInvalid,
        "the provider's answer failed its checks; sign in again",
    )
}

/// A provider's error code, fit to quote: it came through the browser.
pub fn printable(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(64)
        .collect()
}

#[derive(Debug, Deserialize)]
struct GitHubUser {
    id: i64,
    login: String,
}

#[derive(Debug, Deserialize)]
struct GitHubEmail {
    email: String,
    primary: bool,
    verified: bool,
}

/// The address to sign in with, and whether GitHub verified it: the primary
/// one if verified, else another verified one, else the (unverified) primary.
fn github_email(emails: &[GitHubEmail]) -> Option<(&str, bool)> {
    emails
        .iter()
        .find(|e| e.primary && e.verified)
        .or_else(|| emails.iter().find(|e| e.verified))
        .or_else(|| emails.iter().find(|e| e.primary))
        .map(|e| (e.email.as_str(), e.verified))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emails(list: &[(&str, bool, bool)]) -> Vec<GitHubEmail> {
        list.iter()
            .map(|&(email, primary, verified)| GitHubEmail {
                email: email.into(),
                primary,
                verified,
            })
            .collect()
    }

    #[test]
    fn github_prefers_the_verified_primary_address() {
        let list = emails(&[
            ("other@example.com", false, true),
            ("main@example.com", true, true),
        ]);
        assert_eq!(github_email(&list), Some(("main@example.com", true)));
    }

    #[test]
    fn github_takes_a_verified_address_over_an_unverified_primary() {
        let list = emails(&[
            ("main@example.com", true, false),
            ("other@example.com", false, true),
        ]);
        assert_eq!(github_email(&list), Some(("other@example.com", true)));
    }

    #[test]
    fn github_falls_back_to_the_unverified_primary_and_says_so() {
        let list = emails(&[
            ("stray@example.com", false, false),
            ("main@example.com", true, false),
        ]);
        assert_eq!(github_email(&list), Some(("main@example.com", false)));
        assert_eq!(github_email(&[]), None);
    }

    #[test]
    fn github_answers_parse_as_its_api_documents_them() {
        let user: GitHubUser =
            serde_json::from_str(r#"{"login":"octocat","id":583231,"name":"The Octocat"}"#)
                .unwrap();
        assert_eq!((user.id, user.login.as_str()), (583231, "octocat"));
        let list: Vec<GitHubEmail> = serde_json::from_str(
            r#"[{"email":"octocat@github.com","verified":true,"primary":true,"visibility":"public"}]"#,
        )
        .unwrap();
        assert_eq!(github_email(&list), Some(("octocat@github.com", true)));
    }

    #[test]
    fn provider_error_codes_are_quoted_only_as_plain_words() {
        assert_eq!(printable("access_denied"), "access_denied");
        assert_eq!(printable("<script>x</script>"), "scriptxscript");
        assert_eq!(printable(&"a".repeat(100)).len(), 64);
    }
}
