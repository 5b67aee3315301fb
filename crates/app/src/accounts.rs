//! Accounts: what a sign-up must hold, argon2 password hashes, session tokens and the CSRF
//! token every form carries. The database side is in [`crate::data`]; this room only holds
//! the rules and the cryptography, so it is tested without a database.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use ring::rand::{SecureRandom, SystemRandom};

pub const SESSION_COOKIE: &str = "foobar_session";
pub const CSRF_COOKIE: &str = "foobar_csrf";
/// How long a session lasts after its log-in.
pub const SESSION_DAYS: u32 = 14;
const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 128;

/// A signed-in user as pages see them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub is_admin: bool,
}

/// The e-mail address as stored (trimmed, lower case), or what is wrong with it.
pub fn valid_email(email: &str) -> Result<String, String> {
    let email = email.trim().to_lowercase();
    let Some((local, domain)) = email.split_once('@') else {
        return Err("The e-mail address needs an @.".into());
    };
    let fine = !local.is_empty()
        && email.len() <= 254
        && local.len() <= 64
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && email.chars().all(|c| c.is_ascii_graphic() || !c.is_ascii())
        && !email.contains(['<', '>', '"', ',', ';', '\\']);
    if fine {
        Ok(email)
    } else {
        Err(format!("`{}` is not an e-mail address.", email.chars().take(100).collect::<String>()))
    }
}

/// Whether a password may be used; length is what matters (NIST SP 800-63B).
pub fn valid_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        return Err(format!("The password needs at least {MIN_PASSWORD} characters."));
    }
    if n > MAX_PASSWORD {
        return Err(format!("The password may have at most {MAX_PASSWORD} characters."));
    }
    Ok(())
}

/// An argon2id hash in PHC form (algorithm, parameters and salt included).
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    SystemRandom::new().fill(&mut salt).map_err(|_| "no randomness for a salt".to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// True when `password` matches the stored hash; a malformed hash matches nothing.
pub fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
}

/// A hash that no password matches, verified when the e-mail is unknown so that a log-in
/// takes as long either way (nobody learns which addresses have accounts).
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("no password is this one").unwrap_or_default())
}

/// 32 random bytes, URL-safe base64 without padding (43 characters).
pub fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).map_err(|_| "no randomness for a token".to_string())?;
    Ok(base64_url(&bytes))
}

/// What the database keeps of a session token: its SHA-256, so a read of the sessions table
/// gives nobody a way in.
pub fn token_digest(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A token as this app makes them: 43 URL-safe base64 characters.
pub fn well_formed_token(token: &str) -> bool {
    token.len() == 43 && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Compares secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// The value of cookie `name` in a request's Cookie headers.
pub fn cookie<'h>(headers: &'h axum::http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A Set-Cookie value for a secret: HttpOnly, SameSite=Lax, and Secure when the page came
/// over HTTPS (the web role says so in X-Forwarded-Proto). `None` clears the cookie.
pub fn secret_cookie(name: &str, value: Option<&str>, max_age_secs: u32, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match value {
        Some(value) => format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}"),
        None => format!("{name}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e_mail_addresses_are_checked_and_normalised() {
        assert_eq!(valid_email("  Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in
            ["", "ada", "ada@", "@example.com", "ada@example", "ada@@example.com", "a da@example.com", "<a>@x.io"]
        {
            assert!(valid_email(bad).is_err(), "{bad:?}");
        }
        assert!(valid_email(&format!("{}@example.com", "a".repeat(65))).is_err());
    }

    #[test]
    fn passwords_need_a_reasonable_length() {
        assert!(valid_password("short").is_err());
        assert!(valid_password("long enough").is_ok());
        assert!(valid_password(&"x".repeat(129)).is_err());
    }

    #[test]
    fn hashes_verify_only_their_password() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("correct horsf", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
        assert_ne!(hash, hash_password("correct horse").unwrap(), "each hash has its own salt");
        assert!(!verify_password("", dummy_hash()));
    }

    #[test]
    fn tokens_are_random_and_well_formed() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert!(well_formed_token(&a) && well_formed_token(&b), "{a} {b}");
        assert!(!well_formed_token("short") && !well_formed_token(&format!("{}=", &a[..42])));
        assert_eq!(token_digest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(same_secret(&a, &a.clone()) && !same_secret(&a, &b) && !same_secret("a", "ab"));
    }

    #[test]
    fn base64_matches_rfc_4648_url_alphabet() {
        assert_eq!(base64_url(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_url(b"fo"), "Zm8");
        assert_eq!(base64_url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn secret_cookies_carry_their_flags() {
        let c = secret_cookie(SESSION_COOKIE, Some("t"), 60, true);
        assert_eq!(c, "foobar_session=t; Path=/; HttpOnly; SameSite=Lax; Max-Age=60; Secure");
        assert!(secret_cookie(CSRF_COOKIE, None, 0, false).contains("Max-Age=0"));
    }
}
