//! The in-memory key-value state machine the simulated cluster replicates.
//!
//! Keys are small numbers; values are `u64`s that the workload makes unique per write, so that a
//! read names the one write it observed. Commands are encoded into entry payloads with a small
//! fixed binary format; decoding never panics on bad bytes.
//!
//! A *revision* here is the log index of the last applied entry. It only grows on one node, except
//! across a restart, where it restarts from the persisted snapshot and climbs back as the log is
//! re-applied.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

/// A key of the simulated store.
pub type Key = u8;
/// A value of the simulated store; unique per write.
pub type Value = u64;

/// A write command carried in a log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Sets `key` to `value`. `value` doubles as the command's unique id.
    Put { key: Key, value: Value },
    /// Sets `key` to `value` if its current value is `expected` (`None`: absent).
    Cas {
        key: Key,
        expected: Option<Value>,
        value: Value,
    },
}

const TAG_PUT: u8 = 1;
const TAG_CAS: u8 = 2;
const COMMAND_BYTES: usize = 1 + 1 + 8 + 1 + 8;

/// Why bytes failed to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Length { expected: usize, found: usize },
    Tag(u8),
}

impl Command {
    /// The unique id of this write (its value).
    pub fn id(&self) -> Value {
        match *self {
            Command::Put { value, .. } | Command::Cas { value, .. } => value,
        }
    }

    /// The key this command writes.
    pub fn key(&self) -> Key {
        match *self {
            Command::Put { key, .. } | Command::Cas { key, .. } => key,
        }
    }

    /// Encodes the command as an entry payload.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(COMMAND_BYTES);
        match *self {
            Command::Put { key, value } => {
                buf.put_u8(TAG_PUT);
                buf.put_u8(key);
                buf.put_u64_le(value);
                buf.put_u8(0);
                buf.put_u64_le(0);
            }
            Command::Cas {
                key,
                expected,
                value,
            } => {
                buf.put_u8(TAG_CAS);
                buf.put_u8(key);
                buf.put_u64_le(value);
                buf.put_u8(u8::from(expected.is_some()));
                buf.put_u64_le(expected.unwrap_or(0));
            }
        }
        buf.freeze()
    }

    /// Decodes an entry payload.
    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        if bytes.len() != COMMAND_BYTES {
            return Err(DecodeError::Length {
                expected: COMMAND_BYTES,
                found: bytes.len(),
            });
        }
        let key = bytes[1];
        let value = u64::from_le_bytes(bytes[2..10].try_into().expect("8 bytes"));
        let has_expected = bytes[10] != 0;
        let expected = u64::from_le_bytes(bytes[11..19].try_into().expect("8 bytes"));
        match bytes[0] {
            TAG_PUT => Ok(Command::Put { key, value }),
            TAG_CAS => Ok(Command::Cas {
                key,
                expected: has_expected.then_some(expected),
                value,
            }),
            tag => Err(DecodeError::Tag(tag)),
        }
    }
}

/// The state machine: the current value of each key, and the outcome of every write applied so
/// far (a session table, so that a node that learns of an entry through a snapshot can still answer
/// the client that proposed it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    values: BTreeMap<Key, Value>,
    outcomes: BTreeMap<Value, bool>,
}

impl KvStore {
    /// Applies a write and reports whether it took effect (a failed compare-and-set does not).
    pub fn apply(&mut self, command: &Command) -> bool {
        let done = match *command {
            Command::Put { key, value } => {
                self.values.insert(key, value);
                true
            }
            Command::Cas {
                key,
                expected,
                value,
            } => {
                if self.values.get(&key).copied() == expected {
                    self.values.insert(key, value);
                    true
                } else {
                    false
                }
            }
        };
        // Invariant: write ids are unique, so an id is applied at most once per node history.
        let previous = self.outcomes.insert(command.id(), done);
        assert!(
            previous.is_none(),
            "write id {} applied twice",
            command.id()
        );
        done
    }

    /// The current value of `key`.
    pub fn get(&self, key: Key) -> Option<Value> {
        self.values.get(&key).copied()
    }

    /// The outcome of the write with this id, if it was applied.
    pub fn outcome(&self, id: Value) -> Option<bool> {
        self.outcomes.get(&id).copied()
    }

