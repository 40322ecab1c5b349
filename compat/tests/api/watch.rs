//! Watch: create, historical replay, prev_kv, filters, cancel and progress.

use std::time::Duration;

use etcd_client::{EventType, WatchFilterType, WatchOptions, WatchResponse, WatchStream};

use super::{rev, single};

async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("a watch response in time")
        .expect("the watch stream works")
        .expect("the watch stream is open")
}

/// Waits for the next response that carries events.
async fn next_events(stream: &mut WatchStream) -> WatchResponse {
    loop {
        let resp = next(stream).await;
        if !resp.events().is_empty() {
            return resp;
        }
    }
}

#[tokio::test]
async fn watch_replays_history_with_prev_kv_and_streams_new_events() {
    // Goal: a watch from an old revision replays history in order with prev_kv, then streams
    // new events; creation and cancellation are acknowledged.
    // Method: three writes, watch the prefix from the first with prev_kv, write more, cancel.
    let cluster = single().await;
    let mut c = cluster.client().await;
    let r1 = rev(c.put("w/a", "1", None).await.expect("put").header());
    c.put("w/a", "2", None).await.expect("put");
    c.delete("w/a", None).await.expect("delete");
    let mut stream = c
        .watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(r1)
                    .with_prev_key(),
            ),
        )
        .await
        .expect("watch");
    let created = next(&mut stream).await;
    assert!(created.created());
    let id = created.watch_id();
    let mut events = Vec::new();
    while events.len() < 3 {
        events.extend(next_events(&mut stream).await.events().to_vec());
    }
    let kinds: Vec<EventType> = events.iter().map(|e| e.event_type()).collect();
    assert_eq!(kinds, [EventType::Put, EventType::Put, EventType::Delete]);
    assert!(events[0].prev_kv().is_none());
    assert_eq!(events[1].prev_kv().expect("prev").value(), b"1");
    assert_eq!(events[2].prev_kv().expect("prev").value(), b"2");
    assert_eq!(events[2].kv().expect("kv").mod_revision(), r1 + 2);

    let r4 = rev(c.put("w/b", "new", None).await.expect("put").header());
    let live = next_events(&mut stream).await;
    assert_eq!(live.events()[0].kv().expect("kv").key(), b"w/b");
    assert_eq!(live.events()[0].kv().expect("kv").mod_revision(), r4);

    stream.cancel(id).await.expect("cancel");
    let canceled = next(&mut stream).await;
    assert!(canceled.canceled());
    assert_eq!(canceled.watch_id(), id);
}

#[tokio::test]
async fn watch_filters_and_progress() {
    // Goal: NoPut and NoDelete filters drop those events; a progress request is answered with
    // the current revision and no events.
    // Method: two watchers on one stream, one per filter; put and delete; request progress.
    let cluster = single().await;
    let mut c = cluster.client().await;
    let mut stream = c
        .watch(
            "f",
            Some(WatchOptions::new().with_filters([WatchFilterType::NoPut])),
        )
        .await
        .expect("watch");
    assert!(next(&mut stream).await.created());
    let put_rev = rev(c.put("f", "v", None).await.expect("put").header());
    let del_rev = rev(c.delete("f", None).await.expect("delete").header());
    let only_delete = next_events(&mut stream).await;
    assert_eq!(only_delete.events().len(), 1);
    assert_eq!(only_delete.events()[0].event_type(), EventType::Delete);
    assert_eq!(
        only_delete.events()[0].kv().expect("kv").mod_revision(),
        del_rev
    );

    stream
        .watch(
            "f",
            Some(
                WatchOptions::new()
                    .with_start_revision(put_rev)
                    .with_filters([WatchFilterType::NoDelete]),
            ),
        )
        .await
        .expect("second watcher");
    assert!(next(&mut stream).await.created());
    let only_put = next_events(&mut stream).await;
    assert_eq!(only_put.events().len(), 1);
    assert_eq!(only_put.events()[0].event_type(), EventType::Put);

    stream.request_progress().await.expect("progress request");
    let progress = next(&mut stream).await;
    assert!(progress.events().is_empty());
    assert_eq!(rev(progress.header()), del_rev);
}

#[tokio::test]
async fn watch_from_a_compacted_revision_is_canceled() {
    // Goal: a watch starting below the compacted revision is canceled with compact_revision set.
    // Method: write, compact, watch from revision 1.
    let cluster = single().await;
    let mut c = cluster.client().await;
    c.put("x", "1", None).await.expect("put");
    let r = rev(c.put("x", "2", None).await.expect("put").header());
    c.compact(r, None).await.expect("compact");
    let mut stream = c
        .watch("x", Some(WatchOptions::new().with_start_revision(1)))
        .await
        .expect("watch");
    let mut resp = next(&mut stream).await;
    if resp.created() && !resp.canceled() {
        resp = next(&mut stream).await;
    }
    assert!(resp.canceled());
    assert_eq!(resp.compact_revision(), r);
}
