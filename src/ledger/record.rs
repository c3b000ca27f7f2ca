//! One ledger record: 40 bytes, fixed fields, a magic and a CRC32.
//!
//! Owns: the on-disk layout of a record and its checks. Must not: know how
//! records are grouped, written or replayed.
//!
//! | offset | size | field | meaning |
//! |---|---|---|---|
//! | 0 | 4 | magic | `HBL1` |
//! | 4 | 1 | kind | see [`Record`] |
//! | 5 | 1 | reserved | 0 |
//! | 6 | 2 | index | claimant count (packet created, cluster packet created), target index (packet target) |
//! | 8 | 4 | id | envelope or packet id; batch number (commit); budget epoch (lease) |
//! | 12 | 4 | user | the user money moved to (grant, claim), a packet's target |
//! | 16 | 8 | cents | the amount; records in the batch (commit); envelopes (lease) |
//! | 24 | 8 | at_ms | wall clock, Unix milliseconds, when the record was made |
//! | 32 | 4 | until_s | a packet's expiry, Unix seconds (packet created) |
//! | 36 | 4 | crc | CRC32 (IEEE) of bytes 0..36 |
//!
//! Integers are little-endian. A field a kind does not use is 0, and decoding
//! refuses a record whose unused fields are not 0, so a flipped bit there is
//! caught even if it kept the CRC (it cannot, but the check costs nothing).

use crate::ids::{Cents, EnvelopeId, PacketId, UserId};

/// Bytes per record.
pub const RECORD_LEN: usize = 40;
/// The first four bytes of every record.
pub const MAGIC: [u8; 4] = *b"HBL1";

const KIND_ENVELOPE_GENERATED: u8 = 1;
const KIND_ENVELOPE_GRANTED: u8 = 2;
const KIND_ENVELOPE_RETURNED: u8 = 3;
const KIND_PACKET_CREATED: u8 = 4;
const KIND_PACKET_TARGET: u8 = 5;
const KIND_CLAIM: u8 = 6;
const KIND_REFUND: u8 = 7;
const KIND_COMMIT: u8 = 8;
const KIND_CLUSTER_PACKET_CREATED: u8 = 9;
const KIND_CLUSTER_CLAIM: u8 = 10;
const KIND_CLUSTER_REFUND: u8 = 11;
const KIND_LEASE: u8 = 12;

/// A movement of money, or the end of a group commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// The generator made a shake envelope (money enters).
    EnvelopeGenerated {
        /// Its id.
        id: EnvelopeId,
        /// Its amount.
        cents: Cents,
        /// When.
        at_ms: u64,
    },
    /// A shake handed an envelope to a user.
    EnvelopeGranted {
        /// The envelope.
        id: EnvelopeId,
        /// Who got it.
        user: UserId,
        /// Its amount (must equal the generated amount).
        cents: Cents,
        /// When.
        at_ms: u64,
    },
    /// An envelope left circulation unclaimed (its time to live passed).
    EnvelopeReturned {
        /// The envelope.
        id: EnvelopeId,
        /// Its amount.
        cents: Cents,
        /// When.
        at_ms: u64,
    },
    /// A sent packet was created (money enters); its `claimants` targets
    /// follow at once as [`Record::PacketTarget`] records.
    PacketCreated {
        /// The packet.
        id: PacketId,
        /// Its amount, at least one cent per claimant.
        cents: Cents,
        /// How many users may claim it (1..=100), each named by a target.
        claimants: u16,
        /// When.
        at_ms: u64,
        /// When it expires and its remainder is refunded, Unix seconds.
        until_s: u32,
    },
    /// One user a packet is for.
    PacketTarget {
        /// The packet.
        id: PacketId,
        /// 0-based position among the packet's targets.
        index: u16,
        /// The user.
        user: UserId,
    },
    /// A targeted user's share of a packet.
    Claim {
        /// The packet.
        id: PacketId,
        /// Who claimed.
        user: UserId,
        /// Their share, at least one cent.
        cents: Cents,
        /// When.
        at_ms: u64,
    },
    /// An expired packet's unclaimed remainder left circulation.
    Refund {
        /// The packet.
        id: PacketId,
        /// The remainder.
        cents: Cents,
        /// When.
        at_ms: u64,
    },
    /// Cluster mode: this node created a packet in the engine (recorded
    /// before the engine call); its targets follow at once as
    /// [`Record::PacketTarget`] records. Its claims are decided in the
    /// engine and mirrored, on whichever node acknowledged them, as
    /// [`Record::ClusterClaim`].
    ClusterPacketCreated {
        /// The packet (unique across the fleet: reserved from the engine).
        id: PacketId,
        /// Its amount, at least one cent per claimant.
        cents: Cents,
        /// How many users may claim it (1..=100).
        claimants: u16,
        /// When.
        at_ms: u64,
        /// When it expires and its remainder is refunded, Unix seconds.
        until_s: u32,
    },
    /// Cluster mode: the mirror of a claim the engine paid and this node
    /// acknowledged (the packet may have been created on another node); a
    /// repeat acknowledged here is mirrored too, for the same amount.
    ClusterClaim {
        /// The packet.
        id: PacketId,
        /// Who claimed.
        user: UserId,
        /// Their share as the engine paid it.
        cents: Cents,
        /// When.
        at_ms: u64,
    },
    /// Cluster mode: the engine refunded the unclaimed remainder of a packet
    /// this node created, once, at its expiry.
    ClusterRefund {
        /// The packet.
        id: PacketId,
        /// The remainder.
        cents: Cents,
        /// When.
        at_ms: u64,
    },
    /// Cluster mode: envelopes this node leased from the fleet's budget
    /// (epoch = the `/yaohongbao` batch it belongs to); the node generates
    /// no more envelopes than it leased.
    Lease {
        /// The budget's epoch.
        epoch: u32,
        /// Envelopes leased.
        envelopes: u64,
        /// When.
        at_ms: u64,
    },
    /// Ends one group commit: `records` records (this one excluded) were
    /// written with it and made durable by one sync.
    Commit {
        /// The commit's number, counting from 1 in each file.
        batch: u32,
        /// Records in the batch before this one.
        records: u64,
    },
}