    /// Encodes the whole state for a snapshot.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(8 + self.values.len() * 9 + self.outcomes.len() * 9);
        buf.put_u32_le(self.values.len() as u32);
        for (&k, &v) in &self.values {
            buf.put_u8(k);
            buf.put_u64_le(v);
        }
        buf.put_u32_le(self.outcomes.len() as u32);
        for (&id, &done) in &self.outcomes {
            buf.put_u64_le(id);
            buf.put_u8(u8::from(done));
        }
        buf.freeze()
    }

    /// Decodes a snapshot. An empty byte string is the empty store (the initial snapshot).
    pub fn decode(bytes: &[u8]) -> Result<KvStore, DecodeError> {
        let mut store = KvStore::default();
        if bytes.is_empty() {
            return Ok(store);
        }
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], DecodeError> {
            let end = at + n;
            let slice = bytes.get(at..end).ok_or(DecodeError::Length {
                expected: end,
                found: bytes.len(),
            })?;
            at = end;
            Ok(slice)
        };
        let values_len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
        for _ in 0..values_len {
            let k = take(1)?[0];
            let v = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
            store.values.insert(k, v);
        }
        let outcomes_len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
        for _ in 0..outcomes_len {
            let id = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
            let done = take(1)?[0] != 0;
            store.outcomes.insert(id, done);
        }
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_bad_bytes_are_errors() {
        // Goal: encoding is lossless and decoding rejects garbage without panicking. Method:
        // round-trip each variant, then feed truncated and mis-tagged bytes.
        let cmds = [
            Command::Put { key: 3, value: 77 },
            Command::Cas {
                key: 0,
                expected: None,
                value: 9,
            },
            Command::Cas {
                key: 255,
                expected: Some(0),
                value: u64::MAX,
            },
        ];
        for c in cmds {
            assert_eq!(Command::decode(&c.encode()), Ok(c));
        }
        let bytes = cmds[0].encode();
        assert!(Command::decode(&bytes[..5]).is_err());
        let mut bad = bytes.to_vec();
        bad[0] = 9;
        assert_eq!(Command::decode(&bad), Err(DecodeError::Tag(9)));
        assert!(Command::decode(&[]).is_err());
    }

    #[test]
    fn cas_succeeds_only_on_the_expected_value() {
        // Goal: compare-and-set semantics, including "expected absent". Method: a table of steps.
        let mut kv = KvStore::default();
        assert!(!kv.apply(&Command::Cas {
            key: 1,
            expected: Some(5),
            value: 10
        }));
        assert!(kv.apply(&Command::Cas {
            key: 1,
            expected: None,
            value: 11
        }));
        assert_eq!(kv.get(1), Some(11));
        assert!(!kv.apply(&Command::Cas {
            key: 1,
            expected: None,
            value: 12
        }));
        assert!(kv.apply(&Command::Cas {
            key: 1,
            expected: Some(11),
            value: 13
        }));
        assert!(kv.apply(&Command::Put { key: 1, value: 14 }));
        assert_eq!(kv.get(1), Some(14));
        assert_eq!(kv.outcome(10), Some(false));
        assert_eq!(kv.outcome(13), Some(true));
        assert_eq!(kv.outcome(99), None);
    }

    #[test]
    fn snapshots_round_trip_and_truncation_is_an_error() {
        // Goal: a snapshot restores the exact state. Method: encode, decode, compare; then cut.
        let mut kv = KvStore::default();
        kv.apply(&Command::Put { key: 1, value: 1 });
        kv.apply(&Command::Cas {
            key: 2,
            expected: Some(3),
            value: 2,
        });
        let bytes = kv.encode();
        assert_eq!(KvStore::decode(&bytes), Ok(kv.clone()));
        assert_eq!(KvStore::decode(&[]), Ok(KvStore::default()));
        assert!(KvStore::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    #[should_panic(expected = "applied twice")]
    fn applying_one_write_twice_is_caught() {
        // Goal: a duplicated entry cannot slip through unnoticed. Method: apply one id twice.
        let mut kv = KvStore::default();
        kv.apply(&Command::Put { key: 1, value: 1 });
        kv.apply(&Command::Put { key: 2, value: 1 });
    }
}
