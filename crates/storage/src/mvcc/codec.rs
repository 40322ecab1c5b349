//! The on-disk form of the MVCC data: record ids and records.
//!
//! A record is one version of one key written at one revision. Its id is `(main, sub)`: the main
//! revision and the position of the change inside that revision (a transaction writes several
//! keys at one main revision). The id is stored big-endian so that the engine's byte order is the
//! revision order.
//!
//! Record layout (all integers big-endian):
//!
//! ```text
//! format u8 (=1) | flags u8 (bit 0: tombstone) | create_revision i64 | version i64 | lease i64
//! | key_len u32 | key | value
//! ```
//!
//! Bytes from the disk are never trusted: decoding checks every length and returns
//! [`MvccError::Corrupt`] instead of panicking.

use bytes::Bytes;

use super::error::{MvccError, MvccResult};
use super::types::{KeyValue, LeaseId, Revision};

/// The size of an encoded [`RecordId`].
pub(crate) const RECORD_ID_BYTES: usize = 16;
const RECORD_FORMAT: u8 = 1;
const FLAG_TOMBSTONE: u8 = 1;
const HEADER_BYTES: usize = 1 + 1 + 8 + 8 + 8 + 4;

/// The position of a record: a main revision and the index of the change within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct RecordId {
    pub main: Revision,
    pub sub: u64,
}

impl RecordId {
    pub fn new(main: Revision, sub: u64) -> RecordId {
        assert!(
            main.get() >= 1,
            "a record id needs a positive main revision, got {main}"
        );
        RecordId { main, sub }
    }

    /// The first id of a main revision: the lower bound of a scan from that revision.
    pub fn first_of(main: Revision) -> RecordId {
        RecordId::new(main, 0)
    }

    pub fn encode(self) -> [u8; RECORD_ID_BYTES] {
        let mut out = [0u8; RECORD_ID_BYTES];
        // Positive by the constructor's assertion, so the cast keeps the order.
        out[..8].copy_from_slice(&(self.main.get() as u64).to_be_bytes());
        out[8..].copy_from_slice(&self.sub.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8; RECORD_ID_BYTES]) -> MvccResult<RecordId> {
        let main = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
        let sub = u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"));
        if main == 0 || main > i64::MAX as u64 {
            return Err(corrupt(
                "record id",
                format!("main revision {main} out of range"),
            ));
        }
        Ok(RecordId {
            main: Revision(main as i64),
            sub,
        })
    }
}

/// One stored version of a key: a put (with its full key-value) or a delete (a tombstone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub kv: KeyValue,
    pub tombstone: bool,
}

impl Record {
    /// Encodes the record. The `mod_revision` is not stored: it is the record id's main revision.
    pub fn encode(&self) -> Vec<u8> {
        let kv = &self.kv;
        let key_len = u32::try_from(kv.key.len()).expect("keys are far below 4 GiB");
        let mut out = Vec::with_capacity(HEADER_BYTES + kv.key.len() + kv.value.len());
        out.push(RECORD_FORMAT);
        out.push(if self.tombstone { FLAG_TOMBSTONE } else { 0 });
        out.extend_from_slice(&kv.create_revision.get().to_be_bytes());
        out.extend_from_slice(&kv.version.to_be_bytes());
        out.extend_from_slice(&kv.lease.get().to_be_bytes());
        out.extend_from_slice(&key_len.to_be_bytes());
        out.extend_from_slice(&kv.key);
        out.extend_from_slice(&kv.value);
        out
    }

    /// Decodes a record stored under `id`, copying its key and value.
    pub fn decode(id: RecordId, bytes: &[u8]) -> MvccResult<Record> {
        let record = RecordRef::decode(id, bytes)?;
        Ok(Record {
            kv: record.kv(
                id,
                Bytes::copy_from_slice(record.key),
                Bytes::copy_from_slice(record.value),
            ),
            tombstone: record.tombstone,
        })
    }
}

/// A record read in place: its fields, with the key and the value borrowed from the encoding,
/// for a reader that keeps them without a copy of their own.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordRef<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub create_revision: Revision,
    pub version: i64,
    pub lease: LeaseId,
    pub tombstone: bool,
}

