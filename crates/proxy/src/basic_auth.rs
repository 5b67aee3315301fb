//! HTTP Basic authentication on a route (nginx's `auth_basic` with `auth_basic_user_file`,
//! HAProxy's `http-request auth` with a `userlist`): a request without valid credentials gets
//! 401 and a `WWW-Authenticate` challenge naming the realm.
//!
//! Users come from an htpasswd file (`user:hash` per line; `#` comments), as Apache's
//! `htpasswd` and `openssl passwd` write them: bcrypt (`$2y$`, `$2b$`, `$2a$`; `htpasswd -B`),
//! SHA-512 and SHA-256 crypt (`$6$`, `$5$`; `openssl passwd -6`), and Apache's MD5 (`$apr1$`,
//! `htpasswd`'s default). Plain text and unsalted `{SHA}` are refused at load: a file with
//! them is an error naming its line.
//!
//! Checking a bcrypt or SHA-crypt hash costs milliseconds by design, so it runs on the
//! blocking pool, one per CPU at once, while the event loop serves everyone else (nginx and
//! HAProxy check on their event loop); credentials that passed are remembered for a while
//! (under a keyed hash of the header, never the password): a browser sends the same header
//! with every request and pays once. A reload reads the file again and forgets them.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use md5::{Digest, Md5};

use crate::body::ProxyBody;

/// How long credentials that passed are taken without checking the hash again.
const REMEMBER: Duration = Duration::from_secs(300);
/// At most this many remembered; past it, all are forgotten (and checked again).
const REMEMBER_MAX: usize = 10_000;

/// One password hash from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PasswordHash {
    Bcrypt(String),
    Sha512Crypt(String),
    Sha256Crypt(String),
    Apr1 { salt: String, hash: String },
}

impl PasswordHash {
    fn parse(text: &str) -> Result<PasswordHash, String> {
        if ["$2y$", "$2b$", "$2a$"].iter().any(|p| text.starts_with(p)) {
            return match text.parse::<bcrypt::HashParts>() {
                Ok(_) => Ok(PasswordHash::Bcrypt(text.to_string())),
                Err(e) => Err(format!("not a valid bcrypt hash: {e}")),
            };
        }
        if let Some(rest) = text.strip_prefix("$apr1$") {
            return match rest.split_once('$') {
                Some((salt, hash)) if !salt.is_empty() && salt.len() <= 8 && hash.len() == 22 => {
                    Ok(PasswordHash::Apr1 { salt: salt.to_string(), hash: hash.to_string() })
                }
                _ => Err("not a valid $apr1$ hash".into()),
            };
        }
        // `[rounds=N$]salt$hash`: checked in full when a password is.
        let crypt_fields = |rest: &str| rest.split('$').filter(|f| !f.is_empty()).count() >= 2;
        if text.strip_prefix("$6$").is_some_and(crypt_fields) {
            return Ok(PasswordHash::Sha512Crypt(text.to_string()));
        }
        if text.strip_prefix("$5$").is_some_and(crypt_fields) {
            return Ok(PasswordHash::Sha256Crypt(text.to_string()));
        }
        Err("not a supported hash: use bcrypt (htpasswd -B), $6$ or $5$ (openssl passwd -6), or $apr1$".into())
    }

    fn verifies(&self, password: &str) -> bool {
        match self {
            PasswordHash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            PasswordHash::Sha512Crypt(hash) => sha_crypt::sha512_check(password, hash).is_ok(),
            PasswordHash::Sha256Crypt(hash) => sha_crypt::sha256_check(password, hash).is_ok(),
            PasswordHash::Apr1 { salt, hash } => constant_time_eq(apr1(password, salt).as_bytes(), hash.as_bytes()),
        }
    }
}

/// A route's users and what it remembers of them.
pub struct BasicAuth {
    challenge: HeaderValue,
    users: HashMap<String, PasswordHash>,
    /// Header hash → until when it is taken without checking.
    passed: Mutex<HashMap<u64, Instant>>,
    keys: std::hash::RandomState,
    /// Hash checks at once: a flood of wrong passwords queues here instead of taking every
    /// thread of the blocking pool.
    checking: tokio::sync::Semaphore,
}

/// What a request's credentials call for.
pub enum AuthCheck {
    Admitted,
    Refused,
    /// A password to check against its user's hash.
    Verify(Pending),
}

/// A password waiting to be checked.
pub struct Pending {
    hash: PasswordHash,
    password: String,
    key: u64,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth").field("challenge", &self.challenge).field("users", &self.users.len()).finish()
    }
}

