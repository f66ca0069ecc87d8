//! The value parsers of the settings: secrets, URLs (without quoting a
//! password back), CIDRs, origins, the OpenID Connect provider list.

use std::{net::IpAddr, str::FromStr};

use clap::ValueEnum as _;
use ipnet::IpNet;
use secrecy::SecretString;

use super::{InsecureSetting, OAUTH_PRESETS, OidcProvider, OidcProviders, Origins};

/// One name of `ALLOW_INSECURE_SETTINGS`, in any case, spaces around it ignored.
pub(super) fn insecure_setting(s: &str) -> Result<InsecureSetting, String> {
    let name = s.trim();
    InsecureSetting::value_variants()
        .iter()
        .copied()
        .find(|v| v.variable().eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            "expected RATE_LIMIT_ENABLED, TRUSTED_PROXIES or SMTP_TLS (comma-separated)".to_owned()
        })
}

pub(super) fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s.to_owned()))
}

pub(super) fn redis_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    ok.then(|| s.to_owned())
        .ok_or_else(|| "1 to 64 characters of [A-Za-z0-9_.:-]".to_owned())
}

pub(super) fn cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    IpNet::from_str(s)
        .or_else(|_| IpAddr::from_str(s).map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR or IP address"))
}

pub(super) fn base_url(s: &str) -> Result<String, String> {
    let url = url::Url::parse(s).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an http:// or https:// URL".into());
    }
    Ok(s.trim_end_matches('/').to_owned())
}

pub(super) fn log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// An http(s) URL with a `{provider}` in it (`OAUTH_REDIRECT_URI`).
pub(super) fn redirect_uri_template(s: &str) -> Result<String, String> {
    if !s.contains("{provider}") {
        return Err("must contain `{provider}`, where the provider's name goes".into());
    }
    let url = url::Url::parse(&s.replace("{provider}", "x")).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an http:// or https:// URL".into());
    }
    if url.fragment().is_some() {
        return Err("may not have a #fragment".into());
    }
    Ok(s.to_owned())
}

/// Reads `DATABASE_URL` and `REDIS_URL` with the client libraries' own
/// parsers, so a URL they cannot use stops the process at start. The errors
/// name the variable and never quote the value, which holds a password.
#[derive(Clone, Copy, Debug)]
pub(super) enum SecretUrlParser {
    Postgres,
    Redis,
}

impl clap::builder::TypedValueParser for SecretUrlParser {
    type Value = SecretString;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        let (variable, flag, expected) = match self {
            Self::Postgres => (
                "DATABASE_URL",
                "--database-url",
                "postgres://user:password@host:5432/database",
            ),
            Self::Redis => (
                "REDIS_URL",
                "--redis-url",
                "redis://[:password@]host:6379[/db]",
            ),
        };
        let fail = |why: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("{variable} ({flag}): {why}; expected {expected}\n"),
            )
        };
        let value = value.to_str().ok_or_else(|| fail("is not UTF-8".into()))?;
        match self {
            Self::Postgres => {
                // sqlx's own reading: what it refuses here it would refuse at connect.
                let scheme_ok = ["postgres://", "postgresql://"].iter().any(|p| {
                    value
                        .get(..p.len())
                        .is_some_and(|s| s.eq_ignore_ascii_case(p))
                });
                if !scheme_ok {
                    return Err(fail("is not a postgres:// URL".into()));
                }
                sqlx::postgres::PgConnectOptions::from_str(value).map_err(|e| {
                    fail(format!(
                        "cannot be read ({})",
                        url_reason(&e.to_string(), value)
                    ))
                })?;
            }
            Self::Redis => {
                redis::IntoConnectionInfo::into_connection_info(value).map_err(|e| {
                    fail(format!(
                        "cannot be read ({})",
                        url_reason(&e.to_string(), value)
                    ))
                })?;
            }
        }
        Ok(SecretString::from(value.to_owned()))
    }
}

/// A URL parser's reason, without the value (it holds a password): cut
/// before anything quoted, the value itself blotted out.
fn url_reason(message: &str, value: &str) -> String {
    let mut reason = message
        .split('"')
        .next()
        .unwrap_or_default()
        .replace(value, "the URL");
    if let Ok(url) = url::Url::parse(value) {
        for secret in [url.password().unwrap_or_default(), url.username()] {
            if secret.len() >= 2 {
                reason = reason.replace(secret, "…");
            }
        }
    }
    let reason = reason.trim().trim_end_matches([':', '-', ' ']).to_owned();
    if reason.is_empty() {
        "not a valid URL".to_owned()
    } else {
        reason
    }
}

