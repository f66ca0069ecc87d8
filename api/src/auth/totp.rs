//! TOTP (RFC 6238) for authenticator apps: new secrets, their otpauth URI
//! and QR code, checking a code within ±1 step, recovery codes, and sealing
//! the secret for the database under a key derived from `SECRET_KEY` (and,
//! while it is rotated, opening and resealing what the previous key sealed).

use aes_gcm::{
    Aes256Gcm, Nonce,
    aead::{Aead as _, KeyInit as _, Payload},
};
use hkdf::Hkdf;
use keel_shared::db::totp as store;
use secrecy::ExposeSecret as _;
use sha2::Sha256;
use totp_rs::{Builder, Secret, Totp};
use uuid::Uuid;
use zeroize::Zeroizing;

/// The name authenticator apps show beside the account.
pub const ISSUER: &str = "Keel";
/// Recovery codes handed out when TOTP is confirmed.
pub const RECOVERY_CODES: usize = 10;
/// Seconds per step, and the steps either side accepted for clock drift:
/// RFC 6238's recommendations, and what every authenticator app assumes.
const STEP_SECONDS: u64 = 30;
const SKEW_STEPS: u16 = 1;
/// HKDF's `info`: this key seals TOTP secrets and nothing else.
const SEAL_INFO: &[u8] = b"keel totp secret seal v1";
const NONCE_BYTES: usize = 12;

/// Seals and opens TOTP secrets with AES-256-GCM. The key is derived from
/// the signing key, so no second secret must be configured, yet a leaked
/// sealing key gives no tokens (and a leaked database no secrets).
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
    /// Under `SECRET_KEY_PREVIOUS`, while a rotation lasts: opens, never seals.
    previous: Option<Aes256Gcm>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").finish_non_exhaustive()
    }
}

/// A sealed secret that does not open: `SECRET_KEY` changed since it was
/// sealed, or the row was altered.
#[derive(Debug, thiserror::Error)]
#[error("the TOTP secret cannot be opened (was SECRET_KEY changed?)")]
pub struct Unopenable;

impl Sealer {
    pub fn new(
        signing_key: &secrecy::SecretString,
        previous: Option<&secrecy::SecretString>,
    ) -> Self {
        Self {
            cipher: cipher(signing_key),
            previous: previous.map(cipher),
        }
    }

    /// `secret` sealed for `user`: a fresh random nonce, then the ciphertext
    /// and tag. The user id is the associated data, so a sealed secret
    /// copied to another user's row does not open.
    pub fn seal(&self, user: Uuid, secret: &Secret) -> Vec<u8> {
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: user.as_bytes(),
                },
            )
            .expect("AES-GCM seals any secret this small");
        [nonce.as_slice(), &sealed].concat()
    }

    /// The secret of `user` that `sealed` holds.
    ///
    /// # Errors
    /// [`Unopenable`]: a different key, a different user, or altered bytes.
    pub fn open(&self, user: Uuid, sealed: &[u8]) -> Result<Secret, Unopenable> {
        open_with(&self.cipher, user, sealed).or_else(|e| match &self.previous {
            Some(previous) => open_with(previous, user, sealed),
            None => Err(e),
        })
    }

    /// `sealed` sealed again under the current key, if only the previous
    /// one opens it; `None` when it needs nothing (or opens under neither).
    pub fn reseal(&self, user: Uuid, sealed: &[u8]) -> Option<Vec<u8>> {
        if open_with(&self.cipher, user, sealed).is_ok() {
            return None;
        }
        let secret = open_with(self.previous.as_ref()?, user, sealed).ok()?;
        Some(self.seal(user, &secret))
    }
}

/// The AES-256-GCM cipher of `signing_key`, under a key HKDF derives from it.
fn cipher(signing_key: &secrecy::SecretString) -> Aes256Gcm {
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(None, signing_key.expose_secret().as_bytes())
        .expand(SEAL_INFO, key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Aes256Gcm::new_from_slice(key.as_ref()).expect("a 32-byte key is an AES-256 key")
}

/// The secret of `user` that `sealed` holds, if `cipher` sealed it.
fn open_with(cipher: &Aes256Gcm, user: Uuid, sealed: &[u8]) -> Result<Secret, Unopenable> {
    let (nonce, ciphertext) = sealed.split_at_checked(NONCE_BYTES).ok_or(Unopenable)?;
    let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| Unopenable)?;
    let plain = cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad: user.as_bytes(),
            },
        )
        .map_err(|_| Unopenable)?;
    Ok(Secret::from(plain))
}

