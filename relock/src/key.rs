use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::error::{Error, InvalidKeyReason};

/// A validated lock key: 1 to 512 bytes, no control characters, no `{` or `}`.
///
/// The braces are reserved because relock wraps the key in a Redis Cluster hash tag
/// (`relock:{order:42}`), so that a lock's key and its release channel share one Redis Cluster slot.
/// Cloning is cheap.
///
/// Most callers never name this type: [`Locker::lock`](crate::Locker::lock) accepts `&str` and
/// `String` and validates them when the lock is taken.
///
/// ```
/// use relock::LockKey;
///
/// assert_eq!(LockKey::new("order:42")?.as_str(), "order:42");
/// assert!(LockKey::new("order:{42}").is_err());
/// # Ok::<(), relock::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockKey(Arc<str>);

impl LockKey {
    /// The longest key accepted, in bytes.
    pub const MAX_LEN: usize = 512;

    /// Validates `key`, returning [`Error::InvalidKey`] with the reason when it is not usable.
    pub fn new(key: impl AsRef<str>) -> Result<Self, Error> {
        let key = key.as_ref();
        validate(key)?;
        Ok(Self(Arc::from(key)))
    }

    /// The key as the caller wrote it (without prefix or hash tag).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate(key: &str) -> Result<(), Error> {
    let reason = if key.is_empty() {
        InvalidKeyReason::Empty
    } else if key.len() > LockKey::MAX_LEN {
        InvalidKeyReason::TooLong { len: key.len() }
    } else if let Some(reason) = scan(key.as_bytes()) {
        reason
    } else {
        return Ok(());
    };
    Err(Error::InvalidKey {
        key: shorten(key),
        reason,
    })
}

/// Finds braces and control characters (Unicode `Cc`: C0, DEL and C1) in one pass over the
/// bytes: C0 and DEL are single bytes, and C1 is encoded as `0xC2` followed by `0x80..=0x9F`
/// (neither byte of which can start another character). Braces are reported first, as
/// `str::contains` did.
fn scan(bytes: &[u8]) -> Option<InvalidKeyReason> {
    let mut control = false;
    let mut previous = 0u8;
    for &byte in bytes {
        match byte {
            b'{' | b'}' => return Some(InvalidKeyReason::Brace),
            0x00..=0x1f | 0x7f => control = true,
            0x80..=0x9f if previous == 0xc2 => control = true,
            _ => {}
        }
        previous = byte;
    }
    control.then_some(InvalidKeyReason::ControlCharacter)
}

/// Keeps error messages readable when a megabyte of garbage is passed as a key.
fn shorten(key: &str) -> String {
    const SHOWN: usize = 64;
    match key.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &key[..end]),
        None => key.to_owned(),
    }
}

impl fmt::Debug for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for LockKey {
    type Err = Error;

    fn from_str(key: &str) -> Result<Self, Error> {
        Self::new(key)
    }
}

impl AsRef<str> for LockKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Anything that can name a lock: `&str`, `String`, `&String`, `Cow<str>` or a [`LockKey`].
///
/// Validation happens when the lock is taken, so that a bad key surfaces as
/// [`Error::InvalidKey`] from the same `await` as every other lock error.
pub trait IntoLockKey {
    /// Validates and converts.
    fn into_lock_key(self) -> Result<LockKey, Error>;
}

impl IntoLockKey for LockKey {
    fn into_lock_key(self) -> Result<LockKey, Error> {
        Ok(self)
    }
}

impl IntoLockKey for &LockKey {
    fn into_lock_key(self) -> Result<LockKey, Error> {
        Ok(self.clone())
    }
}

impl IntoLockKey for &str {
    fn into_lock_key(self) -> Result<LockKey, Error> {
        LockKey::new(self)
    }
}

impl IntoLockKey for String {
    fn into_lock_key(self) -> Result<LockKey, Error> {
        validate(&self)?;
        Ok(LockKey(Arc::from(self)))
    }
}

