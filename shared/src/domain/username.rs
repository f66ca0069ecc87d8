//! `Username`: 3–50 of `[A-Za-z0-9_.-]`; unique without regard to case (the
//! database's unique index is on `lower(username)`).

use super::Invalid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// # Errors
    /// Too short, too long, or a character outside `[A-Za-z0-9_.-]`.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let len = s.chars().count();
        if !(3..=50).contains(&len) {
            return Err(Invalid::new("must be 3 to 50 characters"));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(Invalid::new(
                "may contain only letters, digits, '_', '.' and '-'",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Username {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Username;

    #[test]
    fn usernames_keep_to_the_alphabet_and_length() {
        for ok in ["abc", "Alice_01", "a.b-c", &"x".repeat(50)] {
            assert!(Username::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "",
            "has space",
            "ünïcode",
            "semi;colon",
            "a/b",
            &"x".repeat(51),
        ] {
            assert!(Username::parse(bad).is_err(), "{bad}");
        }
    }
}
