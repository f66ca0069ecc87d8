//! Profile fields: IANA time zone, language tag, phone number, avatar URL and
//! bounded free text.

use super::Invalid;

// The rules below as ECMA-262 patterns (OpenAPI's `pattern`), so the API's
// document states what `parse` accepts.

/// A pattern that takes `$part`s in turn between the runs of white space
/// `str::trim` removes first (Unicode `White_Space`), anchored at both ends:
/// every rule below is checked on the trimmed value.
macro_rules! trimmed_pattern {
    ($($part:literal),+) => {
        concat!(
            r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*",
            $($part,)+
            r"[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
        )
    };
}

/// [`Language::parse`] as a pattern.
pub const LANGUAGE_PATTERN: &str = r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*$";

/// [`parse_phone_number`] as a pattern: 5 to 15 digits, spaces, `-`, `(`,
/// `)` and a leading `+`.
pub const PHONE_NUMBER_PATTERN: &str = trimmed_pattern!(r"\+?[ ()-]*(?:[0-9][ ()-]*){5,15}");

/// [`parse_avatar_url`] as a pattern: an http(s) URL whose host is a name
/// (labels of letters, digits and inner hyphens; the last starts with a
/// letter) and whose port has at most 4 digits.
pub const AVATAR_URL_PATTERN: &str = trimmed_pattern!(
    r"https?://(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?::[0-9]{1,4})?(?:[/?#][!-~]*)?"
);

/// [`ProfileText::parse_line`] as a pattern (its length is a `maxLength`):
/// no control character at all, no line or paragraph separator and no
/// bidirectional control, once the ends are trimmed.
pub const PROFILE_LINE_PATTERN: &str =
    trimmed_pattern!(r"[^\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]*");

/// [`ProfileText::parse`] as a pattern (its length is a `maxLength`): no
/// control character but a line feed, once the ends are trimmed.
pub const PROFILE_TEXT_PATTERN: &str = trimmed_pattern!(r"[^\x00-\x09\x0b-\x1f\x7f-\x9f]*");

/// The time zone of an account that sets none (or clears its own).
pub const DEFAULT_TIMEZONE: &str = "UTC";
/// The language of an account that sets none (or clears its own).
pub const DEFAULT_LANGUAGE: &str = "en";

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
        Self::checked(s, max, true)
    }

    /// As [`ProfileText::parse`], on one line: a line feed is refused too
    /// (names).
    ///
    /// # Errors
    /// Longer than `max` characters, or holding control characters.
    pub fn parse_line(s: &str, max: usize) -> Result<Self, Invalid> {
        Self::checked(s, max, false)
    }

    fn checked(s: &str, max: usize, line_feeds: bool) -> Result<Self, Invalid> {
        if s.chars().count() > max {
            return Err(Invalid::new(format!("must be at most {max} characters")));
        }
        let s = s.trim();
        // On one line, also no Unicode line or paragraph separator, nor the
        // bidirectional controls that make a name read as another.
        let breaks_line = |c: char| {
            !line_feeds
                && matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        };
        if s.chars()
            .any(|c| (c.is_control() && !(line_feeds && c == '\n')) || breaks_line(c))
        {
            return Err(Invalid::new(if line_feeds {
                "must not contain control characters other than line feeds"
            } else {
                "must be one line, without control characters"
            }));
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

/// An `http(s)` URL of at most 2048 characters (as sent), trimmed, on a
/// named host: exactly [`AVATAR_URL_PATTERN`]. Addresses (`127.0.0.1`,
/// `[::1]`) and names no DNS would serve (`a_b.com`) are refused, as the
/// pattern the API's document publishes says.
///
/// # Errors
/// Anything else (`javascript:` and `data:` URLs included).
pub fn parse_avatar_url(s: &str) -> Result<String, Invalid> {
    let refused = || {
        Invalid::new(
            "must be an http(s) URL on a named host (not an IP address), \
             at most 2048 characters",
        )
    };
    if s.chars().count() > 2048 {
        return Err(refused());
    }
    let s = s.trim();
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(refused)?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let labels: Vec<&str> = host.split('.').collect();
    // A DNS label: letters, digits and inner hyphens.
    let label_ok = |l: &&str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let named = labels.iter().all(label_ok)
        && labels
            .last()
            .is_some_and(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()));
    let port_ok =
        port.is_none_or(|p| (1..=4).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    let tail_ok = tail.bytes().all(|b| (b'!'..=b'~').contains(&b));
    if named && port_ok && tail_ok && url::Url::parse(s).is_ok() {
        Ok(s.to_owned())
    } else {
        Err(refused())
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
        assert!(ProfileText::parse(&"x".repeat(101), 100).is_err());
        assert!(
            ProfileText::parse("two\nlines", 100).is_ok(),
            "a bio has lines"
        );
        assert!(
            ProfileText::parse_line("two\nlines", 100).is_err(),
            "a name is one line"
        );
        assert!(
            ProfileText::parse_line(" Ann \n", 100).is_ok(),
            "ends are trimmed"
        );
        for sneaky in [
            "Ann\u{2028}Smith",
            "Ann\u{2029}x",
            "\u{202e}nnA",
            "Ann\u{2066}x",
        ] {
            assert!(ProfileText::parse_line(sneaky, 100).is_err(), "{sneaky:?}");
        }
    }

    /// Each case against the code and the published pattern's own rules:
    /// they agree (the pattern is checked by the schemathesis run too).
    #[test]
    fn avatar_urls_are_on_named_hosts_as_the_pattern_says() {
        for ok in [
            "https://cdn.example/a.png",
            "http://cdn.example.com:8080/a.png?size=64#top",
            "  https://a-b.example/x  ",
            "https://localhost/x",
        ] {
            assert!(parse_avatar_url(ok).is_ok(), "{ok}");
        }
        for refused in [
            "javascript:alert(1)",
            "https://127.0.0.1/x",
            "https://[::1]/x",
            "https://a_b.com/x",
            "https://example.123/x",
            "https://cdn.example:65535/x",
            "https://cdn.example/a b.png",
            "https://cdn.example/é.png",
            "ftp://cdn.example/a.png",
            "https:///x",
            "https://.example/x",
            "http://-bad-.com/",
            "http://bad-.example/",
        ] {
            assert!(parse_avatar_url(refused).is_err(), "{refused}");
        }
        assert!(parse_avatar_url(&format!("https://cdn.example/{}", "a".repeat(2048))).is_err());
    }
}
