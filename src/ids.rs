//! Newtypes for the ids and amounts that must never mix.
//!
//! Owns: `UserId`, `EnvelopeId`, `PacketId`, `CoreId` and `Cents`. Must not:
//! carry behaviour beyond construction and formatting; money arithmetic lives
//! where the money moves (the generator, the session, later the ledger).

use std::fmt;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[derive(serde::Serialize, serde::Deserialize)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_newtype!(
    /// A user as the wire names it (`userid`, u32).
    UserId(u32)
);
id_newtype!(
    /// A shake envelope (`hongbaoid` in a shake result). Ours start at
    /// [`EnvelopeId::FIRST`], as the original's did.
    EnvelopeId(u32)
);
id_newtype!(
    /// A sent red packet (`hongbaoid` in a push or claim).
    PacketId(u32)
);
id_newtype!(
    /// A worker thread's index, 0-based, and the ring it owns.
    CoreId(usize)
);

impl EnvelopeId {
    /// The original numbered shake envelopes from 0x100000; we keep that so a
    /// trace from either server reads the same.
    pub const FIRST: EnvelopeId = EnvelopeId(0x0010_0000);
}

impl PacketId {
    /// The original numbered sent packets from 0x200000.
    pub const FIRST: PacketId = PacketId(0x0020_0000);
}

/// An amount of money in integer cents. Never a float.
///
/// A single envelope or packet must fit the wire's u32 field; sums are u64 so a
/// day of traffic cannot overflow them.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Cents(pub u64);

impl Cents {
    /// The amount as the wire's u32 field.
    ///
    /// # Panics
    ///
    /// When the amount does not fit u32: amounts are validated where they are
    /// created (configuration and control input), so this is a broken
    /// invariant, and one that would corrupt money, hence checked in release.
    #[inline]
    pub fn wire(self) -> u32 {
        assert!(
            self.0 <= u64::from(u32::MAX),
            "amount {self} exceeds the wire's u32"
        );
        self.0 as u32
    }
}

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}c", self.0)
    }
}