impl BasicAuth {
    /// Reads the users file; an error names the file and line.
    pub fn load(realm: &str, path: &Path) -> Result<BasicAuth, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let users = parse_users(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::new(realm, users)
    }

    fn new(realm: &str, users: HashMap<String, PasswordHash>) -> Result<BasicAuth, String> {
        if realm.is_empty() || realm.contains(['"', '\\']) {
            return Err(format!("realm `{realm}` must be non-empty, without quotes or backslashes"));
        }
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
            .map_err(|_| format!("realm `{realm}` is not a header value"))?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(BasicAuth {
            challenge,
            users,
            passed: Mutex::new(HashMap::new()),
            keys: std::hash::RandomState::new(),
            checking: tokio::sync::Semaphore::new(cpus),
        })
    }

    /// What the request's `Authorization` calls for, without checking a hash: credentials
    /// that passed a moment ago, none at all, or a hash to check ([`BasicAuth::verify`]).
    pub fn check(&self, headers: &HeaderMap) -> AuthCheck {
        let Some(value) = headers.get(header::AUTHORIZATION) else { return AuthCheck::Refused };
        let key = self.keys.hash_one(value.as_bytes());
        if self.lock().get(&key).is_some_and(|until| Instant::now() < *until) {
            return AuthCheck::Admitted;
        }
        let Some((user, password)) = credentials(value) else { return AuthCheck::Refused };
        match self.users.get(&user) {
            Some(hash) => AuthCheck::Verify(Pending { hash: hash.clone(), password, key }),
            None => AuthCheck::Refused,
        }
    }

    /// Checks the password against its hash on the blocking pool (a bcrypt hash takes
    /// milliseconds by design; the event loop keeps serving), at most one check per CPU at
    /// once; remembers credentials that pass.
    pub async fn verify(&self, pending: Pending) -> bool {
        let Ok(_turn) = self.checking.acquire().await else { return false };
        let Pending { hash, password, key } = pending;
        let passed = tokio::task::spawn_blocking(move || hash.verifies(&password)).await.unwrap_or(false);
        if passed {
            let mut remembered = self.lock();
            if remembered.len() >= REMEMBER_MAX {
                remembered.clear();
            }
            remembered.insert(key, Instant::now() + REMEMBER);
        }
        passed
    }

    /// [`BasicAuth::check`] and [`BasicAuth::verify`] in one, on the caller's thread.
    #[cfg(test)]
    fn admits(&self, headers: &HeaderMap) -> bool {
        match self.check(headers) {
            AuthCheck::Admitted => true,
            AuthCheck::Refused => false,
            AuthCheck::Verify(pending) => {
                let runtime = tokio::runtime::Builder::new_current_thread().build();
                runtime.is_ok_and(|r| r.block_on(self.verify(pending)))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.passed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// 401 with the challenge that makes a browser ask for a user and password.
    pub fn challenge(&self) -> Response<ProxyBody> {
        let mut response = crate::forward::error_response(StatusCode::UNAUTHORIZED);
        response.headers_mut().insert(header::WWW_AUTHENTICATE, self.challenge.clone());
        response
    }
}

/// `user:hash` lines; blank lines and `#` comments skipped.
fn parse_users(text: &str) -> Result<HashMap<String, PasswordHash>, String> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(format!("line {}: expected user:hash", i + 1));
        };
        let hash = PasswordHash::parse(hash).map_err(|e| format!("line {} (user `{user}`): {e}", i + 1))?;
        if users.insert(user.to_string(), hash).is_some() {
            return Err(format!("line {}: user `{user}` is in the file twice", i + 1));
        }
    }
    if users.is_empty() {
        return Err("no users in the file".into());
    }
    Ok(users)
}

