//! What the tests read out of the mails a worker delivered to the SMTP
//! sink: links, their tokens, and sign-in codes.

use keel_testing as testing;

/// Asserts `message` is titled `subject`.
pub fn assert_subject(message: &str, subject: &str) {
    let line = format!("Subject: {subject}");
    assert!(message.contains(&line), "{line} in {message}");
}

/// `message` with quoted-printable's soft line breaks and `=3D` undone, so
/// a link reads whole.
pub fn unfold(message: &str) -> String {
    message
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
}

/// The link in `message` that begins with `start`, up to a space, quote or
/// `<`; its token (after the last `=`) is recorded as a secret.
pub fn link_in(message: &str, start: &str) -> String {
    let unfolded = unfold(message);
    let at = unfolded
        .find(start)
        .unwrap_or_else(|| panic!("no link in {message}"));
    let link = unfolded[at..]
        .split(|c: char| c.is_whitespace() || c == '"' || c == '<')
        .next()
        .unwrap()
        .to_owned();
    testing::record_secret(link.rsplit('=').next().unwrap_or_default());
    link
}

/// The token of the password reset link in `message`.
pub fn reset_token_in(message: &str) -> String {
    const START: &str = "reset-password?token=";
    link_in(message, START)[START.len()..].to_owned()
}

/// The six-digit code in the plain-text part of a sign-in code's mail.
pub fn code_in(message: &str) -> String {
    let start = message.find("code is ").expect("a code") + "code is ".len();
    let code = message[start..start + 6].to_owned();
    testing::record_secret(&code);
    code
}
