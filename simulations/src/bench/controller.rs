//! `controller`: CPU time of the decision work one change causes (`tether_hub::parts::
//! controller_cost`: a synthetic fleet of N Ready clusters in ten regions and 100 works, each
//! selecting one region and applied there), next to a full pass over every work measured in
//! the same run (what every pass cost before the controller became incremental). No store, no
//! network: the figure is the decision core's.

use super::harness::save;
use super::{BenchArgs, Results};

pub(super) async fn run(args: &BenchArgs, r: &mut Results) -> anyhow::Result<()> {
    for &n in &args.controller {
        let c = tokio::task::spawn_blocking(move || tether_hub::parts::controller_cost(n, 100))
            .await?
            .map_err(anyhow::Error::msg)?;
        println!(
            "controller at {} clusters, {} works: full pass {:.1} ms (baseline); one cluster's status re-report {:.3} ms ({} works decided); a status that flips one cluster {:.1} ms ({} decided); one work apply {:.1} ms ({} decided)",
            c.clusters,
            c.works,
            ms(c.full_pass),
            ms(c.status_batch),
            c.status_batch_decided,
            ms(c.status_flip),
            c.status_flip_decided,
            ms(c.work_apply),
            c.work_apply_decided,
        );
        r.controller.push(c);
        save(&args.out, r)?;
    }
    Ok(())
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