/// The user and password of `Authorization: Basic base64(user:password)` (RFC 7617).
pub fn credentials(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(token.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Apache's MD5-based crypt (`$apr1$`, Poul-Henning Kamp's md5crypt with Apache's magic):
/// the 22 characters after the salt.
fn apr1(password: &str, salt: &str) -> String {
    let (pw, salt) = (password.as_bytes(), salt.as_bytes());
    let alternate = Md5::new().chain_update(pw).chain_update(salt).chain_update(pw).finalize();
    let mut ctx = Md5::new().chain_update(pw).chain_update(b"$apr1$").chain_update(salt);
    for chunk in (0..pw.len()).step_by(16) {
        ctx.update(&alternate[..(pw.len() - chunk).min(16)]);
    }
    let mut n = pw.len();
    while n > 0 {
        if n & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&pw[..1]);
        }
        n >>= 1;
    }
    let mut digest = ctx.finalize();
    for round in 0..1000 {
        let mut next = Md5::new();
        if round & 1 == 1 {
            next.update(pw);
        } else {
            next.update(digest);
        }
        if round % 3 != 0 {
            next.update(salt);
        }
        if round % 7 != 0 {
            next.update(pw);
        }
        if round & 1 == 1 {
            next.update(digest);
        } else {
            next.update(pw);
        }
        digest = next.finalize();
    }
    const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let d = |i: usize| u32::from(digest[i]);
    let mut out = String::with_capacity(22);
    let mut put = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(ITOA64[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put((d(a) << 16) | (d(b) << 8) | d(c), 4);
    }
    put(d(11), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_password: &str) -> HeaderValue {
        let token = base64::engine::general_purpose::STANDARD.encode(user_password);
        HeaderValue::from_str(&format!("Basic {token}")).unwrap()
    }

    #[test]
    fn apache_md5_matches_what_openssl_passwd_apr1_writes() {
        // `openssl passwd -apr1 -salt lZL6V/ci password`
        assert_eq!(apr1("password", "lZL6V/ci"), "eIMz/iKDkbtys/uU7LEK00");
    }

    #[test]
    fn each_hash_kind_verifies_its_password_only() {
        // Written by `openssl passwd -6 -salt saltsalt`, `-5 -salt s4lt`, `-apr1`.
        let file = "# staff\n\
            ana:$6$saltsalt$e/5XKibXPLqVcfjpD.ouauaJrAOL5V0uo80Lt7n7EbRdRiCx3HbQ90yjOHr.G0T.mx79PEMRy8nmtr0qSYhQp1\n\
            bo:$5$s4lt$MEnKT19HYSI18D0tuGuN2TFJe5rkOEgN6bPVgEhi/zA\n\n\
            cy:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\n";
        let mut users = parse_users(file).unwrap();
        users.insert("di".into(), PasswordHash::parse(&bcrypt::hash("hunter2", 4).unwrap()).unwrap());
        let auth = BasicAuth::new("staff", users).unwrap();
        let mut headers = HeaderMap::new();
        for (right, wrong) in [
            ("ana:open sesame", "ana:open"),
            ("bo:open sesame", "bo:"),
            ("cy:password", "cy:Password"),
            ("di:hunter2", "di:hunter3"),
        ] {
            headers.insert(header::AUTHORIZATION, basic(wrong));
            assert!(!auth.admits(&headers), "{wrong}");
            headers.insert(header::AUTHORIZATION, basic(right));
            assert!(auth.admits(&headers), "{right}");
            assert!(auth.admits(&headers), "{right}, remembered");
        }
        headers.insert(header::AUTHORIZATION, basic("eve:open sesame"));
        assert!(!auth.admits(&headers), "no such user");
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert!(!auth.admits(&headers));
        assert!(!auth.admits(&HeaderMap::new()));
        assert_eq!(auth.challenge().headers()[header::WWW_AUTHENTICATE], "Basic realm=\"staff\", charset=\"UTF-8\"");
    }

    #[test]
    fn a_users_file_with_weak_or_broken_lines_is_refused_with_the_line() {
        assert!(parse_users("ana:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n").unwrap_err().starts_with("line 1 (user `ana`)"));
        assert!(parse_users("# only\n\nbo:plaintext\n").unwrap_err().starts_with("line 3"));
        assert!(parse_users("no colon\n").unwrap_err().contains("user:hash"));
        assert!(parse_users("a:$apr1$x$short\n").is_err());
        assert!(parse_users("a:$2y$05$tooshort\n").is_err());
        assert!(parse_users("\n# nothing\n").unwrap_err().contains("no users"));
        let dup = "a:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\na:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\n";
        assert!(parse_users(dup).unwrap_err().contains("twice"));
        assert!(BasicAuth::new("say \"hi\"", HashMap::new()).is_err());
    }

    #[test]
    fn credentials_are_read_as_rfc_7617_says() {
        assert_eq!(credentials(&basic("a:b:c")), Some(("a".into(), "b:c".into())), "the password may hold colons");
        assert_eq!(credentials(&HeaderValue::from_static("basic YTpi")), Some(("a".into(), "b".into())));
        assert_eq!(credentials(&HeaderValue::from_static("Basic !!!")), None);
        assert_eq!(credentials(&HeaderValue::from_static("Basic")), None);
    }
}