impl<'a> RecordRef<'a> {
    /// Decodes a record stored under `id`.
    pub fn decode(id: RecordId, bytes: &'a [u8]) -> MvccResult<RecordRef<'a>> {
        if bytes.len() < HEADER_BYTES {
            return Err(corrupt(
                "record",
                format!("{} bytes at {id:?}", bytes.len()),
            ));
        }
        if bytes[0] != RECORD_FORMAT {
            return Err(corrupt("record", format!("format {} at {id:?}", bytes[0])));
        }
        let flags = bytes[1];
        if flags & !FLAG_TOMBSTONE != 0 {
            return Err(corrupt("record", format!("flags {flags:#x} at {id:?}")));
        }
        let int_at = |at: usize| i64::from_be_bytes(bytes[at..at + 8].try_into().expect("8"));
        let key_len = u32::from_be_bytes(bytes[26..30].try_into().expect("4")) as usize;
        let rest = &bytes[HEADER_BYTES..];
        if key_len == 0 || key_len > rest.len() {
            return Err(corrupt("record", format!("key length {key_len} at {id:?}")));
        }
        let (key, value) = rest.split_at(key_len);
        Ok(RecordRef {
            key,
            value,
            create_revision: Revision(int_at(2)),
            version: int_at(10),
            lease: LeaseId(int_at(18)),
            tombstone: flags & FLAG_TOMBSTONE != 0,
        })
    }

    /// The key-value of the record stored under `id`, with `key` holding this record's key and
    /// `value` its value (or nothing, for a reader that asks for keys only).
    pub fn kv(&self, id: RecordId, key: Bytes, value: Bytes) -> KeyValue {
        debug_assert_eq!(key.as_ref(), self.key);
        KeyValue {
            key,
            create_revision: self.create_revision,
            mod_revision: id.main,
            version: self.version,
            value,
            lease: self.lease,
        }
    }
}

pub(crate) fn corrupt(what: &'static str, detail: String) -> MvccError {
    MvccError::Corrupt { what, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a record survives encoding, and damaged bytes are an error, never a panic.
    // Method: round-trip a put and a tombstone, then decode every truncation of an encoding.
    #[test]
    fn records_round_trip_and_truncations_are_errors() {
        let id = RecordId::new(Revision(7), 2);
        let put = Record {
            kv: KeyValue {
                key: Bytes::from_static(b"k"),
                create_revision: Revision(5),
                mod_revision: Revision(7),
                version: 3,
                value: Bytes::from_static(b"value"),
                lease: LeaseId(42),
            },
            tombstone: false,
        };
        let tomb = Record {
            kv: KeyValue {
                key: Bytes::from_static(b"k"),
                mod_revision: Revision(7),
                ..KeyValue::default()
            },
            tombstone: true,
        };
        for record in [&put, &tomb] {
            let bytes = record.encode();
            assert_eq!(&Record::decode(id, &bytes).unwrap(), record);
            for len in 0..HEADER_BYTES + 1 {
                assert!(Record::decode(id, &bytes[..len]).is_err(), "length {len}");
            }
        }
        let mut bad = put.encode();
        bad[1] = 0x80;
        assert!(Record::decode(id, &bad).is_err());
    }

    // Goal: the encoded id sorts as the revision order. Method: compare encodings of ids.
    #[test]
    fn record_ids_sort_by_main_then_sub() {
        let ids = [
            RecordId::new(Revision(1), 0),
            RecordId::new(Revision(1), 1),
            RecordId::new(Revision(2), 0),
            RecordId::new(Revision(256), 0),
            RecordId::new(Revision(i64::MAX), u64::MAX),
        ];
        for pair in ids.windows(2) {
            assert!(pair[0].encode() < pair[1].encode(), "{pair:?}");
            assert_eq!(RecordId::decode(&pair[0].encode()).unwrap(), pair[0]);
        }
        assert!(RecordId::decode(&[0u8; RECORD_ID_BYTES]).is_err());
    }
}