/// Secrets read per query by [`reseal_all`].
const RESEAL_PAGE: i64 = 500;

/// Seals again under the current key every TOTP secret that only
/// `SECRET_KEY_PREVIOUS` opens, a page at a time, so that after one start
/// with both keys the previous one is needed only for access tokens still
/// in flight; returns how many. The API runs it beside the server when a
/// previous key is set: with the database down it fails, and the next
/// start does the rest (the previous key opens them meanwhile).
///
/// # Errors
/// The database fails.
pub async fn reseal_all(db: &sqlx::PgPool, sealer: &Sealer) -> Result<u64, sqlx::Error> {
    let (mut after, mut resealed) = (None, 0);
    loop {
        let page = store::sealed_page(db, after, RESEAL_PAGE).await?;
        let Some(&(last, _)) = page.last() else {
            return Ok(resealed);
        };
        after = Some(last);
        for (user, sealed) in &page {
            if let Some(new) = sealer.reseal(*user, sealed)
                && store::replace_sealed(db, *user, sealed, &new).await?
            {
                resealed += 1;
            }
        }
    }
}

/// A new random secret (160 bits, as RFC 4226 recommends).
pub fn new_secret() -> Secret {
    Secret::generate()
}

fn totp(secret: Secret, account: &str) -> Totp {
    Builder::new()
        .with_secret(secret)
        .with_step_duration(STEP_SECONDS)
        .with_skew(SKEW_STEPS)
        .with_issuer(Some(ISSUER))
        // A colon would split issuer and account in the URI; emails have none,
        // but this is no place to fail a setup over one.
        .with_account_name(account.replace(':', " "))
        .build_noncompliant()
}

/// What a user scans or types into an authenticator app.
#[derive(Debug)]
pub struct Enrolment {
    /// Base32, for typing in by hand.
    pub secret: String,
    pub otpauth_uri: String,
    /// The URI as a QR code, an SVG document.
    pub qr_svg: String,
}

/// The base32 secret, `otpauth://` URI and QR code of `secret` for `account`.
pub fn enrolment(secret: &Secret, account: &str) -> Enrolment {
    let totp = totp(secret.clone(), account);
    let otpauth_uri = totp
        .to_url()
        .expect("a totp-rs secret and issuer always form a URI");
    let qr_svg = qrcode::QrCode::new(otpauth_uri.as_bytes())
        .map(|qr| {
            qr.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(200, 200)
                .build()
        })
        .unwrap_or_default();
    Enrolment {
        secret: secret.to_base32(),
        otpauth_uri,
        qr_svg,
    }
}

/// The time step `code` is right for, within ±1 step of `unix_seconds`, or
/// `None`. The caller must still refuse a step at or before the last one
/// used (RFC 6238 §5.2: a code is accepted once).
pub fn matching_step(secret: &Secret, code: &str, unix_seconds: u64) -> Option<i64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    totp(secret.clone(), "")
        .check(&code, unix_seconds)
        .and_then(|step| i64::try_from(step).ok())
}

/// Whether `code` looks like a TOTP code (six digits) rather than a
/// recovery code.
pub fn is_totp_code(code: &str) -> bool {
    let digits = code.chars().filter(|c| !c.is_whitespace());
    digits.clone().count() == 6 && digits.into_iter().all(|c| c.is_ascii_digit())
}

/// Characters of a recovery code: lower-case base32, 5 bits each.
const RECOVERY_CODE_CHARS: usize = 24;

