//! `EmailAddress`: a valid address (RFC 5322 addr-spec, as the
//! `email_address` crate reads it), stored lower-case so it is unique
//! without regard to case.

use std::str::FromStr as _;

use super::Invalid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// # Errors
    /// Not an address, a display-name form, or longer than 254 characters.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let s = s.trim();
        if s.len() > 254 {
            return Err(Invalid::new("must be at most 254 characters"));
        }
        let parsed =
            email_address::EmailAddress::from_str(s).map_err(|e| Invalid::new(e.to_string()))?;
        // Only a bare address: "Name <a@b>" is valid RFC 5322 but not an address field.
        if parsed.as_str() != s || parsed.display_part() != "" || !parsed.domain().contains('.') {
            return Err(Invalid::new(
                "must be a plain address like name@example.com",
            ));
        }
        Ok(Self(s.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for EmailAddress {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::EmailAddress;

    #[test]
    fn addresses_are_validated_and_lowered() {
        assert_eq!(
            EmailAddress::parse(" Alice@Example.COM ").unwrap().as_str(),
            "alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.com",
            "Alice <alice@example.com>",
            "a@b",
            "a b@example.com",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad}");
        }
    }
}
