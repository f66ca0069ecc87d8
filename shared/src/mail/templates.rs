//! Email templates: for each kind of message a subject, a plain-text and an
//! HTML part (`shared/templates/email/`, compiled into the binaries),
//! rendered with minijinja. HTML parts escape what they insert; every
//! template also sees `app_base_url`.

use std::sync::LazyLock;

use minijinja::Environment;
use serde::{Deserialize, Serialize};

/// The messages Keel sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailTemplate {
    Verification,
    PasswordReset,
    TwoFactorCode,
    Welcome,
    PasswordChanged,
    AccountDeleted,
    /// To an account's owner: someone tried to register with its address.
    RegistrationAttempt,
    /// To an account's owner: a second factor (email codes or TOTP) was
    /// turned on or off; data `{username, method, enabled}`.
    TwoFactorChanged,
    /// To an account's owner: an API key was created or given a new
    /// secret; data `{username, name, prefix}`.
    ApiKeyCreated,
    /// To the proven owner of an address, who signed in through a provider
    /// and so claimed the account registered with it unproven: what was
    /// removed; data `{username, provider, api_keys_deleted, second_factors_removed}`.
    AccountClaimed,
    /// To an account's owner: too many wrong second-factor codes, so the
    /// second step is paused; data `{username, failures, until}`.
    SecondFactorLocked,
}

impl EmailTemplate {
    pub const ALL: [EmailTemplate; 11] = [
        Self::Verification,
        Self::PasswordReset,
        Self::TwoFactorCode,
        Self::Welcome,
        Self::PasswordChanged,
        Self::AccountDeleted,
        Self::RegistrationAttempt,
        Self::TwoFactorChanged,
        Self::ApiKeyCreated,
        Self::AccountClaimed,
        Self::SecondFactorLocked,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Verification => "verification",
            Self::PasswordReset => "password_reset",
            Self::TwoFactorCode => "two_factor_code",
            Self::Welcome => "welcome",
            Self::PasswordChanged => "password_changed",
            Self::AccountDeleted => "account_deleted",
            Self::RegistrationAttempt => "registration_attempt",
            Self::TwoFactorChanged => "two_factor_changed",
            Self::ApiKeyCreated => "api_key_created",
            Self::AccountClaimed => "account_claimed",
            Self::SecondFactorLocked => "second_factor_locked",
        }
    }

    /// The template called `name`, if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// A rendered message, ready for a transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

macro_rules! templates {
    ($($name:literal),* $(,)?) => {
        [$(
            (concat!($name, ".subject"), include_str!(concat!("../../templates/email/", $name, ".subject"))),
            (concat!($name, ".txt"), include_str!(concat!("../../templates/email/", $name, ".txt"))),
            (concat!($name, ".html"), include_str!(concat!("../../templates/email/", $name, ".html"))),
        )*]
    };
}

static ENVIRONMENT: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.add_template(
        "layout.html",
        include_str!("../../templates/email/layout.html"),
    )
    .expect("the email layout parses");
    let sources = templates!(
        "verification",
        "password_reset",
        "two_factor_code",
        "welcome",
        "password_changed",
        "account_deleted",
        "registration_attempt",
        "two_factor_changed",
        "api_key_created",
        "account_claimed",
        "second_factor_locked",
    );
    for (name, source) in sources {
        env.add_template(name, source)
            .unwrap_or_else(|e| panic!("email template {name} does not parse: {e}"));
    }
    env
});

/// A template failed to render (a bug in a template or its data).
#[derive(Debug, thiserror::Error)]
#[error("rendering the {template} email: {source}")]
pub struct RenderError {
    template: &'static str,
    source: minijinja::Error,
}

/// Renders `template` with `data` (a JSON object) and `app_base_url`.
///
/// # Errors
/// The template or its data is wrong.
pub fn render(
    template: EmailTemplate,
    data: &serde_json::Value,
    app_base_url: &str,
) -> Result<Rendered, RenderError> {
    let mut context = data.clone();
    if let Some(object) = context.as_object_mut() {
        object.insert(
            "app_base_url".into(),
            app_base_url.trim_end_matches('/').into(),
        );
    }
    let context = minijinja::Value::from(minijinja::value::Serde(context));
    let part = |suffix: &str| {
        ENVIRONMENT
            .get_template(&format!("{}.{suffix}", template.name()))
            .and_then(|t| t.render(context.clone()))
            .map_err(|source| RenderError {
                template: template.name(),
                source,
            })
    };
    Ok(Rendered {
        subject: part("subject")?.trim().to_owned(),
        text: part("txt")?,
        html: part("html")?,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_template_renders_with_its_data_and_escapes_html() {
        let data = json!({"username": "<b>ann</b>", "link": "https://keel.example/verify?token=abc",
                          "code": "123456", "minutes": 10});
        for template in EmailTemplate::ALL {
            let rendered = render(template, &data, "https://keel.example/").unwrap();
            assert!(!rendered.subject.is_empty(), "{template:?}");
            assert!(
                rendered.text.contains("<b>ann</b>"),
                "plain text is not escaped"
            );
            assert!(
                rendered.html.contains("&lt;b&gt;ann&lt;"),
                "{}",
                rendered.html
            );
            assert!(!rendered.html.contains("<b>"), "{}", rendered.html);
            assert!(
                rendered.html.contains("keel.example"),
                "the layout's footer"
            );
            assert_eq!(EmailTemplate::parse(template.name()), Some(template));
        }
        let verification = render(EmailTemplate::Verification, &data, "x").unwrap();
        assert!(
            verification
                .text
                .contains("https://keel.example/verify?token=abc")
        );
        let code = render(EmailTemplate::TwoFactorCode, &data, "x").unwrap();
        assert!(code.text.contains("123456") && code.html.contains("123456"));
        for (enabled, subject, says) in [
            (
                true,
                "Two-step sign-in was turned on",
                "now also asks for an authenticator app",
            ),
            (
                false,
                "Two-step sign-in was turned off",
                "no longer asks for an authenticator app",
            ),
        ] {
            let data =
                json!({"username": "ann", "method": "an authenticator app", "enabled": enabled});
            let changed = render(EmailTemplate::TwoFactorChanged, &data, "x").unwrap();
            assert_eq!(changed.subject, subject);
            assert!(
                changed.text.contains(says) && changed.html.contains(says),
                "{changed:?}"
            );
        }
    }
}
