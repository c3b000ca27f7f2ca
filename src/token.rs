//! Signed login tokens: their bytes, signing and checking, and key files.
//!
//! Owns: the token a signed login (cmd 16, `docs/PROTOCOL.md`) carries —
//! `user: u32, expiry: u64` (Unix seconds), `key_id: u32`, and a 16-byte
//! tag, all big-endian — the tag's definition (HMAC-SHA256 with a
//! server-held key, RustCrypto's `hmac` and `sha2`, cut to its first 16
//! bytes), the [`Keyring`] that checks tokens in constant time, and the key
//! file (`ID:HEX` lines, mode 0600). Must not: allocate, log or read a clock
//! while checking a token: the server does it on the request path with the
//! core's time.
//!
//! The tag is truncated to 128 bits so that the whole signed login is 44
//! bytes, the original's frame limit: every frame keeps fitting the length
//! check decided after 2 bytes. HMAC truncated to half its output is allowed
//! by RFC 2104 §5 and NIST SP 800-107 §5.3.4; 128 bits leaves an online
//! forger one chance in 2^128 per attempt, and each attempt costs a TCP
//! connection and is counted.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ids::UserId;

/// Bytes of a key: SHA-256's block wants at most 64; 32 is its output size,
/// the strength HMAC-SHA256 offers.
pub const KEY_LEN: usize = 32;
/// Bytes of the tag a token carries: HMAC-SHA256's first 16 (see the module).
pub const TAG_LEN: usize = 16;
/// Where a token's expiry starts: after the user, a `u32`.
const EXPIRY_AT: usize = 4;
/// Where its key id starts: after the expiry, a `u64`.
const KEY_ID_AT: usize = EXPIRY_AT + 8;
/// Bytes the tag covers, ahead of it: user (4), expiry (8), key id (4).
const SIGNED_LEN: usize = KEY_ID_AT + 4;
/// Bytes of a token: the signed fields, then the tag (16).
pub const TOKEN_LEN: usize = SIGNED_LEN + TAG_LEN;
/// Keys a server holds at once: two are enough to rotate (the old one
/// until its tokens expire, the new one); a few more leave room for a slow
/// rotation without letting a key file grow unchecked.
pub const KEYS_MAX: usize = 4;
/// What the tag is computed over first, so that a tag made for anything else
/// with the same key can never pass as a login token.
const DOMAIN: &[u8; 24] = b"hongbao signed login v1\0";

type HmacSha256 = Hmac<Sha256>;

/// A signed login's claim and its proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// Who the token lets log in.
    pub user: UserId,
    /// Unix second from which it is refused.
    pub expiry: u64,
    /// Which of the server's keys signed it.
    pub key_id: u32,
    /// HMAC-SHA256 over the fields above, cut to [`TAG_LEN`] bytes.
    pub tag: [u8; TAG_LEN],
}

impl Token {
    /// The token's wire bytes.
    pub fn to_bytes(&self) -> [u8; TOKEN_LEN] {
        let mut b = [0u8; TOKEN_LEN];
        b[..SIGNED_LEN].copy_from_slice(&signed_fields(self.user, self.expiry, self.key_id));
        b[SIGNED_LEN..].copy_from_slice(&self.tag);
        b
    }

    /// A token from its wire bytes; `None` unless exactly [`TOKEN_LEN`].
    pub fn from_bytes(b: &[u8]) -> Option<Token> {
        if b.len() != TOKEN_LEN {
            return None;
        }
        // The length is checked, so no split below fails.
        let (user, rest) = b.split_first_chunk::<EXPIRY_AT>()?;
        let (expiry, rest) = rest.split_first_chunk::<{ KEY_ID_AT - EXPIRY_AT }>()?;
        let (key_id, tag) = rest.split_first_chunk::<{ SIGNED_LEN - KEY_ID_AT }>()?;
        Some(Token {
            user: UserId(u32::from_be_bytes(*user)),
            expiry: u64::from_be_bytes(*expiry),
            key_id: u32::from_be_bytes(*key_id),
            tag: tag.try_into().ok()?,
        })
    }
}

