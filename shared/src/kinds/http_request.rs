//! `http_request {method, url, headers?, body?}`: calls a webhook. Only
//! hosts in `TASK_HTTP_ALLOWED_HOSTS` may be called (checked when the task
//! is created and again before the call), redirects are not followed, and
//! the result keeps the status and at most 64 KiB of the body. A 5xx or 429
//! answer, or no answer, is a retryable failure.

use std::collections::BTreeMap;

use http_body_util::{BodyExt as _, Full};
use hyper::{
    Request, StatusCode,
    body::Bytes,
    header::{CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Kind, KindSettings, PayloadError, TaskContext, TaskFailure};

/// Most of a response body kept in the result.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];
const MAX_HEADERS: usize = 50;

#[derive(Debug)]
pub struct HttpRequest;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRequestPayload {
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A string is sent as it is; anything else as JSON.
    #[serde(default)]
    pub body: Option<Value>,
}

impl Kind for HttpRequest {
    const NAME: &'static str = "http_request";
    const DESCRIPTION: &'static str =
        "Calls a URL on an allowed host; the result is the status and the start of the body.";
    const CATEGORY: &'static str = "integration";
    type Payload = HttpRequestPayload;

    fn payload_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "method": {"type": "string", "enum": METHODS},
                "url": {"type": "string", "format": "uri", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
                        "description": "http(s) URL on a host in TASK_HTTP_ALLOWED_HOSTS"},
                // What `HeaderName` and `HeaderValue` take, less the reserved names.
                "headers": {"type": "object", "maxProperties": MAX_HEADERS,
                            "propertyNames": {"pattern": header_name_pattern()},
                            "additionalProperties": {"type": "string",
                                                     "pattern": "^[^\\x00-\\x08\\x0a-\\x1f\\x7f]*$"}},
                "body": {"description": "A string is sent as is; anything else as JSON."},
            },
            "required": ["method", "url"],
            "additionalProperties": false,
        })
    }

    fn check(payload: &HttpRequestPayload, settings: &KindSettings) -> Vec<PayloadError> {
        let mut errors = Vec::new();
        if !METHODS.contains(&payload.method.as_str()) {
            errors.push(PayloadError::new(
                "method",
                format!("must be one of {}", METHODS.join(", ")),
            ));
        }
        if let Err(message) = allowed_url(&payload.url, settings) {
            errors.push(PayloadError::new("url", message));
        }
        if payload.headers.len() > MAX_HEADERS {
            errors.push(PayloadError::new(
                "headers",
                format!("at most {MAX_HEADERS} headers"),
            ));
        }
        for (name, value) in &payload.headers {
            if HeaderName::from_bytes(name.as_bytes()).is_err()
                || HeaderValue::from_str(value).is_err()
            {
                errors.push(PayloadError::new(
                    format!("headers.{name}"),
                    "is not a valid HTTP header",
                ));
            } else if let Some(reason) = reserved_header(name) {
                errors.push(PayloadError::new(format!("headers.{name}"), reason));
            }
        }
        errors
    }

    async fn run(payload: HttpRequestPayload, ctx: TaskContext) -> Result<Value, TaskFailure> {
        let url = allowed_url(&payload.url, &ctx.settings).map_err(TaskFailure::permanent)?;
        let mut request = Request::builder()
            .method(payload.method.as_str())
            .uri(url.as_str())
            .header(
                USER_AGENT,
                concat!("keel-worker/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &payload.headers {
            request = request.header(name, value);
        }
        let body = match payload.body {
            None | Some(Value::Null) => Bytes::new(),
            Some(Value::String(text)) => Bytes::from(text),
            Some(json) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(json.to_string())
            }
        };
        let request = request
            .body(Full::new(body))
            .map_err(|e| TaskFailure::permanent(format!("invalid request: {e}")))?;
        let response = ctx
            .http
            .request(request)
            .await
            .map_err(|e| TaskFailure::retryable(format!("request failed: {e}")))?;
        let status = response.status();
        let mut stream = response.into_body();
        let mut body = Vec::new();
        let mut truncated = false;
        while let Some(frame) = stream.frame().await {
            let frame = frame
                .map_err(|e| TaskFailure::retryable(format!("reading the response failed: {e}")))?;
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            let room = MAX_BODY_BYTES - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(TaskFailure::retryable(format!(
                "{} answered {status}",
                payload.url
            )));
        }
        Ok(json!({"status": status.as_u16(), "body": body, "truncated": truncated}))
    }
}