/// Reads `OAUTH_OIDC_PROVIDERS`. Its errors name fields, never values (the
/// value holds client secrets), and are raw, so clap does not quote the value.
#[derive(Clone, Copy, Debug)]
pub(super) struct OidcProvidersParser;

impl clap::builder::TypedValueParser for OidcProvidersParser {
    type Value = OidcProviders;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        let fail = |message: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("OAUTH_OIDC_PROVIDERS (--oauth-oidc-providers): {message}\n"),
            )
        };
        let value = value.to_str().ok_or_else(|| fail("is not UTF-8".into()))?;
        oidc_providers(value).map_err(fail)
    }
}

/// A JSON list of providers; empty for none.
pub(super) fn oidc_providers(s: &str) -> Result<OidcProviders, String> {
    use serde_json::Value;
    if s.trim().is_empty() {
        return Ok(OidcProviders::default());
    }
    // serde_json's syntax errors give a line and column, never the text.
    let list: Vec<Value> = match serde_json::from_str(s) {
        Ok(Value::Array(list)) => list,
        Ok(_) => return Err("must be a JSON list of providers".into()),
        Err(e) => return Err(format!("not JSON: {e}")),
    };
    let mut providers: Vec<OidcProvider> = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let Value::Object(fields) = entry else {
            return Err(format!("entry {i}: must be an object"));
        };
        if let Some(unknown) = fields.keys().find(|k| {
            !matches!(
                k.as_str(),
                "name" | "display_name" | "issuer" | "client_id" | "client_secret" | "scopes"
            )
        }) {
            return Err(format!("entry {i}: unknown field `{unknown}`"));
        }
        let text = |field: &str, required: bool| -> Result<Option<String>, String> {
            match fields.get(field) {
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
                None | Some(Value::Null) if !required => Ok(None),
                _ => Err(format!("entry {i}: `{field}` must be a non-empty string")),
            }
        };
        let required = |field: &str| text(field, true).map(Option::unwrap_or_default);
        let name = required("name")?;
        let valid_name = name.len() <= 32
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
        if !valid_name {
            return Err(format!("entry {i}: `name` must be 1 to 32 of [a-z0-9_-]"));
        }
        if OAUTH_PRESETS.contains(&name.as_str()) || providers.iter().any(|p| p.name == name) {
            return Err(format!("entry {i}: the name `{name}` is taken"));
        }
        let issuer = required("issuer")?;
        let parsed = url::Url::parse(&issuer).map_err(|e| format!("{name}: issuer: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https")
            || parsed.host().is_none()
            || parsed.query().is_some()
            || parsed.fragment().is_some()
        {
            return Err(format!(
                "{name}: issuer must be an http(s) URL without query or fragment"
            ));
        }
        let scopes = match fields.get("scopes") {
            None | Some(Value::Null) => vec!["email".to_owned(), "profile".to_owned()],
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("{name}: `scopes` must be strings"))?,
            Some(_) => return Err(format!("{name}: `scopes` must be a list or a string")),
        };
        providers.push(OidcProvider {
            display_name: text("display_name", false)?.unwrap_or_else(|| name.clone()),
            // The issuer as configured, to the byte: ID tokens' `iss` must equal it.
            issuer,
            client_id: required("client_id")?,
            client_secret: required("client_secret")?.into(),
            scopes: scopes.into_iter().filter(|s| s != "openid").collect(),
            name,
        });
    }
    Ok(OidcProviders(providers))
}

/// Reads `a,b`, `["a","b"]` or `*`; each origin must be a bare `scheme://host[:port]`.
pub(super) fn origins(s: &str) -> Result<Origins, String> {
    let s = s.trim();
    let items: Vec<String> = if s.starts_with('[') {
        serde_json::from_str(s).map_err(|e| format!("not a JSON list of strings: {e}"))?
    } else {
        s.split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut origins = Origins::default();
    for item in items {
        if item == "*" {
            origins.any = true;
            continue;
        }
        let url = url::Url::parse(&item).map_err(|e| format!("{item:?}: {e}"))?;
        let origin = url.origin();
        if !origin.is_tuple()
            || url.path() != "/"
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(format!("{item:?} is not an origin (scheme://host[:port])"));
        }
        origins.list.push(origin.ascii_serialization());
    }
    Ok(origins)
}
