//! Wire format v1, byte for byte as the original clients speak it.
//!
//! Owns: checking, decoding and encoding frames over plain byte slices (see
//! `../shared/reference/wire-v1.md`, restated in `docs/PROTOCOL.md`). Must not:
//! do I/O, read a clock, or allocate per frame. Decoding borrows the input and
//! copies nothing; encoding appends to a caller's buffer, which allocates only
//! while that buffer is still growing to its working size.
//!
//! A frame is `length: u16, cmd: u16, timestamp: u64, body`, all big-endian,
//! where `length` counts the whole frame. Every body field is a u32.
//!
//! Decoding decides as early as the bytes allow, so a hostile peer cannot make
//! us wait for bytes that would only be rejected: a `length` outside the
//! original's bounds is refused after 2 bytes; an unknown `cmd`, or a `length`
//! that does not fit the `cmd`, after 4. The decision depends only on the
//! prefix seen, so a stream cut at any points decodes exactly as when whole.
//!
//! One extension, with a cmd id v1 does not use: the signed login (cmd 16,
//! [`cmd::SIGNED_LOGIN_REQUEST`]), 44 bytes, whose body is a
//! [`crate::token::Token`]. It fits the original's length bounds, so the
//! length check is the same for every frame.

use crate::ids::{Cents, EnvelopeId, PacketId, UserId};
use crate::token::{TOKEN_LEN, Token};

/// Bytes before the body: length (2), cmd (2), timestamp (8).
pub const HEADER_LEN: usize = 12;
/// The original reader refuses `length - 4` outside 4..=40, so frames are
/// 8..=44 bytes long. We keep the same bounds for the length check; the
/// per-cmd size check below is stricter still.
pub const FRAME_LEN_MIN: usize = 8;
/// See [`FRAME_LEN_MIN`].
pub const FRAME_LEN_MAX: usize = 44;

/// The v1 command ids.
pub mod cmd {
    /// Client → server: log in as `userid`.
    pub const LOGIN_REQUEST: u16 = 0;
    /// Server → client: login result.
    pub const LOGIN_RESPONSE: u16 = 1;
    /// Client → server: shake for an envelope.
    pub const SHAKE_REQUEST: u16 = 2;
    /// Server → client: shake result.
    pub const SHAKE_RESPONSE: u16 = 3;
    /// Server → client: a sent packet names you (the original's FaHongbaoRequest).
    pub const PACKET_PUSH: u16 = 4;
    /// Client → server: claim your share of a packet.
    pub const CLAIM_REQUEST: u16 = 5;
    /// Server → client: claim result.
    pub const CLAIM_RESPONSE: u16 = 6;
    /// Client → server, not in v1: log in with a signed token (user, expiry,
    /// key id, tag). Answered by a LoginResponse. 16 leaves 7..=15 free, so a
    /// frame v1 refuses as an unknown cmd is refused the same way here.
    pub const SIGNED_LOGIN_REQUEST: u16 = 16;
}

/// Claimants a packet push (cmd 4) names: the original's frame has room
/// for three; a packet with more names its first three.
pub const PUSH_USERS: usize = 3;

/// The total frame length each v1 command must have, indexed by cmd.
pub const FRAME_LEN_BY_CMD: [usize; 7] = [16, 20, 16, 28, 36, 20, 20];

/// The size of every frame of `cmd`, the signed login's included; `None`
/// for a cmd this protocol does not have. The one table the decoder and
/// [`Frame::len`] read, so a new cmd is sized in one place.
#[inline]
pub(crate) const fn frame_len(cmd: u16) -> Option<usize> {
    if cmd == cmd::SIGNED_LOGIN_REQUEST {
        return Some(SIGNED_LOGIN_LEN);
    }
    if (cmd as usize) < FRAME_LEN_BY_CMD.len() {
        Some(FRAME_LEN_BY_CMD[cmd as usize])
    } else {
        None
    }
}
/// The signed login's length: header and token, the original's 44-byte
/// maximum exactly.
pub(crate) const SIGNED_LOGIN_LEN: usize = HEADER_LEN + TOKEN_LEN;
const _: () = assert!(SIGNED_LOGIN_LEN <= FRAME_LEN_MAX);