/// `url` if it is http(s) on an allowed host (`host` allows every port,
/// `host:port` that port only).
fn allowed_url(url: &str, settings: &KindSettings) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be http or https".into());
    }
    let host = parsed
        .host_str()
        .ok_or("has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = parsed.port_or_known_default().unwrap_or_default();
    let with_port = format!("{host}:{port}");
    if settings
        .http_allowed_hosts
        .iter()
        .any(|allowed| *allowed == host || *allowed == with_port)
    {
        Ok(parsed)
    } else {
        Err(format!("host {host} is not in TASK_HTTP_ALLOWED_HOSTS"))
    }
}

/// Headers a payload may not set: see [`reserved_header`].
const RESERVED_HEADERS: [&str; 13] = [
    "host",
    "proxy-authorization",
    "proxy-authenticate",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "http2-settings",
];

/// A header name token (RFC 9110) that is none of [`RESERVED_HEADERS`], in
/// any case, as an ECMA-262 pattern for the payload's schema.
fn header_name_pattern() -> String {
    let reserved: Vec<String> = RESERVED_HEADERS
        .iter()
        .map(|name| {
            name.chars()
                .map(|c| {
                    if c.is_ascii_alphabetic() {
                        format!("[{}{}]", c.to_ascii_uppercase(), c)
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        })
        .collect();
    format!(
        "^(?!(?:{})$)[!#$%&'*+.^_`|~0-9A-Za-z-]+$",
        reserved.join("|")
    )
}

/// Why a header is the worker's to set, not the payload's: `Host` would
/// reach any virtual host behind an allowed address; the framing and
/// hop-by-hop headers (RFC 9110 §7.6.1) would let a payload smuggle a
/// second request or break the connection's framing.
fn reserved_header(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    if name == "host" {
        Some("may not be set: the request goes to the URL's host")
    } else if RESERVED_HEADERS.contains(&name.as_str()) {
        Some("may not be set: framing and connection headers are the worker's")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(hosts: &[&str]) -> KindSettings {
        KindSettings {
            http_allowed_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            test_kinds: false,
        }
    }

    #[test]
    fn only_allowed_hosts_and_ports_pass() {
        let s = settings(&["hooks.example.com", "127.0.0.1:8080"]);
        assert!(allowed_url("https://hooks.example.com/x", &s).is_ok());
        assert!(allowed_url("https://HOOKS.example.com:444/x", &s).is_ok());
        assert!(allowed_url("http://127.0.0.1:8080/", &s).is_ok());
        assert!(allowed_url("http://127.0.0.1:8081/", &s).is_err());
        assert!(allowed_url("http://evil.example.com/", &s).is_err());
        assert!(allowed_url("http://hooks.example.com.evil.net/", &s).is_err());
        assert!(allowed_url("ftp://hooks.example.com/", &s).is_err());
        assert!(allowed_url("not a url", &s).is_err());
        assert!(allowed_url("http://127.0.0.1:8080/", &settings(&[])).is_err());
    }

    #[test]
    fn host_and_framing_headers_are_refused_by_name_in_any_case() {
        let s = settings(&["hooks.example.com"]);
        let refused = |name: &str| {
            let payload = HttpRequestPayload {
                method: "POST".into(),
                url: "https://hooks.example.com/x".into(),
                headers: [(name.to_owned(), "v".to_owned())].into(),
                body: None,
            };
            HttpRequest::check(&payload, &s)
                .into_iter()
                .map(|e| e.field)
                .collect::<Vec<_>>()
        };
        for name in [
            "Host",
            "HOST",
            "content-length",
            "Transfer-Encoding",
            "Connection",
            "keep-alive",
            "TE",
            "Upgrade",
            "Proxy-Authorization",
        ] {
            assert_eq!(refused(name), [format!("headers.{name}")], "{name}");
        }
        for name in [
            "X-Signature",
            "Authorization",
            "Content-Type",
            "Hostname",
            "X-Host",
        ] {
            assert!(refused(name).is_empty(), "{name} is allowed");
        }
        let pattern = header_name_pattern();
        assert!(pattern.starts_with("^(?!(?:[Hh][Oo][Ss][Tt]|"), "{pattern}");
        assert!(pattern.contains("[Tt][Ee]|"), "{pattern}");
    }
}
