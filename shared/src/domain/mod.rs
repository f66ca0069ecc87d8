//! Domain values parsed once at the edge: a request DTO becomes these with
//! `parse`/`TryFrom`, and everything below sees only valid values.

mod email;
mod password;
mod profile;
mod role;
mod username;

pub use email::EmailAddress;
pub use password::Password;
pub use profile::{
    AVATAR_URL_PATTERN, DEFAULT_LANGUAGE, DEFAULT_TIMEZONE, LANGUAGE_PATTERN, Language,
    PHONE_NUMBER_PATTERN, PROFILE_LINE_PATTERN, PROFILE_TEXT_PATTERN, ProfileText, Timezone,
    parse_avatar_url, parse_phone_number,
};
pub use role::Role;
pub use username::Username;

/// Why a value was refused, for the 422 response's `errors[].message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Invalid {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}