/// The `result` of a shake answer. A newtype over the raw u32, because a
/// foreign server may send codes we do not know and the flooder must still
/// count them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShakeOutcome(pub u32);

impl ShakeOutcome {
    /// Got an envelope: `envelope` and `amount` are set.
    pub const GOT: ShakeOutcome = ShakeOutcome(14);
    /// No envelope right now; try again.
    pub const NONE: ShakeOutcome = ShakeOutcome(15);
    /// Every envelope of a bounded batch is gone.
    pub const GONE: ShakeOutcome = ShakeOutcome(16);
    /// The server is over its per-second ceiling; the ring was not touched.
    pub const OVERLOAD: ShakeOutcome = ShakeOutcome(17);
}

/// A decoded v1 frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// cmd 0.
    LoginRequest {
        /// Who logs in.
        user: UserId,
    },
    /// cmd 16: a login that proves who logs in.
    SignedLogin {
        /// The user, expiry, key id and tag.
        token: Token,
    },
    /// cmd 1; `result` 0 is success.
    LoginResponse {
        /// The user the connection is now bound to.
        user: UserId,
        /// 0 = ok.
        result: u32,
    },
    /// cmd 2. The server ignores `user` after login in favour of the session's.
    ShakeRequest {
        /// As sent; not trusted.
        user: UserId,
    },
    /// cmd 3.
    ShakeResponse {
        /// The session's user.
        user: UserId,
        /// See [`ShakeOutcome`].
        result: ShakeOutcome,
        /// 0 unless `result` is [`ShakeOutcome::GOT`].
        envelope: EnvelopeId,
        /// 0 unless `result` is [`ShakeOutcome::GOT`].
        amount: Cents,
    },
    /// cmd 4: a packet names the receiver among its claimants.
    PacketPush {
        /// The packet.
        packet: PacketId,
        /// Its whole amount.
        amount: Cents,
        /// How many users may claim it (`useramount` in the original).
        claimants: u32,
        /// The first three claimants (0 where there are fewer).
        users: [UserId; PUSH_USERS],
    },
    /// cmd 5. The original client leaves `user` 0; the server uses the session's.
    ClaimRequest {
        /// As sent; not trusted.
        user: UserId,
        /// The packet claimed.
        packet: PacketId,
    },
    /// cmd 6: the amount split off for this user, 0 when there is none.
    ClaimResponse {
        /// The packet claimed.
        packet: PacketId,
        /// The user's share.
        amount: Cents,
    },
}

/// A frame and where it sat in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The frame.
    pub frame: Frame,
    /// The sender's clock, Unix seconds, as sent.
    pub timestamp: u64,
    /// Bytes the frame took; the next frame starts there.
    pub len: usize,
}

/// Why bytes are not (yet) a frame. Every variant but `Incomplete` is fatal to
/// the connection that sent them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a whole frame yet: wait for more bytes.
    #[error("incomplete frame")]
    Incomplete,
    /// `length` outside 8..=44.
    #[error("frame length {0} outside {FRAME_LEN_MIN}..={FRAME_LEN_MAX}")]
    BadLength(u16),
    /// `cmd` is not a v1 command.
    #[error("unknown cmd {0}")]
    UnknownCmd(u16),
    /// `length` is not the size `cmd` requires.
    #[error("cmd {cmd} needs {expected} bytes, frame says {got}")]
    BadSize {
        /// The command.
        cmd: u16,
        /// Its fixed size.
        expected: u8,
        /// The frame's `length`.
        got: u16,
    },
}

#[inline(always)]
fn be16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

#[inline(always)]
fn be32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

#[inline(always)]
fn be64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}