/// Why 40 bytes are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The magic is wrong: not a record, or not aligned.
    #[error("bad magic")]
    Magic,
    /// The checksum does not match: the bytes changed after writing.
    #[error("checksum mismatch")]
    Crc,
    /// The kind is not one we write.
    #[error("unknown kind {0}")]
    Kind(u8),
    /// A field the kind does not use is not 0, or a used one is out of range.
    #[error("field {0} is not valid for this kind")]
    Field(&'static str),
}

impl Record {
    /// A packet's creation: [`Record::ClusterPacketCreated`] in cluster
    /// mode (its claims are the engine's), [`Record::PacketCreated`] else.
    pub fn packet_created(
        cluster: bool,
        id: PacketId,
        cents: Cents,
        claimants: u16,
        at_ms: u64,
        until_s: u32,
    ) -> Record {
        if cluster {
            Record::ClusterPacketCreated {
                id,
                cents,
                claimants,
                at_ms,
                until_s,
            }
        } else {
            Record::PacketCreated {
                id,
                cents,
                claimants,
                at_ms,
                until_s,
            }
        }
    }

    /// Writes the record's 40 bytes.
    pub fn encode(&self, out: &mut [u8; RECORD_LEN]) {
        let (kind, index, id, user, cents, at_ms, until_s) = match *self {
            Record::EnvelopeGenerated { id, cents, at_ms } => {
                (KIND_ENVELOPE_GENERATED, 0, id.0, 0, cents.0, at_ms, 0)
            }
            Record::EnvelopeGranted {
                id,
                user,
                cents,
                at_ms,
            } => (KIND_ENVELOPE_GRANTED, 0, id.0, user.0, cents.0, at_ms, 0),
            Record::EnvelopeReturned { id, cents, at_ms } => {
                (KIND_ENVELOPE_RETURNED, 0, id.0, 0, cents.0, at_ms, 0)
            }
            Record::PacketCreated {
                id,
                cents,
                claimants,
                at_ms,
                until_s,
            } => (
                KIND_PACKET_CREATED,
                claimants,
                id.0,
                0,
                cents.0,
                at_ms,
                until_s,
            ),
            Record::PacketTarget { id, index, user } => {
                (KIND_PACKET_TARGET, index, id.0, user.0, 0, 0, 0)
            }
            Record::Claim {
                id,
                user,
                cents,
                at_ms,
            } => (KIND_CLAIM, 0, id.0, user.0, cents.0, at_ms, 0),
            Record::Refund { id, cents, at_ms } => (KIND_REFUND, 0, id.0, 0, cents.0, at_ms, 0),
            Record::Commit { batch, records } => (KIND_COMMIT, 0, batch, 0, records, 0, 0),
            Record::ClusterPacketCreated {
                id,
                cents,
                claimants,
                at_ms,
                until_s,
            } => (
                KIND_CLUSTER_PACKET_CREATED,
                claimants,
                id.0,
                0,
                cents.0,
                at_ms,
                until_s,
            ),
            Record::ClusterClaim {
                id,
                user,
                cents,
                at_ms,
            } => (KIND_CLUSTER_CLAIM, 0, id.0, user.0, cents.0, at_ms, 0),
            Record::ClusterRefund { id, cents, at_ms } => {
                (KIND_CLUSTER_REFUND, 0, id.0, 0, cents.0, at_ms, 0)
            }
            Record::Lease {
                epoch,
                envelopes,
                at_ms,
            } => (KIND_LEASE, 0, epoch, 0, envelopes, at_ms, 0),
        };
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = kind;
        out[5] = 0;
        out[6..8].copy_from_slice(&index.to_le_bytes());
        out[8..12].copy_from_slice(&id.to_le_bytes());
        out[12..16].copy_from_slice(&user.to_le_bytes());
        out[16..24].copy_from_slice(&cents.to_le_bytes());
        out[24..32].copy_from_slice(&at_ms.to_le_bytes());
        out[32..36].copy_from_slice(&until_s.to_le_bytes());
        let crc = crc32fast::hash(&out[..36]);
        out[36..40].copy_from_slice(&crc.to_le_bytes());
    }

