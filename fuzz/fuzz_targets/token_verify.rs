//! Token verification (`token::Keyring::verify`) against an oracle, and key
//! files (`Keyring::parse`) from arbitrary text.
//!
//! Properties: a token is accepted only when its 16-byte tag is exactly the
//! one the keyring signs for its user, expiry and key id, and only before its
//! expiry; otherwise the refusal is the first failing check in the order
//! unknown key -> bad tag -> expired. A genuine token with any one of its
//! 256 bits flipped is never accepted. Parsing a key file never panics and
//! never yields more than `KEYS_MAX` keys.
#![no_main]

use arbitrary::Arbitrary;
use hongbao::ids::UserId;
use hongbao::token::{KEYS_MAX, Keyring, Refusal, TOKEN_LEN, Token};

#[derive(Arbitrary, Debug)]
struct Input {
    /// A token's wire bytes, as a client sends them.
    bytes: [u8; TOKEN_LEN],
    /// The server's clock.
    now: u64,
    /// A genuine token's fields and the bit flipped in it.
    user: u32,
    expiry: u64,
    second_key: bool,
    flip: u8,
    /// A key file's text.
    key_file: String,
}

fn keyring() -> Keyring {
    Keyring::new(&[(1, [0x11; 32]), (2, [0x22; 32])]).expect("two keys")
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let keys = keyring();

    // Arbitrary bytes against the oracle.
    let token = Token::from_bytes(&input.bytes).expect("TOKEN_LEN bytes");
    let expected = match keys.sign(token.key_id, token.user, token.expiry) {
        None => Err(Refusal::UnknownKey),
        Some(genuine) if genuine.tag != token.tag => Err(Refusal::BadTag),
        Some(_) if input.now >= token.expiry => Err(Refusal::Expired),
        Some(_) => Ok(token.user),
    };
    assert_eq!(keys.verify(&token, input.now), expected, "{token:?}");
    assert_eq!(token.to_bytes(), input.bytes, "bytes round-trip");

    // A genuine token, valid now, with one bit flipped: never accepted.
    let key_id = if input.second_key { 2 } else { 1 };
    let expiry = input.expiry.max(1);
    let genuine = keys
        .sign(key_id, UserId(input.user), expiry)
        .expect("a known key");
    assert_eq!(keys.verify(&genuine, expiry - 1), Ok(UserId(input.user)));
    let mut bytes = genuine.to_bytes();
    bytes[usize::from(input.flip / 8) % TOKEN_LEN] ^= 1 << (input.flip % 8);
    let forged = Token::from_bytes(&bytes).expect("TOKEN_LEN bytes");
    assert!(
        keys.verify(&forged, 0).is_err() && keys.verify(&forged, expiry - 1).is_err(),
        "a flipped bit was accepted: {forged:?}"
    );

    // Key files from any text.
    if let Ok(parsed) = Keyring::parse(&input.key_file) {
        assert!(!parsed.ids().is_empty() && parsed.ids().len() <= KEYS_MAX);
    }
});