/// Decodes the frame at the start of `buf`.
///
/// Never panics, whatever `buf` holds. Always inlined: a frame handed back
/// through memory to a caller costs more than the decoding (a store-to-load
/// round trip of the whole `Decoded`), and the hot path decodes one per
/// request.
#[inline(always)]
pub fn decode(buf: &[u8]) -> Result<Decoded, DecodeError> {
    if buf.len() < 2 {
        return Err(DecodeError::Incomplete);
    }
    let length = be16(buf, 0);
    if !(FRAME_LEN_MIN..=FRAME_LEN_MAX).contains(&usize::from(length)) {
        return Err(DecodeError::BadLength(length));
    }
    if buf.len() < 4 {
        return Err(DecodeError::Incomplete);
    }
    let cmd = be16(buf, 2);
    let Some(expected) = frame_len(cmd) else {
        return Err(DecodeError::UnknownCmd(cmd));
    };
    let len = usize::from(length);
    if len != expected {
        return Err(DecodeError::BadSize {
            cmd,
            expected: expected as u8,
            got: length,
        });
    }
    if buf.len() < len {
        return Err(DecodeError::Incomplete);
    }
    let timestamp = be64(buf, 4);
    let body = &buf[HEADER_LEN..len];
    let f = |i: usize| be32(body, 4 * i);
    let frame = match cmd {
        cmd::LOGIN_REQUEST => Frame::LoginRequest { user: UserId(f(0)) },
        cmd::LOGIN_RESPONSE => Frame::LoginResponse {
            user: UserId(f(0)),
            result: f(1),
        },
        cmd::SHAKE_REQUEST => Frame::ShakeRequest { user: UserId(f(0)) },
        cmd::SHAKE_RESPONSE => Frame::ShakeResponse {
            user: UserId(f(0)),
            result: ShakeOutcome(f(1)),
            envelope: EnvelopeId(f(2)),
            amount: Cents(u64::from(f(3))),
        },
        cmd::PACKET_PUSH => Frame::PacketPush {
            packet: PacketId(f(0)),
            amount: Cents(u64::from(f(1))),
            claimants: f(2),
            users: [UserId(f(3)), UserId(f(4)), UserId(f(5))],
        },
        cmd::CLAIM_REQUEST => Frame::ClaimRequest {
            user: UserId(f(0)),
            packet: PacketId(f(1)),
        },
        cmd::CLAIM_RESPONSE => Frame::ClaimResponse {
            packet: PacketId(f(0)),
            amount: Cents(u64::from(f(1))),
        },
        cmd::SIGNED_LOGIN_REQUEST => Frame::SignedLogin {
            token: Token::from_bytes(body)
                .expect("the size check admitted exactly a token's bytes"),
        },
        // The lookup above admitted only cmds 0..=6 and 16.
        _ => unreachable!("cmd {cmd} passed the size table"),
    };
    Ok(Decoded {
        frame,
        timestamp,
        len,
    })
}

impl Frame {
    /// The frame's cmd id.
    pub fn cmd(&self) -> u16 {
        match self {
            Frame::LoginRequest { .. } => cmd::LOGIN_REQUEST,
            Frame::SignedLogin { .. } => cmd::SIGNED_LOGIN_REQUEST,
            Frame::LoginResponse { .. } => cmd::LOGIN_RESPONSE,
            Frame::ShakeRequest { .. } => cmd::SHAKE_REQUEST,
            Frame::ShakeResponse { .. } => cmd::SHAKE_RESPONSE,
            Frame::PacketPush { .. } => cmd::PACKET_PUSH,
            Frame::ClaimRequest { .. } => cmd::CLAIM_REQUEST,
            Frame::ClaimResponse { .. } => cmd::CLAIM_RESPONSE,
        }
    }

    /// Bytes this frame takes on the wire.
    pub fn len(&self) -> usize {
        match frame_len(self.cmd()) {
            Some(len) => len,
            None => unreachable!("every Frame variant has a cmd of this protocol"),
        }
    }