    /// Appends the record's 40 bytes to `out`.
    pub fn encode_to(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; RECORD_LEN];
        self.encode(&mut b);
        out.extend_from_slice(&b);
    }

    /// Reads a record, checking magic, checksum, kind and fields, in that
    /// order: the reserved byte before the kind, then the fields the kind
    /// leaves unused, in layout order.
    pub fn decode(b: &[u8; RECORD_LEN]) -> Result<Record, RecordError> {
        if b[0..4] != MAGIC {
            return Err(RecordError::Magic);
        }
        let crc = u32::from_le_bytes(b[36..40].try_into().expect("4 bytes"));
        if crc32fast::hash(&b[..36]) != crc {
            return Err(RecordError::Crc);
        }
        if b[5] != 0 {
            return Err(RecordError::Field("reserved"));
        }
        Fields::read(b).into_record(b[4])
    }
}

/// A field a kind may leave unused, which must then be 0; in layout order.
#[derive(Clone, Copy)]
enum Field {
    Index,
    User,
    Cents,
    AtMs,
    UntilS,
}

/// A record's fields as read, before its kind says which of them it uses.
struct Fields {
    index: u16,
    id: u32,
    user: u32,
    cents: u64,
    at_ms: u64,
    until_s: u32,
}

impl Fields {
    /// The fields at their offsets (see the table at the top of the file).
    fn read(b: &[u8; RECORD_LEN]) -> Fields {
        Fields {
            index: u16::from_le_bytes([b[6], b[7]]),
            id: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            user: u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")),
            cents: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            at_ms: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
            until_s: u32::from_le_bytes(b[32..36].try_into().expect("4 bytes")),
        }
    }

    /// Refuses the record, naming the first of `fields` (which its kind does
    /// not use) that is not 0.
    fn unused(&self, fields: &[Field]) -> Result<(), RecordError> {
        for &field in fields {
            let (value, name) = match field {
                Field::Index => (u64::from(self.index), "index"),
                Field::User => (u64::from(self.user), "user"),
                Field::Cents => (self.cents, "cents"),
                Field::AtMs => (self.at_ms, "at_ms"),
                Field::UntilS => (u64::from(self.until_s), "until_s"),
            };
            if value != 0 {
                return Err(RecordError::Field(name));
            }
        }
        Ok(())
    }

