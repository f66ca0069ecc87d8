//! Sending: SMTP through lettre (`SMTP_HOST`, `SMTP_PORT`, `SMTP_USER`,
//! `SMTP_PASSWORD`, `SMTP_TLS`), or, with no `SMTP_HOST`, `.eml` files in
//! `EMAIL_OUTBOX_DIR` for development. The Message-ID is given by the
//! caller (derived from the delivery id), so a message sent twice is
//! recognisably the same message.

use std::time::Duration;

use lettre::{
    AsyncFileTransport, AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
    transport::smtp::authentication::Credentials,
};
use secrecy::ExposeSecret as _;

use super::Rendered;
use crate::config::{Config, SmtpTls};

/// How long one SMTP conversation may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);

/// The configured transport.
#[derive(Clone)]
pub enum Mailer {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
    },
    Outbox {
        transport: AsyncFileTransport<Tokio1Executor>,
        from: Mailbox,
        dir: std::path::PathBuf,
    },
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Smtp { from, .. } => write!(f, "Mailer::Smtp(from {from})"),
            Self::Outbox { dir, .. } => write!(f, "Mailer::Outbox({})", dir.display()),
        }
    }
}

/// Sending failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth another try: the server is down, busy, or answered 4xx.
    #[error("{0}")]
    Transient(String),
    /// Another try would fail the same way: a bad address, a 5xx answer.
    #[error("{0}")]
    Permanent(String),
}

impl Mailer {
    /// The transport `config` asks for.
    ///
    /// # Errors
    /// `EMAILS_FROM_EMAIL` is not an address, or the SMTP settings do not fit.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let from_address = config
            .smtp
            .from_email
            .clone()
            .unwrap_or_else(|| "keel@localhost".to_owned());
        let from: Mailbox = format!("Keel <{from_address}>")
            .parse()
            .map_err(|e| anyhow::anyhow!("EMAILS_FROM_EMAIL is not an address: {e}"))?;
        let Some(host) = config.smtp.host.as_deref() else {
            std::fs::create_dir_all(&config.smtp.outbox_dir).map_err(|e| {
                anyhow::anyhow!(
                    "cannot create the email outbox {}: {e}",
                    config.smtp.outbox_dir.display()
                )
            })?;
            return Ok(Self::Outbox {
                transport: AsyncFileTransport::new(&config.smtp.outbox_dir),
                from,
                dir: config.smtp.outbox_dir.clone(),
            });
        };
        let builder = match config.smtp.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)?,
        };
        let mut builder = builder.port(config.smtp.port).timeout(Some(SMTP_TIMEOUT));
        if let (Some(user), Some(password)) = (&config.smtp.user, &config.smtp.password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            ));
        }
        Ok(Self::Smtp {
            transport: builder.build(),
            from,
        })
    }

    /// Sends `rendered` to `to` with the Message-ID `<{message_id}>`.
    ///
    /// # Errors
    /// The address is bad or the transport failed; [`SendError`] says
    /// whether another try may succeed.
    pub async fn send(
        &self,
        to: &str,
        rendered: &Rendered,
        message_id: &str,
    ) -> Result<(), SendError> {
        let to: Mailbox = to
            .parse()
            .map_err(|e| SendError::Permanent(format!("bad recipient address: {e}")))?;
        let from = match self {
            Self::Smtp { from, .. } | Self::Outbox { from, .. } => from.clone(),
        };
        let message = Message::builder()
            .from(from)
            .to(to)
            .subject(rendered.subject.clone())
            .message_id(Some(format!("<{message_id}>")))
            .multipart(MultiPart::alternative_plain_html(
                rendered.text.clone(),
                rendered.html.clone(),
            ))
            .map_err(|e| SendError::Permanent(format!("cannot build the message: {e}")))?;
        match self {
            Self::Smtp { transport, .. } => transport.send(message).await.map(drop).map_err(|e| {
                if e.is_permanent() {
                    SendError::Permanent(e.to_string())
                } else {
                    SendError::Transient(e.to_string())
                }
            }),
            Self::Outbox { transport, .. } => transport
                .send(message)
                .await
                .map(drop)
                .map_err(|e| SendError::Transient(e.to_string())),
        }
    }
}
