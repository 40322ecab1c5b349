//! The coordination recipes against a real server: lock exclusion and fencing tokens, a lock
//! and a leadership lost with their lease, registry and discovery, the barrier, and a saga
//! that commits, compensates, and resumes after its coordinator dies.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chorus_client::balance::PolicyKind;
use chorus_client::recipes::barrier::Barrier;
use chorus_client::recipes::election::Election;
use chorus_client::recipes::lock::Mutex;
use chorus_client::recipes::registry::{Discovery, Registration};
use chorus_client::recipes::saga::{Outcome, Saga, Step};
use chorus_client::{Error, PutOptions};
use common::{Cluster, guard};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_is_exclusive_and_tokens_grow_with_each_grant() {
    // Goal: contenders never hold the lock at once and each grant's fencing token is larger
    // than every earlier grant's. Method: 4 clients on 3 members take the lock 5 times each;
    // inside, a counter checks exclusion and a shared list records the tokens in grant order.
    let cluster = Cluster::start(3).await;
    let inside = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let client = cluster.client().await;
        let (inside, tokens) = (inside.clone(), tokens.clone());
        tasks.spawn(async move {
            let session = client.lease_grant_kept(10).await.unwrap();
            let mutex = Mutex::new(client, "locks/shared");
            for _ in 0..5 {
                let held = mutex.lock(&session).await.unwrap();
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                tokens.lock().unwrap().push(held.fencing_token());
                tokio::time::sleep(Duration::from_millis(10)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                held.unlock().await.unwrap();
            }
        });
    }
    guard("contenders", async {
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
    })
    .await;
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), 20);
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lease_ends_loses_the_lock() {
    // Goal: when the holder's lease is no longer renewed (its process is gone), the next
    // waiter gets the lock with a larger token. Method: A holds with a 2 s lease and stops
    // renewing; B waits with a kept lease.
    let cluster = Cluster::start(1).await;
    let client = cluster.client().await;
    let a_session = client.lease_grant_kept(2).await.unwrap();
    let a = Mutex::new(client.clone(), "locks/l")
        .lock(&a_session)
        .await
        .unwrap();
    a_session.stop();
    let b_session = client.lease_grant_kept(10).await.unwrap();
    let b = guard(
        "B gets the lock",
        Mutex::new(client.clone(), "locks/l").lock(&b_session),
    )
    .await
    .unwrap();
    assert!(b.fencing_token() > a.fencing_token());
    assert!(a_session.lost().await.to_string().contains("lease"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_passes_on_and_observers_follow() {
    // Goal: one leader at a time; proclaim changes the value; when the leader's lease ends the
    // next candidate leads; an observer sees each change. Method: A then B campaign on one
    // election; A proclaims, then stops renewing.
    let cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    let election = Election::new(client.clone(), "elections/svc");
    let mut observer = election.observe();
    assert_eq!(guard("nobody leads", observer.next()).await.unwrap(), None);

    let a_session = client.lease_grant_kept(2).await.unwrap();
    let a = election.campaign(&a_session, "A").await.unwrap();
    let seen = guard("observe A", observer.next()).await.unwrap().unwrap();
    assert_eq!(seen.value.as_ref(), b"A");
    a.proclaim("A2").await.unwrap();
    let seen = guard("observe A2", observer.next()).await.unwrap().unwrap();
    assert_eq!(seen.value.as_ref(), b"A2");

    let b_session = client.lease_grant_kept(10).await.unwrap();
    let b_election = election.clone();
    let b = tokio::spawn(async move {
        b_election
            .campaign(&b_session, "B")
            .await
            .map(|l| (l, b_session))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_finished(), "B waits while A leads");
    a_session.stop();
    let (b, _b_session) = guard("B leads", b).await.unwrap().unwrap();
    assert!(b.revision() > a.revision());
    let seen = guard("observe B", async {
        loop {
            if let Some(kv) = observer.next().await.unwrap()
                && kv.value.as_ref() == b"B"
            {
                return kv;
            }
        }
    })
    .await;
    assert_eq!(seen.value.as_ref(), b"B");
    let err = a.proclaim("A3").await.unwrap_err();
    assert!(matches!(err, Error::Recipe(_)), "{err:?}");
    assert_eq!(
        election.leader().await.unwrap().unwrap().value.as_ref(),
        b"B"
    );
    b.resign().await.unwrap();
    assert_eq!(election.leader().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_instances_are_discovered_and_vanish_with_their_lease() {
    // Goal: discovery lists registered instances, follows changes, picks among them by policy,
    // and an instance whose process dies (no more renewals) disappears within its TTL.
    // Method: two instances; round robin picks both; one deregisters, the other stops renewing.
    let cluster = Cluster::start(1).await;
    let client = cluster.client().await;
    let one = Registration::register(&client, "services/api", "api-1", "10.0.0.1:80", 2)
        .await
        .unwrap();
    let mut discovery = Discovery::start(&client, "services/api", PolicyKind::RoundRobin)
        .await
        .unwrap();
    assert_eq!(discovery.instances().len(), 1);
    let two = Registration::register(&client, "services/api", "api-2", "10.0.0.2:80", 10)
        .await
        .unwrap();
    guard("api-2 appears", discovery.changed()).await.unwrap();
    let ids: Vec<String> = discovery.instances().into_iter().map(|i| i.id).collect();
    assert_eq!(ids, ["api-1", "api-2"]);
    let picks: std::collections::BTreeSet<String> = (0..4)
        .filter_map(|_| discovery.pick(None))
        .map(|i| i.id)
        .collect();
    assert_eq!(picks.len(), 2, "round robin uses both: {picks:?}");

    // api-1's process "dies": its renewals stop and its 2 s lease expires.
    one.lease().stop();
    guard("api-1 expires", async {
        while discovery.instances().len() != 1 {
            discovery.changed().await.unwrap();
        }
    })
    .await;
    assert_eq!(discovery.instances()[0].id, "api-2");
    two.deregister().await.unwrap();
    guard("api-2 leaves", discovery.changed()).await.unwrap();
    assert!(discovery.instances().is_empty());
    assert_eq!(discovery.pick(None), None);
    let bad = Registration::register(&client, "services/api", "a/b", "x", 5).await;
    assert!(matches!(bad, Err(Error::Recipe(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_holds_waiters_until_released() {
    // Goal: waiters block while the barrier is held and all go on when it is released.
    // Method: hold, three waiters, check they wait, release, all finish.
    let cluster = Cluster::start(1).await;
    let client = cluster.client().await;
    let barrier = Barrier::new(client.clone(), "barriers/b");
    barrier.wait().await.unwrap();
    barrier.hold().await.unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let barrier = barrier.clone();
            tokio::spawn(async move { barrier.wait().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(waiters.iter().all(|w| !w.is_finished()));
    barrier.release().await.unwrap();
    for waiter in waiters {
        guard("waiter", waiter).await.unwrap().unwrap();
    }
}

/// A step that counts its runs and compensations in the store, so that a resumed run can be
/// checked against what already happened.
fn counted(client: &chorus_client::Client, name: &str, fail: bool) -> Step {
    let (run_client, undo_client) = (client.clone(), client.clone());
    let (run_key, undo_key) = (
        format!("effects/{name}/ran"),
        format!("effects/{name}/undone"),
    );
    Step::new(
        name,
        move || {
            let (client, key) = (run_client.clone(), run_key.clone());
            async move {
                if fail {
                    return Err("refused".to_string());
                }
                bump(&client, &key).await;
                Ok(())
            }
        },
        move || {
            let (client, key) = (undo_client.clone(), undo_key.clone());
            async move {
                bump(&client, &key).await;
                Ok(())
            }
        },
    )
}

async fn bump(client: &chorus_client::Client, key: &str) {
    let now = client.get_value(key).await.unwrap();
    let n: u32 = now.map_or(0, |v| String::from_utf8_lossy(&v).parse().unwrap());
    client
        .put(key, (n + 1).to_string(), PutOptions::default())
        .await
        .unwrap();
}

async fn count(client: &chorus_client::Client, key: &str) -> u32 {
    let now = client.get_value(key).await.unwrap();
    now.map_or(0, |v| String::from_utf8_lossy(&v).parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_commit_compensate_and_resume_after_the_coordinator_dies() {
    // Goal: a saga whose steps succeed commits; one whose third step fails compensates the
    // first two, last first; a coordinator that dies mid-saga is replaced by another that
    // finishes without re-running completed steps. Method: steps that count their effects in
    // the store; the "death" is a coordinator future dropped while a step hangs.
    let cluster = Cluster::start(1).await;
    let client = cluster.client().await;

    let steps = [counted(&client, "a", false), counted(&client, "b", false)];
    let outcome = Saga::new(client.clone(), "sagas/ok")
        .run(&steps)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Committed);
    assert_eq!(
        (
            count(&client, "effects/a/ran").await,
            count(&client, "effects/b/ran").await
        ),
        (1, 1)
    );
    // Asking again answers the recorded outcome and runs nothing.
    let again = Saga::new(client.clone(), "sagas/ok")
        .run(&steps)
        .await
        .unwrap();
    assert_eq!(again, Outcome::Committed);
    assert_eq!(count(&client, "effects/a/ran").await, 1);

    let steps = [
        counted(&client, "c", false),
        counted(&client, "d", false),
        counted(&client, "e", true),
    ];
    let outcome = Saga::new(client.clone(), "sagas/fails")
        .run(&steps)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Compensated {
            failed_step: "e".into(),
            error: "refused".into()
        }
    );
    assert_eq!(count(&client, "effects/c/undone").await, 1);
    assert_eq!(count(&client, "effects/d/undone").await, 1);
    assert_eq!(
        count(&client, "effects/e/undone").await,
        0,
        "the failed step had no effect"
    );

    // A coordinator dies while step g hangs.
    let hang = Step::new(
        "g",
        || async { std::future::pending().await },
        || async { Ok(()) },
    );
    let dying = [
        counted(&client, "f", false),
        hang,
        counted(&client, "h", false),
    ];
    let first = tokio::time::timeout(
        Duration::from_millis(500),
        Saga::new(client.clone(), "sagas/resume").run(&dying),
    )
    .await;
    assert!(first.is_err(), "the first coordinator never finishes");
    let resumed = [
        counted(&client, "f", false),
        counted(&client, "g", false),
        counted(&client, "h", false),
    ];
    let outcome = Saga::new(client.clone(), "sagas/resume")
        .run(&resumed)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Committed);
    assert_eq!(
        count(&client, "effects/f/ran").await,
        1,
        "f was done before the death"
    );
    assert_eq!(count(&client, "effects/g/ran").await, 1);
    assert_eq!(count(&client, "effects/h/ran").await, 1);
}