    /// Never true: every frame has a header. Present because `len` is.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Appends the frame, stamped with `timestamp`, to `out`.
    ///
    /// Each variant is laid out in an array of its own fixed size, so an
    /// answer is a few register stores and one copy of known length (the
    /// hot path encodes one per shake).
    #[inline]
    pub fn encode(&self, timestamp: u64, out: &mut Vec<u8>) {
        match *self {
            Frame::SignedLogin { token } => {
                let mut bytes = header::<SIGNED_LOGIN_LEN>(cmd::SIGNED_LOGIN_REQUEST, timestamp);
                bytes[HEADER_LEN..].copy_from_slice(&token.to_bytes());
                out.extend_from_slice(&bytes);
            }
            Frame::LoginRequest { user } => {
                put::<{ cmd::LOGIN_REQUEST }, 16, 1>(out, timestamp, [user.0]);
            }
            Frame::ShakeRequest { user } => {
                put::<{ cmd::SHAKE_REQUEST }, 16, 1>(out, timestamp, [user.0]);
            }
            Frame::LoginResponse { user, result } => {
                put::<{ cmd::LOGIN_RESPONSE }, 20, 2>(out, timestamp, [user.0, result]);
            }
            Frame::ShakeResponse {
                user,
                result,
                envelope,
                amount,
            } => put::<{ cmd::SHAKE_RESPONSE }, 28, 4>(
                out,
                timestamp,
                [user.0, result.0, envelope.0, amount.wire()],
            ),
            Frame::PacketPush {
                packet,
                amount,
                claimants,
                users,
            } => put::<{ cmd::PACKET_PUSH }, 36, 6>(
                out,
                timestamp,
                [
                    packet.0,
                    amount.wire(),
                    claimants,
                    users[0].0,
                    users[1].0,
                    users[2].0,
                ],
            ),
            Frame::ClaimRequest { user, packet } => {
                put::<{ cmd::CLAIM_REQUEST }, 20, 2>(out, timestamp, [user.0, packet.0]);
            }
            Frame::ClaimResponse { packet, amount } => {
                put::<{ cmd::CLAIM_RESPONSE }, 20, 2>(out, timestamp, [packet.0, amount.wire()]);
            }
        }
    }
}

/// A frame of `LEN` bytes with its header written: length, `cmd`,
/// `timestamp`; the body zero.
#[inline(always)]
fn header<const LEN: usize>(cmd: u16, timestamp: u64) -> [u8; LEN] {
    let mut bytes = [0u8; LEN];
    bytes[0..2].copy_from_slice(&(LEN as u16).to_be_bytes());
    bytes[2..4].copy_from_slice(&cmd.to_be_bytes());
    bytes[4..HEADER_LEN].copy_from_slice(&timestamp.to_be_bytes());
    bytes
}

