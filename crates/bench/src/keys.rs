//! Keys of a benchmark: fixed-size decimal names of the indexes of the key space.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use rand::Rng;

/// Draws the keys of a run: uniformly random or in order over `0..key_space`, each written as
/// its index in decimal, zero-padded to `key_size` bytes.
#[derive(Debug)]
pub struct KeyGen {
    key_size: usize,
    key_space: u64,
    sequential: bool,
    next: AtomicU64,
}

impl KeyGen {
    pub fn new(key_size: usize, key_space: u64, sequential: bool) -> KeyGen {
        KeyGen {
            key_size,
            key_space,
            sequential,
            next: AtomicU64::new(0),
        }
    }

    /// Whether every index of the key space fits in `key_size` decimal digits.
    pub fn fits(key_size: usize, key_space: u64) -> bool {
        key_size >= 20 || 10u64.pow(key_size as u32) >= key_space
    }

    /// The key of index `i` (modulo the key space).
    pub fn key(&self, i: u64) -> Bytes {
        let i = i % self.key_space;
        Bytes::from(format!("{i:0width$}", width = self.key_size))
    }

    /// The next key of the run.
    pub fn next(&self, rng: &mut impl Rng) -> Bytes {
        let i = if self.sequential {
            self.next.fetch_add(1, Ordering::Relaxed)
        } else {
            rng.random_range(0..self.key_space)
        };
        self.key(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: keys have the asked size, stay in the key space and follow the asked order.
    #[test]
    fn keys_have_the_size_and_order_asked() {
        let sequential = KeyGen::new(6, 1000, true);
        let mut rng = rand::rng();
        let drawn: Vec<Bytes> = (0..1002).map(|_| sequential.next(&mut rng)).collect();
        assert_eq!(drawn[0].as_ref(), b"000000");
        assert_eq!(drawn[999].as_ref(), b"000999");
        assert_eq!(
            drawn[1000].as_ref(),
            b"000000",
            "wraps around the key space"
        );
        let random = KeyGen::new(4, 50, false);
        for _ in 0..1000 {
            let key = random.next(&mut rng);
            assert_eq!(key.len(), 4);
            let i: u64 = std::str::from_utf8(&key).unwrap().parse().unwrap();
            assert!(i < 50);
        }
        assert!(KeyGen::fits(3, 1000));
        assert!(!KeyGen::fits(3, 1001));
        assert!(KeyGen::fits(20, u64::MAX));
    }
}