/// Fresh recovery codes: ten of 24 lower-case base32 characters (120 bits)
/// each, shown as `xxxx-xxxx-xxxx-xxxx-xxxx-xxxx`. At 120 bits a stolen
/// table of their SHA-256 hashes gives nothing to guess, as for API keys;
/// a slow hash would only be needed for short codes.
pub fn new_recovery_codes() -> Vec<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    (0..RECOVERY_CODES)
        .map(|_| {
            let bytes: [u8; RECOVERY_CODE_CHARS] = rand::random();
            let chars: Vec<char> = bytes
                .iter()
                .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
                .collect();
            chars
                .chunks(4)
                .map(|group| group.iter().collect::<String>())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(key: &str) -> Sealer {
        Sealer::new(&secrecy::SecretString::from(key.to_owned()), None)
    }

    #[test]
    fn after_a_rotation_old_secrets_open_and_are_resealed_under_the_new_key() {
        let (old_key, new_key) = (
            "key one, long enough to be a key",
            "key two, long enough to be a key",
        );
        let user = Uuid::now_v7();
        let secret = new_secret();
        let sealed = sealer(old_key).seal(user, &secret);
        let rotating = Sealer::new(
            &secrecy::SecretString::from(new_key.to_owned()),
            Some(&secrecy::SecretString::from(old_key.to_owned())),
        );
        assert_eq!(
            rotating.open(user, &sealed).unwrap().as_bytes(),
            secret.as_bytes()
        );
        let resealed = rotating
            .reseal(user, &sealed)
            .expect("only the old key opens it");
        // The new key alone opens it now, and it needs no second resealing.
        assert_eq!(
            sealer(new_key).open(user, &resealed).unwrap().as_bytes(),
            secret.as_bytes()
        );
        assert!(sealer(old_key).open(user, &resealed).is_err());
        assert_eq!(rotating.reseal(user, &resealed), None);
        // What neither key sealed stays as it is.
        let foreign = sealer("key three, long enough to be one").seal(user, &secret);
        assert_eq!(rotating.reseal(user, &foreign), None);
        assert!(rotating.open(user, &foreign).is_err());
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_for_its_user() {
        let (user, other) = (Uuid::now_v7(), Uuid::now_v7());
        let secret = new_secret();
        let sealed = sealer("key one, long enough to be a key").seal(user, &secret);
        assert!(
            !sealed
                .windows(secret.as_bytes().len())
                .any(|w| w == secret.as_bytes())
        );
        let opened = sealer("key one, long enough to be a key")
            .open(user, &sealed)
            .unwrap();
        assert_eq!(opened.as_bytes(), secret.as_bytes());
        assert!(
            sealer("key two, long enough to be a key")
                .open(user, &sealed)
                .is_err()
        );
        assert!(
            sealer("key one, long enough to be a key")
                .open(other, &sealed)
                .is_err()
        );
        assert!(
            sealer("key one, long enough to be a key")
                .open(user, &sealed[..5])
                .is_err()
        );
    }

    #[test]
    fn codes_match_within_one_step_either_side() {
        let secret = new_secret();
        let t = 1_800_000_015;
        let code_at = |time: u64| totp(secret.clone(), "").generate(time).to_string();
        let step = i64::try_from(t / 30).unwrap();
        assert_eq!(matching_step(&secret, &code_at(t), t), Some(step));
        assert_eq!(matching_step(&secret, &code_at(t - 30), t), Some(step - 1));
        assert_eq!(matching_step(&secret, &code_at(t + 30), t), Some(step + 1));
        assert_eq!(matching_step(&secret, &code_at(t - 60), t), None);
        assert_eq!(matching_step(&secret, &code_at(t + 60), t), None);
        assert_eq!(matching_step(&secret, "12345", t), None);
        assert_eq!(matching_step(&secret, "abcdef", t), None);
    }

    #[test]
    fn recovery_codes_are_distinct_and_readable() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        assert_eq!(
            codes.iter().collect::<std::collections::HashSet<_>>().len(),
            RECOVERY_CODES
        );
        assert!(codes.iter().all(|c| c.len() == 29 && !is_totp_code(c)));
        for code in &codes {
            let symbols: Vec<char> = code.chars().filter(|c| *c != '-').collect();
            assert_eq!(symbols.len() * 5, 120, "at least 112 bits: {code}");
            assert!(
                symbols
                    .iter()
                    .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(c))
            );
            assert_eq!(code.split('-').count(), 6, "six groups of four: {code}");
        }
    }
}