    /// The record of kind `kind`, once the fields it does not use are 0.
    fn into_record(self, kind: u8) -> Result<Record, RecordError> {
        let record = match kind {
            KIND_ENVELOPE_GENERATED | KIND_ENVELOPE_RETURNED => {
                self.unused(&[Field::Index, Field::User, Field::UntilS])?;
                let (id, cents, at_ms) = (EnvelopeId(self.id), Cents(self.cents), self.at_ms);
                if kind == KIND_ENVELOPE_GENERATED {
                    Record::EnvelopeGenerated { id, cents, at_ms }
                } else {
                    Record::EnvelopeReturned { id, cents, at_ms }
                }
            }
            KIND_ENVELOPE_GRANTED => {
                self.unused(&[Field::Index, Field::UntilS])?;
                Record::EnvelopeGranted {
                    id: EnvelopeId(self.id),
                    user: UserId(self.user),
                    cents: Cents(self.cents),
                    at_ms: self.at_ms,
                }
            }
            KIND_PACKET_CREATED | KIND_CLUSTER_PACKET_CREATED => {
                self.unused(&[Field::User])?;
                let (id, cents, claimants) = (PacketId(self.id), Cents(self.cents), self.index);
                let cluster = kind == KIND_CLUSTER_PACKET_CREATED;
                Record::packet_created(cluster, id, cents, claimants, self.at_ms, self.until_s)
            }
            KIND_CLUSTER_CLAIM => {
                self.unused(&[Field::Index, Field::UntilS])?;
                Record::ClusterClaim {
                    id: PacketId(self.id),
                    user: UserId(self.user),
                    cents: Cents(self.cents),
                    at_ms: self.at_ms,
                }
            }
            KIND_CLUSTER_REFUND => {
                self.unused(&[Field::Index, Field::User, Field::UntilS])?;
                Record::ClusterRefund {
                    id: PacketId(self.id),
                    cents: Cents(self.cents),
                    at_ms: self.at_ms,
                }
            }
            KIND_LEASE => {
                self.unused(&[Field::Index, Field::User, Field::UntilS])?;
                Record::Lease {
                    epoch: self.id,
                    envelopes: self.cents,
                    at_ms: self.at_ms,
                }
            }
            KIND_PACKET_TARGET => {
                self.unused(&[Field::Cents, Field::AtMs, Field::UntilS])?;
                Record::PacketTarget {
                    id: PacketId(self.id),
                    index: self.index,
                    user: UserId(self.user),
                }
            }
            KIND_CLAIM => {
                self.unused(&[Field::Index, Field::UntilS])?;
                Record::Claim {
                    id: PacketId(self.id),
                    user: UserId(self.user),
                    cents: Cents(self.cents),
                    at_ms: self.at_ms,
                }
            }
            KIND_REFUND => {
                self.unused(&[Field::Index, Field::User, Field::UntilS])?;
                Record::Refund {
                    id: PacketId(self.id),
                    cents: Cents(self.cents),
                    at_ms: self.at_ms,
                }
            }
            KIND_COMMIT => {
                self.unused(&[Field::Index, Field::User, Field::AtMs, Field::UntilS])?;
                Record::Commit {
                    batch: self.id,
                    records: self.cents,
                }
            }
            k => return Err(RecordError::Kind(k)),
        };
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_record() -> impl Strategy<Value = Record> {
        (
            0u8..12,
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u16>(),
            any::<u32>(),
        )
            .prop_map(|(k, id, user, cents, at_ms, index, until_s)| match k {
                0 => Record::EnvelopeGenerated {
                    id: EnvelopeId(id),
                    cents: Cents(cents),
                    at_ms,
                },
                1 => Record::EnvelopeGranted {
                    id: EnvelopeId(id),
                    user: UserId(user),
                    cents: Cents(cents),
                    at_ms,
                },
                2 => Record::EnvelopeReturned {
                    id: EnvelopeId(id),
                    cents: Cents(cents),
                    at_ms,
                },
                3 => Record::PacketCreated {
                    id: PacketId(id),
                    cents: Cents(cents),
                    claimants: index,
                    at_ms,
                    until_s,
                },
                4 => Record::PacketTarget {
                    id: PacketId(id),
                    index,
                    user: UserId(user),
                },
                5 => Record::Claim {
                    id: PacketId(id),
                    user: UserId(user),
                    cents: Cents(cents),
                    at_ms,
                },
                6 => Record::Refund {
                    id: PacketId(id),
                    cents: Cents(cents),
                    at_ms,
                },
                7 => Record::ClusterPacketCreated {
                    id: PacketId(id),
                    cents: Cents(cents),
                    claimants: index,
                    at_ms,
                    until_s,
                },
                8 => Record::ClusterClaim {
                    id: PacketId(id),
                    user: UserId(user),
                    cents: Cents(cents),
                    at_ms,
                },
                9 => Record::ClusterRefund {
                    id: PacketId(id),
                    cents: Cents(cents),
                    at_ms,
                },
                10 => Record::Lease {
                    epoch: id,
                    envelopes: cents,
                    at_ms,
                },
                _ => Record::Commit {
                    batch: id,
                    records: cents,
                },
            })
    }

    proptest! {
        #[test]
        fn records_round_trip(r in any_record()) {
            let mut b = [0u8; RECORD_LEN];
            r.encode(&mut b);
            prop_assert_eq!(Record::decode(&b), Ok(r));
        }

        #[test]
        fn any_flipped_bit_is_refused(r in any_record(), bit in 0usize..RECORD_LEN * 8) {
            let mut b = [0u8; RECORD_LEN];
            r.encode(&mut b);
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Record::decode(&b).is_err());
        }
    }
}
