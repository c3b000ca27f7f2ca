//! A push's note as the engine carries it: in a user's mailbox (a zset
//! member) and in a node's push stream (field `n`).
//!
//! Owns: `PushNote` and its text form. Must not: talk to Redis, or panic on
//! a note read back from it (a malformed one is an error).

use std::fmt::Write as _;

use super::error::EngineError;
use crate::ids::{Cents, PacketId, UserId};
use crate::wire::PUSH_USERS;

/// What a target is told about a packet (the push, cmd 4), as the engine
/// keeps it until delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PushNote {
    /// The packet.
    pub packet: PacketId,
    /// Its amount.
    pub amount: Cents,
    /// How many may claim it.
    pub claimants: u32,
    /// Its first three targets; `UserId(0)` where there are fewer.
    pub targets: [UserId; PUSH_USERS],
    /// When it expires (Unix seconds): the mailbox forgets it then.
    pub expires_s: u64,
}

impl PushNote {
    /// The note as text: `packet:amount:claimants:t1:t2:t3:expires_s`, all
    /// decimal. Equal notes have equal text, so a mailbox (a zset) holds a
    /// note once however often it is routed.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(64);
        // Writing into a String cannot fail.
        let _ = write!(
            s,
            "{}:{}:{}:{}:{}:{}:{}",
            self.packet.0,
            self.amount.0,
            self.claimants,
            self.targets[0].0,
            self.targets[1].0,
            self.targets[2].0,
            self.expires_s
        );
        s
    }

    /// A note from its text; anything but seven decimal fields that fit
    /// their types is [`EngineError::BadReply`].
    pub fn decode(text: &str) -> Result<PushNote, EngineError> {
        let bad = || EngineError::BadReply(format!("a malformed push note {text:?}"));
        let mut fields = text.split(':');
        let mut next = || fields.next().ok_or_else(bad);
        let u32_of = |s: &str| s.parse::<u32>().map_err(|_| bad());
        let u64_of = |s: &str| s.parse::<u64>().map_err(|_| bad());
        let packet = PacketId(u32_of(next()?)?);
        let amount = Cents(u64_of(next()?)?);
        let claimants = u32_of(next()?)?;
        let targets = [
            UserId(u32_of(next()?)?),
            UserId(u32_of(next()?)?),
            UserId(u32_of(next()?)?),
        ];
        let expires_s = u64_of(next()?)?;
        if fields.next().is_some() {
            return Err(bad());
        }
        Ok(PushNote {
            packet,
            amount,
            claimants,
            targets,
            expires_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_note_reads_back_as_written() {
        let n = PushNote {
            packet: PacketId(0x20_0001),
            amount: Cents(1_000),
            claimants: 3,
            targets: [UserId(1), UserId(2), UserId(0)],
            expires_s: 1_700_000_000,
        };
        assert_eq!(n.encode(), "2097153:1000:3:1:2:0:1700000000");
        assert_eq!(PushNote::decode(&n.encode()).unwrap(), n);
    }

    #[test]
    fn malformed_notes_are_errors() {
        for bad in [
            "",
            "1:2:3:4:5:6",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:x",
            "-1:2:3:4:5:6:7",
            "1:2:3:4294967296:5:6:7",
            "1::3:4:5:6:7",
            " 1:2:3:4:5:6:7",
        ] {
            assert!(
                matches!(PushNote::decode(bad), Err(EngineError::BadReply(_))),
                "{bad:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn any_text_decodes_or_errs_without_panic(s in "\\PC*") {
            let _ = PushNote::decode(&s);
        }

        #[test]
        fn any_note_round_trips(p: u32, a: u64, c: u32, t: [u32; 3], e: u64) {
            let n = PushNote {
                packet: PacketId(p),
                amount: Cents(a),
                claimants: c,
                targets: t.map(UserId),
                expires_s: e,
            };
            prop_assert_eq!(PushNote::decode(&n.encode()).unwrap(), n);
        }
    }
}
