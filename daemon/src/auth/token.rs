//! API tokens: minting, hashing, and the stored form of a hash.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};

/// Every token starts with this, so a token is recognisable in a leak scan
/// (or a paste) without being checkable by anyone but `sluiced`.
const TOKEN_PREFIX: &str = "slc_";
/// Random bytes in a token: 256 bits, far past any guessing.
const TOKEN_BYTES: usize = 32;
/// How a stored hash begins; naming the algorithm leaves room for another.
const HASH_PREFIX: &str = "sha256:";

/// The SHA-256 of a token: what is stored and compared.
pub(super) type Digest = [u8; 32];

/// A new token: `slc_` and 32 random bytes from the operating system, in
/// unpadded base64url (URL- and shell-safe, no quoting needed).
///
/// Panics if the operating system has no randomness to give, as nothing
/// sensible can be done then.
pub fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random number generator failed");
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The form a token is stored in: `sha256:` and the lowercase hex SHA-256 of
/// the whole token string (prefix included).
pub fn hash_token(token: &str) -> String {
    format!("{HASH_PREFIX}{}", hex(&digest_of(token)))
}

/// The SHA-256 of the whole token string. A plain, fast hash is enough
/// because a token is 256 random bits: unlike a password, it cannot be found
/// by trying likely values, so there is nothing for a slow hash to slow.
pub(super) fn digest_of(token: &str) -> Digest {
    digest(&SHA256, token.as_bytes())
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// Reads a stored hash (`sha256:` and 64 hex digits, either case).
pub(super) fn parse_hash(s: &str) -> Option<Digest> {
    let hex = s.strip_prefix(HASH_PREFIX)?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        // from_str_radix would take a sign ("+f"); only digits are allowed.
        if !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// Equality of two digests in time that does not depend on where they
/// differ: every byte is looked at, whatever the earlier ones were.
///
/// (ring's `constant_time::verify_slices_are_equal` would do, but ring 0.17
/// deprecates it as internal.)
pub(super) fn digests_equal(a: &Digest, b: &Digest) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the compiler from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_look_right_and_differ() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        let body = a.strip_prefix("slc_").unwrap();
        assert_eq!(body.len(), 43, "32 bytes in unpadded base64: {a}");
        assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap().len(), 32);
        assert!(body
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn hash_is_sha256_hex_of_the_whole_token() {
        // SHA-256("abc"), from FIPS 180-2.
        assert_eq!(
            hash_token("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let t = new_token();
        assert_eq!(parse_hash(&hash_token(&t)), Some(digest_of(&t)));
    }

    #[test]
    fn parse_hash_takes_only_the_stored_form() {
        let lower = hash_token("abc");
        assert!(parse_hash(&lower).is_some());
        assert_eq!(
            parse_hash(&lower.to_uppercase().replace("SHA256", "sha256")),
            parse_hash(&lower)
        );
        for bad in [
            "",
            "sha256:",
            &lower[7..],                         // no prefix
            &lower.replace("sha256", "sha512"),  // other algorithm
            &lower[..lower.len() - 1],           // 63 digits
            &format!("{lower}0"),                // 65 digits
            &format!("sha256:g{}", &lower[8..]), // not hex
            &format!("sha256:+{}", &lower[8..]), // a sign is not a digit
            &format!("sha256: {}", &lower[8..]),
        ] {
            assert_eq!(parse_hash(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn digests_compare() {
        let a = digest_of("a");
        let mut b = a;
        assert!(digests_equal(&a, &b));
        b[31] ^= 1;
        assert!(!digests_equal(&a, &b));
        b = a;
        b[0] ^= 0x80;
        assert!(!digests_equal(&a, &b));
    }
}