impl IntoLockKey for &String {
    fn into_lock_key(self) -> Result<LockKey, Error> {
        LockKey::new(self)
    }
}

impl IntoLockKey for Cow<'_, str> {
    fn into_lock_key(self) -> Result<LockKey, Error> {
        LockKey::new(self)
    }
}

/// A key that could not be computed fails with its error, from the same `await` as every other
/// lock error: for extractors that refuse what they were given (relock-tower refuses a repeated
/// query parameter this way).
///
/// ```
/// use relock::{Error, IntoLockKey, InvalidKeyReason};
///
/// let refused: Result<String, Error> = Err(Error::InvalidKey {
///     key: "cart".into(),
///     reason: InvalidKeyReason::Repeated,
/// });
/// assert!(matches!(
///     refused.into_lock_key(),
///     Err(Error::InvalidKey { reason: InvalidKeyReason::Repeated, .. })
/// ));
/// assert_eq!(Ok::<_, Error>("cart:7").into_lock_key()?.as_str(), "cart:7");
/// # Ok::<(), Error>(())
/// ```
impl<K: IntoLockKey> IntoLockKey for Result<K, Error> {
    fn into_lock_key(self) -> Result<LockKey, Error> {
        self?.into_lock_key()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(key: &str) -> Option<InvalidKeyReason> {
        match LockKey::new(key) {
            Ok(_) => None,
            Err(Error::InvalidKey { reason, .. }) => Some(reason),
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn ordinary_keys_are_accepted() {
        for key in [
            "a",
            "order:42",
            "user/7 profile",
            "ключ",
            "🔒",
            &"x".repeat(512),
        ] {
            assert_eq!(reason(key), None, "{key}");
        }
    }

    #[test]
    fn empty_key_is_rejected() {
        assert_eq!(reason(""), Some(InvalidKeyReason::Empty));
    }

    #[test]
    fn key_over_512_bytes_is_rejected() {
        assert_eq!(
            reason(&"x".repeat(513)),
            Some(InvalidKeyReason::TooLong { len: 513 })
        );
        // 171 three-byte characters: under 512 characters but 513 bytes.
        assert_eq!(
            reason(&"€".repeat(171)),
            Some(InvalidKeyReason::TooLong { len: 513 })
        );
    }

    #[test]
    fn braces_are_rejected() {
        for key in ["{", "}", "order:{42}", "a}b"] {
            assert_eq!(reason(key), Some(InvalidKeyReason::Brace), "{key}");
        }
    }

    #[test]
    fn control_characters_are_rejected() {
        for key in ["a\nb", "\0", "tab\there", "del\u{7f}", "c1\u{85}"] {
            assert_eq!(
                reason(key),
                Some(InvalidKeyReason::ControlCharacter),
                "{key:?}"
            );
        }
    }

    #[test]
    fn the_byte_scan_agrees_with_char_is_control() {
        for code in 0..=0x2000u32 {
            let Some(c) = char::from_u32(code) else {
                continue;
            };
            if c == '{' || c == '}' {
                continue;
            }
            let key = format!("a{c}b");
            let expected = c.is_control().then_some(InvalidKeyReason::ControlCharacter);
            assert_eq!(scan(key.as_bytes()), expected, "U+{code:04X}");
        }
    }

    #[test]
    fn error_names_the_key_and_the_reason() {
        let err = LockKey::new("a{b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid lock key `a{b`: key contains `{` or `}`"
        );
    }

    #[test]
    fn long_keys_are_shortened_in_errors() {
        let Err(Error::InvalidKey { key, .. }) = LockKey::new("y".repeat(10_000)) else {
            panic!("expected InvalidKey");
        };
        assert_eq!(key.chars().count(), 65);
    }

    #[test]
    fn every_key_form_converts() {
        let s = String::from("k");
        assert!("k".into_lock_key().is_ok());
        assert!(s.clone().into_lock_key().is_ok());
        assert!((&s).into_lock_key().is_ok());
        assert!(Cow::Borrowed("k").into_lock_key().is_ok());
        assert!(String::new().into_lock_key().is_err());
    }
}