/// Appends a frame of `CMD`, `LEN` bytes, whose body is `FIELDS` u32s.
/// `LEN` is checked at compile time against [`FRAME_LEN_BY_CMD`] and the
/// fields' count (an array's size cannot be computed from `CMD` itself).
#[inline(always)]
fn put<const CMD: u16, const LEN: usize, const FIELDS: usize>(
    out: &mut Vec<u8>,
    timestamp: u64,
    fields: [u32; FIELDS],
) {
    const { assert!(LEN == FRAME_LEN_BY_CMD[CMD as usize] && LEN == HEADER_LEN + 4 * FIELDS) };
    let mut bytes = header::<LEN>(CMD, timestamp);
    for (i, field) in fields.iter().enumerate() {
        let at = HEADER_LEN + 4 * i;
        bytes[at..at + 4].copy_from_slice(&field.to_be_bytes());
    }
    out.extend_from_slice(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes_of(frame: Frame, ts: u64) -> Vec<u8> {
        let mut out = Vec::new();
        frame.encode(ts, &mut out);
        out
    }

    #[test]
    fn login_request_bytes_match_the_reference_layout() {
        let b = bytes_of(
            Frame::LoginRequest {
                user: UserId(0x0102_0304),
            },
            0x1122_3344_5566_7788,
        );
        assert_eq!(
            b,
            [
                0, 16, 0, 0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 1, 2, 3, 4
            ]
        );
    }

    #[test]
    fn every_cmd_has_its_reference_size() {
        let frames = sample_frames();
        let sizes: Vec<usize> = frames.iter().map(|f| bytes_of(*f, 7).len()).collect();
        assert_eq!(sizes, [16, 20, 16, 28, 36, 20, 20]);
    }

    #[test]
    fn signed_login_bytes_are_header_then_token() {
        let token = Token {
            user: UserId(0x0102_0304),
            expiry: 0x1112_1314_1516_1718,
            key_id: 0x2122_2324,
            tag: [0xaa; 16],
        };
        let b = bytes_of(Frame::SignedLogin { token }, 5);
        assert_eq!(b.len(), 44);
        assert_eq!(&b[..12], &[0, 44, 0, 16, 0, 0, 0, 0, 0, 0, 0, 5]);
        assert_eq!(&b[12..16], &[1, 2, 3, 4]);
        assert_eq!(
            &b[16..24],
            &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]
        );
        assert_eq!(&b[24..28], &[0x21, 0x22, 0x23, 0x24]);
        assert_eq!(&b[28..], &[0xaa; 16]);
        // Cut short in its length field: refused after 4 bytes.
        assert_eq!(
            decode(&[0, 40, 0, 16]),
            Err(DecodeError::BadSize {
                cmd: 16,
                expected: 44,
                got: 40
            })
        );
        // A full 32-byte tag would not fit: refused after 2 bytes.
        assert_eq!(decode(&[0, 60, 0, 16]), Err(DecodeError::BadLength(60)));
    }

    #[test]
    fn bad_length_is_refused_after_two_bytes() {
        assert_eq!(decode(&[0]), Err(DecodeError::Incomplete));
        assert_eq!(decode(&[0, 7]), Err(DecodeError::BadLength(7)));
        assert_eq!(decode(&[0, 45, 0, 0]), Err(DecodeError::BadLength(45)));
        assert_eq!(decode(&[0xff, 0xff]), Err(DecodeError::BadLength(0xffff)));
    }

    #[test]
    fn unknown_cmd_and_bad_size_are_refused_after_four_bytes() {
        assert_eq!(decode(&[0, 16, 0, 7]), Err(DecodeError::UnknownCmd(7)));
        assert_eq!(
            decode(&[0, 20, 0, 2]),
            Err(DecodeError::BadSize {
                cmd: 2,
                expected: 16,
                got: 20
            })
        );
        assert_eq!(decode(&[0, 16, 0, 2, 0]), Err(DecodeError::Incomplete));
    }

    #[test]
    fn trailing_bytes_are_left_for_the_next_frame() {
        let mut b = bytes_of(Frame::ShakeRequest { user: UserId(9) }, 1);
        b.extend_from_slice(&[0, 16]);
        let d = decode(&b).unwrap();
        assert_eq!(d.len, 16);
        assert_eq!(d.frame, Frame::ShakeRequest { user: UserId(9) });
        assert_eq!(decode(&b[d.len..]), Err(DecodeError::Incomplete));
    }

    fn sample_frames() -> [Frame; 7] {
        [
            Frame::LoginRequest { user: UserId(1) },
            Frame::LoginResponse {
                user: UserId(1),
                result: 0,
            },
            Frame::ShakeRequest { user: UserId(1) },
            Frame::ShakeResponse {
                user: UserId(1),
                result: ShakeOutcome::GOT,
                envelope: EnvelopeId::FIRST,
                amount: Cents(309),
            },
            Frame::PacketPush {
                packet: PacketId::FIRST,
                amount: Cents(300),
                claimants: 3,
                users: [UserId(1), UserId(2), UserId(3)],
            },
            Frame::ClaimRequest {
                user: UserId(0),
                packet: PacketId::FIRST,
            },
            Frame::ClaimResponse {
                packet: PacketId::FIRST,
                amount: Cents(100),
            },
        ]
    }

    fn any_frame() -> impl Strategy<Value = Frame> {
        let u = any::<u32>;
        prop_oneof![
            u().prop_map(|a| Frame::LoginRequest { user: UserId(a) }),
            (u(), u()).prop_map(|(a, b)| Frame::LoginResponse {
                user: UserId(a),
                result: b
            }),
            u().prop_map(|a| Frame::ShakeRequest { user: UserId(a) }),
            (u(), u(), u(), u()).prop_map(|(a, b, c, d)| Frame::ShakeResponse {
                user: UserId(a),
                result: ShakeOutcome(b),
                envelope: EnvelopeId(c),
                amount: Cents(u64::from(d)),
            }),
            (u(), u(), u(), u(), u(), u()).prop_map(|(a, b, c, d, e, f)| Frame::PacketPush {
                packet: PacketId(a),
                amount: Cents(u64::from(b)),
                claimants: c,
                users: [UserId(d), UserId(e), UserId(f)],
            }),
            (u(), u()).prop_map(|(a, b)| Frame::ClaimRequest {
                user: UserId(a),
                packet: PacketId(b)
            }),
            (u(), u()).prop_map(|(a, b)| Frame::ClaimResponse {
                packet: PacketId(a),
                amount: Cents(u64::from(b))
            }),
            (u(), any::<u64>(), u(), any::<[u8; 16]>()).prop_map(|(a, b, c, d)| {
                Frame::SignedLogin {
                    token: Token {
                        user: UserId(a),
                        expiry: b,
                        key_id: c,
                        tag: d,
                    },
                }
            }),
        ]
    }

    /// Decodes a whole stream: the frames, then how it ended (`Incomplete`
    /// when it ran out of bytes, or the first rejection).
    fn decode_all(mut buf: &[u8]) -> (Vec<Frame>, DecodeError) {
        let mut frames = Vec::new();
        loop {
            match decode(buf) {
                Ok(d) => {
                    frames.push(d.frame);
                    buf = &buf[d.len..];
                }
                Err(e) => return (frames, e),
            }
        }
    }

    /// Feeds `stream` in the chunks that `cuts` marks, keeping a leftover the
    /// way the server keeps a partial frame.
    fn decode_chunked(stream: &[u8], cuts: &[usize]) -> (Vec<Frame>, DecodeError) {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        let mut pending: Vec<u8> = Vec::new();
        let mut frames = Vec::new();
        let mut from = 0;
        for to in points {
            pending.extend_from_slice(&stream[from..to]);
            from = to;
            let mut at = 0;
            loop {
                match decode(&pending[at..]) {
                    Ok(d) => {
                        frames.push(d.frame);
                        at += d.len;
                    }
                    Err(DecodeError::Incomplete) => break,
                    Err(e) => return (frames, e),
                }
            }
            pending.drain(..at);
        }
        (frames, DecodeError::Incomplete)
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(frame in any_frame(), ts in any::<u64>()) {
            let b = bytes_of(frame, ts);
            let d = decode(&b).unwrap();
            prop_assert_eq!(d.frame, frame);
            prop_assert_eq!(d.timestamp, ts);
            prop_assert_eq!(d.len, b.len());
            for cut in 0..b.len() {
                prop_assert_eq!(decode(&b[..cut]), Err(DecodeError::Incomplete));
            }
        }

        #[test]
        fn any_bytes_cut_anywhere_decode_as_when_whole(
            stream in proptest::collection::vec(any::<u8>(), 0..256),
            cuts in proptest::collection::vec(any::<usize>(), 0..16),
        ) {
            prop_assert_eq!(decode_chunked(&stream, &cuts), decode_all(&stream));
        }

        #[test]
        fn valid_streams_cut_anywhere_yield_every_frame(
            frames in proptest::collection::vec(any_frame(), 0..40),
            cuts in proptest::collection::vec(any::<usize>(), 0..40),
        ) {
            let mut stream = Vec::new();
            for f in &frames {
                f.encode(3, &mut stream);
            }
            let (got, end) = decode_chunked(&stream, &cuts);
            prop_assert_eq!(&got, &frames);
            prop_assert_eq!(end, DecodeError::Incomplete);
        }
    }
}
