//! The protocol-level agents the fleet-scale benchmarks use (`tether_sim::lite`) must speak the
//! protocol the way the hub expects, or the benchmarks would measure errors: they join through
//! the real registry, hold sessions the hub counts Ready, take a work and report it Applied
//! exactly once, and come back with their inventory after a hub restart without a re-send.

mod common;

use common::*;
use tether_sim::fleet::metric;
use tether_sim::lite::{provision, LiteFleet};

async fn hub_metric(admin: &tether_hub::AdminClient, name: &str) -> f64 {
    metric(&admin.get_text("/metrics").await.unwrap(), name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lite_agents_hold_sessions_take_works_and_report_exactly_once() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Initialise the data directory, then register three clusters while the hub is stopped.
    let mut h = hub(dir).await;
    h.stop().await;
    let ids = provision(&dir.join("hub"), "lite", 3).unwrap();
    assert_eq!(ids.len(), 3);
    let mut h = hub(dir).await;
    let ca = std::fs::read_to_string(h.cfg.data_dir.ca_cert()).unwrap();
    let fleet = LiteFleet::start(&ids, &ca, h.quic_addr(), 0).await.unwrap();
    let admin = h.admin().unwrap();
    let ready = |admin: tether_hub::AdminClient| async move {
        let start = std::time::Instant::now();
        loop {
            let c = admin.clusters().await.unwrap();
            if c.iter()
                .filter(|c| c.connected && c.state == tether_hub::api::ClusterState::Ready)
                .count()
                == 3
            {
                return;
            }
            assert!(start.elapsed() < WAIT, "lite agents not Ready: {c:#?}");
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    };
    ready(admin.clone()).await;

    let g = admin
        .apply_work(&config_work("w", everywhere(), &["a"], "1"))
        .await
        .unwrap()
        .generation;
    wait_applied(&admin, "w", g, 3).await;
    for a in &fleet.agents {
        let got = a.received.lock().unwrap().get("w").map(|(gen, _)| *gen);
        assert_eq!(got, Some(g), "{} did not get generation {g}", a.name);
    }
    for id in &ids {
        let log = admin.status_log(&id.name).await.unwrap();
        let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1], "{}: status log {log:?}", id.name);
    }
    let delivered = hub_metric(&admin, "tether_hub_deliveries_total").await;
    assert_eq!(delivered, 3.0);

    // Restart: the agents reconnect with their inventory; nothing is sent again.
    h.restart().await.unwrap();
    let admin = h.admin().unwrap();
    ready(admin.clone()).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(hub_metric(&admin, "tether_hub_deliveries_total").await, 0.0);
    assert_eq!(
        hub_metric(&admin, "tether_hub_status_gaps_total").await,
        0.0
    );
    assert!(
        fleet
            .stats
            .handshakes
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 6
    );
    fleet.stop().await;
    h.stop().await;
}
