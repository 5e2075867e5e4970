use std::fmt;
use std::sync::Arc;

/// The identity of one hold: 128 random bits, written in Redis as 32 hex digits.
///
/// Every fresh acquisition draws its own, and release and renewal act on that token only, so a
/// late release or renewal of an old hold (lost, force-released, cancelled mid-flight) can never
/// touch a newer hold of the same key, even one taken in the same scope.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct HoldToken(Arc<str>);

impl HoldToken {
    pub(crate) fn random() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bits = rand::random::<u128>();
        let mut text = [0u8; 32];
        for (i, digit) in text.iter_mut().enumerate() {
            *digit = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
        }
        Self(Arc::from(
            std::str::from_utf8(&text).expect("hex digits are ASCII"),
        ))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for HoldToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_hex_digits_and_distinct() {
        let a = HoldToken::random();
        let b = HoldToken::random();
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn tokens_are_the_big_endian_hex_of_128_random_bits() {
        let token = HoldToken::random();
        let parsed = u128::from_str_radix(token.as_str(), 16).unwrap();
        assert_eq!(format!("{parsed:032x}"), token.as_str());
    }
}