/// The fields the tag covers, as on the wire: user, expiry, key id.
fn signed_fields(user: UserId, expiry: u64, key_id: u32) -> [u8; SIGNED_LEN] {
    let mut b = [0u8; SIGNED_LEN];
    b[..EXPIRY_AT].copy_from_slice(&user.0.to_be_bytes());
    b[EXPIRY_AT..KEY_ID_AT].copy_from_slice(&expiry.to_be_bytes());
    b[KEY_ID_AT..].copy_from_slice(&key_id.to_be_bytes());
    b
}

/// Why a token was refused. The order of the checks is the order here: a
/// token is called expired only once its tag is known to be good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No key with the token's key id (never issued, or removed).
    #[error("unknown key id")]
    UnknownKey,
    /// The tag does not match the fields under that key.
    #[error("bad tag")]
    BadTag,
    /// Genuine, but its expiry has passed.
    #[error("expired")]
    Expired,
}

/// One key: its id and the HMAC state keyed with it (the key's two padded
/// blocks already hashed, so a check hashes only the token's).
#[derive(Clone)]
struct Key {
    id: u32,
    mac: HmacSha256,
}

/// The keys a server checks tokens with (and a flooder or `hongbao token`
/// signs with). Made once at start; checking clones a keyed HMAC state on
/// the stack and allocates nothing.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl fmt::Debug for Keyring {
    /// The key ids only: a key never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.ids())
            .finish()
    }
}

/// A key file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing the file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// Others than its owner may read it.
    #[error(
        "{path}: readable by group or others (mode {mode:o}); a key must be secret: chmod 600 {path}"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A line is not `ID:HEX` with a 32-byte key.
    #[error(
        "line {line}: {why} (each line is `ID:HEX`, a u32 id and a 32-byte key in 64 hex digits)"
    )]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// The file holds no key, too many, or one id twice.
    #[error("{0}")]
    Keys(String),
    /// The OS gave no randomness for a new key.
    #[error("drawing a key from the OS's randomness: {0}")]
    Random(getrandom::Error),
}

impl Keyring {
    /// A keyring of `(id, key)` pairs; an id twice, no key or more than
    /// [`KEYS_MAX`] are refused.
    pub fn new(keys: &[(u32, [u8; KEY_LEN])]) -> Result<Keyring, KeyFileError> {
        if keys.is_empty() {
            return Err(KeyFileError::Keys("no key".into()));
        }
        if keys.len() > KEYS_MAX {
            return Err(KeyFileError::Keys(format!(
                "{} keys; at most {KEYS_MAX} live at once (remove retired ones)",
                keys.len()
            )));
        }
        let mut ring = Keyring::default();
        for (id, key) in keys {
            if ring.keys.iter().any(|k| k.id == *id) {
                return Err(KeyFileError::Keys(format!("key id {id} given twice")));
            }
            ring.keys.push(Key {
                id: *id,
                // HMAC takes a key of any length.
                mac: HmacSha256::new_from_slice(key).expect("HMAC accepts any key length"),
            });
        }
        Ok(ring)
    }

