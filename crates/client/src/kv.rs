//! Key-value calls: get, put, delete and txn, with their options, and the prefix helper.
//!
//! Responses are etcd's own messages ([`pb::RangeResponse`] and friends), so every field etcd
//! returns is available.

use bytes::Bytes;
use chorus_proto::etcdserverpb as pb;
use pb::kv_client::KvClient;

use crate::client::{Client, Kind};
use crate::error::Result;
use crate::txn::Txn;

/// The end of the range holding every key that starts with `prefix` (etcd's `--prefix`). An
/// empty prefix, or one of only `0xff` bytes, gives `"\0"`: every key from the start.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Options of [`Client::get`].
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    /// Every key starting with the given key.
    pub prefix: bool,
    /// An explicit range end (exclusive); ignored when `prefix` is set.
    pub range_end: Option<Vec<u8>>,
    /// At most this many keys (0: no limit).
    pub limit: i64,
    /// Read at this revision (0: the latest).
    pub revision: i64,
    /// Answer from the local member without a linearizable read.
    pub serializable: bool,
    /// Keys without values.
    pub keys_only: bool,
    /// Only the count.
    pub count_only: bool,
    /// Sort order and target.
    pub sort: Option<(pb::range_request::SortTarget, pb::range_request::SortOrder)>,
    /// Only keys created at or below this revision (0: no filter).
    pub max_create_revision: i64,
}

impl GetOptions {
    /// Every key with the given prefix.
    pub fn prefix() -> GetOptions {
        GetOptions {
            prefix: true,
            ..Default::default()
        }
    }
}

/// Options of [`Client::put`].
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Attach the key to this lease (0: none).
    pub lease: i64,
    /// Return the previous key-value.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
    /// The caller declares that applying this put twice is harmless, so it may be retried on
    /// another endpoint when the outcome of an attempt is unknown.
    pub idempotent: bool,
}

/// Options of [`Client::delete`].
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Every key starting with the given key.
    pub prefix: bool,
    /// An explicit range end (exclusive); ignored when `prefix` is set.
    pub range_end: Option<Vec<u8>>,
    /// Return the deleted key-values.
    pub prev_kv: bool,
    /// Deleting twice equals deleting once unless someone re-creates the key in between; the
    /// caller declares that this is acceptable, so the delete may be retried.
    pub idempotent: bool,
}

pub(crate) fn range_request(key: &[u8], options: &GetOptions) -> pb::RangeRequest {
    let range_end = if options.prefix {
        prefix_end(key)
    } else {
        options.range_end.clone().unwrap_or_default()
    };
    let (sort_target, sort_order) = options
        .sort
        .map(|(target, order)| (target as i32, order as i32))
        .unwrap_or((0, 0));
    pb::RangeRequest {
        key: Bytes::copy_from_slice(key),
        range_end: range_end.into(),
        limit: options.limit,
        revision: options.revision,
        serializable: options.serializable,
        keys_only: options.keys_only,
        count_only: options.count_only,
        sort_target,
        sort_order,
        max_create_revision: options.max_create_revision,
        ..Default::default()
    }
}

pub(crate) fn put_request(key: &[u8], value: &[u8], options: &PutOptions) -> pb::PutRequest {
    pb::PutRequest {
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(value),
        lease: options.lease,
        prev_kv: options.prev_kv,
        ignore_value: options.ignore_value,
        ignore_lease: options.ignore_lease,
    }
}

pub(crate) fn delete_request(key: &[u8], options: &DeleteOptions) -> pb::DeleteRangeRequest {
    let range_end = if options.prefix {
        prefix_end(key)
    } else {
        options.range_end.clone().unwrap_or_default()
    };
    pb::DeleteRangeRequest {
        key: Bytes::copy_from_slice(key),
        range_end: range_end.into(),
        prev_kv: options.prev_kv,
    }
}

impl Client {
    /// Range over keys.
    pub async fn get(
        &self,
        key: impl AsRef<[u8]>,
        options: GetOptions,
    ) -> Result<pb::RangeResponse> {
        let request = range_request(key.as_ref(), &options);
        self.call(Kind::Read, Some(key.as_ref()), |channel| {
            let request = request.clone();
            async move { KvClient::new(channel).range(request).await }
        })
        .await
    }

    /// The value of one key, if it exists.
    pub async fn get_value(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        let response = self.get(key, GetOptions::default()).await?;
        Ok(response.kvs.into_iter().next().map(|kv| kv.value))
    }

    /// Every key with `prefix`.
    pub async fn get_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<pb::RangeResponse> {
        self.get(prefix, GetOptions::prefix()).await
    }

    /// Puts a value.
    pub async fn put(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        options: PutOptions,
    ) -> Result<pb::PutResponse> {
        let request = put_request(key.as_ref(), value.as_ref(), &options);
        let kind = if options.idempotent {
            Kind::Idempotent
        } else {
            Kind::Write
        };
        self.call(kind, Some(key.as_ref()), |channel| {
            let request = request.clone();
            async move { KvClient::new(channel).put(request).await }
        })
        .await
    }

    /// Deletes a key or range.
    pub async fn delete(
        &self,
        key: impl AsRef<[u8]>,
        options: DeleteOptions,
    ) -> Result<pb::DeleteRangeResponse> {
        let request = delete_request(key.as_ref(), &options);
        let kind = if options.idempotent {
            Kind::Idempotent
        } else {
            Kind::Write
        };
        self.call(kind, Some(key.as_ref()), |channel| {
            let request = request.clone();
            async move { KvClient::new(channel).delete_range(request).await }
        })
        .await
    }

    /// Runs a transaction. A txn without writes is retried like a read; one marked
    /// [`Txn::idempotent`] like an idempotent write.
    pub async fn txn(&self, txn: Txn) -> Result<pb::TxnResponse> {
        let kind = txn.kind();
        let request = txn.into_request();
        self.call(kind, None, |channel| {
            let request = request.clone();
            async move { KvClient::new(channel).txn(request).await }
        })
        .await
    }

    /// Compacts the history up to `revision`.
    pub async fn compact(&self, revision: i64, physical: bool) -> Result<pb::CompactionResponse> {
        self.call(Kind::Idempotent, None, |channel| async move {
            KvClient::new(channel)
                .compact(pb::CompactionRequest { revision, physical })
                .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_follows_etcd() {
        // Goal: the same range ends as etcd's GetPrefixRangeEnd. Method: table.
        assert_eq!(prefix_end(b"abc"), b"abd".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
