//! Profile fields: IANA time zone, language tag, phone number, avatar URL and
//! bounded free text.

use super::Invalid;

// The rules below as ECMA-262 patterns (OpenAPI's `pattern`), so the API's
// document states what `parse` accepts. The class at either end is what
// `str::trim` removes first (Unicode `White_Space`).

/// [`Language::parse`] as a pattern.
pub const LANGUAGE_PATTERN: &str = r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*$";

/// [`parse_phone_number`] as a pattern: 5 to 15 digits, spaces, `-`, `(`,
/// `)` and a leading `+`.
pub const PHONE_NUMBER_PATTERN: &str = concat!(
    r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*",
    r"\+?[ ()-]*(?:[0-9][ ()-]*){5,15}",
    r"[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
);

/// [`parse_avatar_url`] as a pattern, a little stricter than it: an http(s)
/// URL whose host is a name (its last label starts with a letter) and whose
/// port has at most 4 digits.
pub const AVATAR_URL_PATTERN: &str = concat!(
    r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*",
    r"https?://(?:[A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*(?::[0-9]{1,4})?(?:[/?#][!-~]*)?",
    r"[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
);

/// [`ProfileText::parse`] as a pattern (its length is a `maxLength`): no
/// control character but a line feed, once the ends are trimmed.
pub const PROFILE_TEXT_PATTERN: &str = concat!(
    r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*",
    r"[^\x00-\x09\x0b-\x1f\x7f-\x9f]*",
    r"[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
);

/// An IANA time zone name, e.g. `Europe/Paris`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timezone(String);

impl Timezone {
    /// # Errors
    /// Not a zone of the IANA database.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        s.parse::<chrono_tz::Tz>()
            .map(|tz| Self(tz.name().to_owned()))
            .map_err(|_| Invalid::new("must be an IANA time zone such as Europe/Paris or UTC"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Every name [`Timezone::parse`] accepts, in the tz database's order.
    pub fn names() -> impl Iterator<Item = &'static str> {
        chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name())
    }
}

/// A BCP 47-style language tag, e.g. `en` or `pt-BR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Language(String);

impl Language {
    /// # Errors
    /// Not a language tag.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let mut parts = s.split('-');
        let primary = parts.next().unwrap_or_default();
        let ok = (2..=3).contains(&primary.len())
            && primary.chars().all(|c| c.is_ascii_alphabetic())
            && s.len() <= 35
            && parts.all(|p| {
                (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric())
            });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Invalid::new("must be a language tag such as en or pt-BR"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free text with a length limit (names, bio), trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileText(String);

impl ProfileText {
    /// Trimmed. The length counts what was sent, so a limit is one a
    /// client (and the API's document, as `maxLength`) can state plainly.
    ///
    /// # Errors
    /// Longer than `max` characters, or holding control characters.
    pub fn parse(s: &str, max: usize) -> Result<Self, Invalid> {
        if s.chars().count() > max {
            return Err(Invalid::new(format!("must be at most {max} characters")));
        }
        let s = s.trim();
        if s.chars().any(|c| c.is_control() && c != '\n') {
            return Err(Invalid::new("must not contain control characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A phone number: digits with an optional leading `+` and common separators.
///
/// # Errors
/// Anything else, or fewer than 5 / more than 15 digits.
pub fn parse_phone_number(s: &str) -> Result<String, Invalid> {
    let s = s.trim();
    let digits = s.chars().filter(char::is_ascii_digit).count();
    let allowed = s.chars().enumerate().all(|(i, c)| {
        c.is_ascii_digit() || matches!(c, ' ' | '-' | '(' | ')') || (c == '+' && i == 0)
    });
    if allowed && (5..=15).contains(&digits) {
        Ok(s.to_owned())
    } else {
        Err(Invalid::new(
            "must be a phone number such as +33 1 23 45 67 89",
        ))
    }
}

/// An `http(s)` URL of at most 2048 characters (as sent), trimmed.
///
/// # Errors
/// Anything else (`javascript:` and `data:` URLs included).
pub fn parse_avatar_url(s: &str) -> Result<String, Invalid> {
    let short = s.chars().count() <= 2048;
    let s = s.trim();
    match url::Url::parse(s) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() && short => {
            Ok(s.to_owned())
        }
        _ => Err(Invalid::new("must be an http(s) URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_zones_come_from_the_iana_database() {
        assert_eq!(
            Timezone::parse("Europe/Paris").unwrap().as_str(),
            "Europe/Paris"
        );
        assert!(Timezone::parse("UTC").is_ok());
        assert!(Timezone::parse("Mars/Olympus").is_err());
        assert!(Timezone::parse("").is_err());
    }

    #[test]
    fn languages_phones_and_urls() {
        assert!(Language::parse("en").is_ok() && Language::parse("pt-BR").is_ok());
        assert!(Language::parse("english language").is_err() && Language::parse("e").is_err());
        assert!(parse_phone_number("+33 1 23 45 67 89").is_ok());
        assert!(parse_phone_number("call me").is_err() && parse_phone_number("12+34").is_err());
        assert!(parse_avatar_url("https://cdn.example/a.png").is_ok());
        assert!(parse_avatar_url("javascript:alert(1)").is_err());
        assert!(ProfileText::parse(&"x".repeat(101), 100).is_err());
    }
}