    /// Parses a key file's text: one `ID:HEX` per line; blank lines and
    /// lines starting with `#` are skipped.
    pub fn parse(text: &str) -> Result<Keyring, KeyFileError> {
        let mut keys = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |why: &str| KeyFileError::Syntax {
                line: i + 1,
                why: why.to_string(),
            };
            let (id, hex_key) = line.split_once(':').ok_or_else(|| syntax("no `:`"))?;
            let id: u32 = id
                .trim()
                .parse()
                .map_err(|_| syntax("the id is not a u32"))?;
            let mut key = [0u8; KEY_LEN];
            hex::decode_to_slice(hex_key.trim(), &mut key)
                .map_err(|_| syntax("the key is not 64 hex digits"))?;
            keys.push((id, key));
        }
        Keyring::new(&keys)
    }

    /// Reads a key file, refusing one that group or others may read.
    pub fn load(path: &Path) -> Result<Keyring, KeyFileError> {
        let io = |error| KeyFileError::Io {
            path: path.to_path_buf(),
            error,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Keyring::parse(&text)
    }

    /// The key ids, in the file's order.
    pub fn ids(&self) -> Vec<u32> {
        self.keys.iter().map(|k| k.id).collect()
    }

    /// The newest key's id: the file's last line, the one to sign with.
    pub(crate) fn newest(&self) -> u32 {
        self.keys.last().map_or(0, |k| k.id)
    }

    fn key(&self, id: u32) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }

    fn tag(key: &Key, user: UserId, expiry: u64) -> HmacSha256 {
        let mut mac = key.mac.clone();
        mac.update(DOMAIN);
        mac.update(&signed_fields(user, expiry, key.id));
        mac
    }

    /// A token for `user` until `expiry` signed with key `key_id`; `None`
    /// when there is no such key.
    pub fn sign(&self, key_id: u32, user: UserId, expiry: u64) -> Option<Token> {
        let key = self.key(key_id)?;
        let full = Self::tag(key, user, expiry).finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        Some(Token {
            user,
            expiry,
            key_id,
            tag,
        })
    }

    /// Checks `token` at Unix second `now`: the user it proves, or why not.
    /// The tag is compared in constant time (`Mac::verify_truncated_left`,
    /// the truncated form of `verify_slice`, through `subtle`); nothing is
    /// allocated.
    #[inline]
    pub fn verify(&self, token: &Token, now: u64) -> Result<UserId, Refusal> {
        let key = self.key(token.key_id).ok_or(Refusal::UnknownKey)?;
        Self::tag(key, token.user, token.expiry)
            .verify_truncated_left(&token.tag)
            .map_err(|_| Refusal::BadTag)?;
        if now >= token.expiry {
            return Err(Refusal::Expired);
        }
        Ok(token.user)
    }
}

/// A new key from the OS's randomness (getrandom).
pub fn new_key() -> Result<[u8; KEY_LEN], KeyFileError> {
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key).map_err(KeyFileError::Random)?;
    Ok(key)
}

/// A key file's line for `id` and `key`.
pub(crate) fn key_line(id: u32, key: &[u8; KEY_LEN]) -> String {
    format!("{id}:{}\n", hex::encode(key))
}

/// Adds a new random key with id `id` to the key file at `path`, creating it
/// with mode 0600 if it is missing (and refusing an id the file holds).
/// Returns the file's keyring after the change.
pub fn add_new_key(path: &Path, id: u32) -> Result<Keyring, KeyFileError> {
    let io = |error| KeyFileError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut text = if path.exists() {
        Keyring::load(path)?;
        std::fs::read_to_string(path).map_err(io)?
    } else {
        String::new()
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&key_line(id, &new_key()?));
    // Checked before anything is written: a duplicate id or one key too many
    // leaves the file as it was.
    let ring = Keyring::parse(&text)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|error| KeyFileError::Io {
            path: tmp.clone(),
            error,
        })?;
    let written = f
        .write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(error));
    }
    Ok(ring)
}

/// `hongbao token`: make a key, or issue a token.
#[derive(Clone, Debug, clap::Args)]
pub struct TokenArgs {
    /// Add a new random key to this key file (created with mode 0600 when
    /// missing) under `--key-id` (default: one more than the file's
    /// largest), and print its id. Tokens are not issued with this.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["key_file", "user", "ttl"])]
    pub new_key: Option<PathBuf>,

    /// The key file to sign with.
    #[arg(long, value_name = "FILE", requires_all = ["user", "ttl"])]
    pub key_file: Option<PathBuf>,

    /// The user the token lets log in.
    #[arg(long, value_name = "ID")]
    pub user: Option<u32>,

    /// Seconds from now until the token expires.
    #[arg(long, value_name = "SECS")]
    pub ttl: Option<u64>,

    /// The key to sign with (default: the file's last, newest, key); with
    /// `--new-key`, the new key's id.
    #[arg(long, value_name = "ID")]
    pub key_id: Option<u32>,
}

