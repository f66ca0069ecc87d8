//! Email: the templates every message is rendered from ([`templates`]) and
//! the transport that sends it ([`mailer`]) — SMTP through lettre, or a file
//! outbox in development when no `SMTP_HOST` is set.

pub mod mailer;
pub mod templates;

pub use mailer::{Mailer, SendError};
pub use templates::{EmailTemplate, Rendered};
