//! `Password`: a new password as NIST 800-63B asks — 8 to 128 characters, no
//! composition rules, not one of the 10,000 most common, never truncated.
//! Kept secret: no `Display`, a redacted `Debug`, zeroed on drop.

use std::{collections::HashSet, sync::LazyLock};

use secrecy::{ExposeSecret as _, SecretString};

use super::Invalid;

const COMMON: &str = include_str!("../../assets/common-passwords.txt");

static COMMON_SET: LazyLock<HashSet<&'static str>> = LazyLock::new(|| COMMON.lines().collect());

pub const MIN_CHARS: usize = 8;
pub const MAX_CHARS: usize = 128;

#[derive(Debug, Clone)]
pub struct Password(SecretString);

impl Password {
    /// # Errors
    /// Too short, too long, or among the most common passwords.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let chars = s.chars().count();
        if chars < MIN_CHARS {
            return Err(Invalid::new(format!(
                "must be at least {MIN_CHARS} characters"
            )));
        }
        if chars > MAX_CHARS {
            return Err(Invalid::new(format!(
                "must be at most {MAX_CHARS} characters"
            )));
        }
        if is_common(s) {
            return Err(Invalid::new(
                "is one of the most common passwords; choose another",
            ));
        }
        Ok(Self(SecretString::from(s.to_owned())))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// Whether `s` is on the common list, ignoring case (the list is lower-case).
pub fn is_common(s: &str) -> bool {
    COMMON_SET.contains(s.to_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_has_ten_thousand_entries() {
        assert_eq!(COMMON_SET.len(), 10_000);
    }

    #[test]
    fn length_limits_count_characters_and_allow_anything_between() {
        assert!(Password::parse("short1!").is_err());
        assert!(Password::parse("ab cd ef gh").is_ok(), "spaces are fine");
        assert!(
            Password::parse("ääääääää").is_ok(),
            "8 characters, 16 bytes"
        );
        assert!(Password::parse(&"x".repeat(128)).is_ok());
        assert!(Password::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn common_passwords_are_refused_in_any_case() {
        for common in [
            "password",
            "PASSWORD1",
            "qwertyuiop",
            "iloveyou",
            "12345678",
        ] {
            assert!(Password::parse(common).is_err(), "{common}");
        }
        assert!(Password::parse("correct horse battery staple").is_ok());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let p = Password::parse("correct horse battery staple").unwrap();
        assert!(!format!("{p:?}").contains("horse"));
    }
}
