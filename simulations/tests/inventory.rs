//! The agent's inventory is the truth about what it holds, including what it no longer holds.
//! Found by the `singleton-failover` scenario (full form, seed 4): an agent committed a removal,
//! its `WorkAck` was lost with the session, and the hub kept showing the work delivered there
//! for good, because the next session's inventory only ever added rows.

mod common;

use common::*;
use tether_sim::fleet::{all_in_state, wait_for, LocalAgent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_whose_ack_was_lost_is_forgotten_at_the_next_inventory() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let hub = hub(dir).await;
    let admin = hub.admin().unwrap();
    let token = hub.token(2, true, Default::default()).await.unwrap();
    let a = agent(&hub, dir, "a", &token);
    let b = agent(&hub, dir, "b", &token);
    wait_for(
        &admin,
        WAIT,
        "a, b Ready",
        all_in_state(&names(&["a", "b"]), "Ready"),
    )
    .await
    .unwrap();

    let g1 = admin
        .apply_work(&config_work("w", only(&["a"]), &["k"], "1"))
        .await
        .unwrap()
        .generation;
    wait_applied(&admin, "w", g1, 1).await;

    // `a` goes away; the work moves to `b`, so the hub now wants it gone from `a`.
    a.stop().await.unwrap();
    let g2 = admin
        .apply_work(&config_work("w", only(&["b"]), &["k"], "1"))
        .await
        .unwrap()
        .generation;
    wait_applied(&admin, "w", g2, 1).await;
    let row_for_a = |d: &tether_hub::api::WorkDetail| {
        d.clusters
            .iter()
            .find(|c| c.cluster == "a")
            .and_then(|c| c.delivered_generation)
    };
    assert_eq!(row_for_a(&admin.work("w").await.unwrap()), Some(g1));

    // What `a` would hold had it received the removal and committed it, with the ack lost.
    {
        let store = tether_agent::open_store(&dir.join("agents").join("a")).unwrap();
        store
            .write(|tx| {
                tx.remove(&tether_store::agent::DESIRED, "w")?;
                Ok::<_, tether_store::StoreError>(())
            })
            .unwrap();
    }
    let a = LocalAgent::spawn(spec(&hub, dir, "a", &token));
    let start = std::time::Instant::now();
    loop {
        let d = admin.work("w").await.unwrap();
        if row_for_a(&d).is_none() {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the hub still shows w delivered on a: {:#?}",
            d.clusters
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // And `b` keeps it.
    assert_eq!(
        admin
            .work("w")
            .await
            .unwrap()
            .clusters
            .iter()
            .find(|c| c.cluster == "b")
            .and_then(|c| c.delivered_generation),
        Some(g2)
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