/// Runs `hongbao token`; prints the new key's id, or the token as 64 hex
/// digits (the 32 bytes a signed login carries after its header).
pub fn run(args: &TokenArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.new_key {
        let id = match args.key_id {
            Some(id) => id,
            None if path.exists() => Keyring::load(path)?
                .ids()
                .into_iter()
                .max()
                .map_or(1, |m| m.saturating_add(1)),
            None => 1,
        };
        add_new_key(path, id)?;
        println!("{id}");
        return Ok(());
    }
    let (Some(path), Some(user), Some(ttl)) = (&args.key_file, args.user, args.ttl) else {
        anyhow::bail!(
            "give --new-key FILE to make a key, or --key-file FILE --user ID --ttl SECS to issue a token"
        );
    };
    let ring = Keyring::load(path)?;
    let key_id = args.key_id.unwrap_or_else(|| ring.newest());
    let expiry = crate::clock::unix_secs()
        .checked_add(ttl)
        .ok_or_else(|| anyhow::anyhow!("--ttl {ttl}: now plus it does not fit a u64"))?;
    let token = ring.sign(key_id, UserId(user), expiry).ok_or_else(|| {
        anyhow::anyhow!(
            "--key-id {key_id}: not in {} (it holds {:?})",
            path.display(),
            ring.ids()
        )
    })?;
    println!("{}", hex::encode(token.to_bytes()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::new(&[(1, [7; KEY_LEN]), (2, [9; KEY_LEN])]).unwrap()
    }

    #[test]
    fn a_signed_token_verifies_and_round_trips_its_bytes() {
        let r = ring();
        let t = r.sign(2, UserId(42), 1_000).unwrap();
        assert_eq!(Token::from_bytes(&t.to_bytes()), Some(t));
        assert_eq!(r.verify(&t, 999), Ok(UserId(42)));
        assert_eq!(r.verify(&t, 1_000), Err(Refusal::Expired));
        assert_eq!(Token::from_bytes(&t.to_bytes()[..31]), None);
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let r = ring();
        let good = r.sign(1, UserId(42), 1_000).unwrap().to_bytes();
        for bit in 0..TOKEN_LEN * 8 {
            let mut b = good;
            b[bit / 8] ^= 1 << (bit % 8);
            let t = Token::from_bytes(&b).unwrap();
            let got = r.verify(&t, 0);
            // A flip in the key id finds no key (ids 1 and 2 differ in two
            // bits, so no single flip turns one into the other).
            let want = if (12..16).contains(&(bit / 8)) {
                Refusal::UnknownKey
            } else {
                Refusal::BadTag
            };
            assert_eq!(got, Err(want), "bit {bit}");
        }
    }

    #[test]
    fn a_key_signs_only_under_its_own_id() {
        let a = Keyring::new(&[(1, [7; KEY_LEN])]).unwrap();
        let b = Keyring::new(&[(1, [8; KEY_LEN])]).unwrap();
        let t = a.sign(1, UserId(1), 10).unwrap();
        assert_eq!(b.verify(&t, 0), Err(Refusal::BadTag));
        assert!(a.sign(3, UserId(1), 10).is_none());
    }

    #[test]
    fn key_files_parse_and_refuse_what_they_must() {
        let text = format!(
            "# rotation\n{}\n{}",
            key_line(1, &[1; 32]),
            key_line(5, &[2; 32])
        );
        let r = Keyring::parse(&text).unwrap();
        assert_eq!((r.ids(), r.newest()), (vec![1, 5], 5));
        assert!(format!("{r:?}").contains("[1, 5]"));
        assert!(!format!("{r:?}").contains("0101"), "no key in Debug");
        for bad in [
            "",
            "1-00",
            "x:00",
            "1:00",
            &format!("{}{}", key_line(1, &[1; 32]), key_line(1, &[2; 32])),
            &(1..=5).map(|i| key_line(i, &[1; 32])).collect::<String>(),
        ] {
            assert!(Keyring::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_new_key_file_is_private_and_grows_by_a_line() {
        let dir = std::env::temp_dir().join(format!("hongbao-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        let _ = std::fs::remove_file(&path);
        add_new_key(&path, 1).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let r = add_new_key(&path, 2).unwrap();
        assert_eq!(r.ids(), [1, 2]);
        assert!(add_new_key(&path, 2).is_err(), "an id twice");
        assert_eq!(Keyring::load(&path).unwrap().ids(), [1, 2]);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Keyring::load(&path),
            Err(KeyFileError::Exposed { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
