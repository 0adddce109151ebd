//! A small game-day stack shared by the status and page tests: real HTTP
//! upstreams behind `talk` and `maps` in pangyo and `mail` in ansan, the
//! scenario `pangyo-fire` that blackholes pangyo, and clients that keep
//! traffic flowing to every service until dropped.

use std::net::SocketAddr;
use std::time::Duration;

use firedrill::Running;
use http::Method;

use super::{client, http_upstream, send, PlanText};

/// The services of the stack and their data centers.
pub const SERVICES: [(&str, &str); 3] = [("talk", "pangyo"), ("maps", "pangyo"), ("mail", "ansan")];

/// The plan of the stack with `admin` lines (may be empty), in front of
/// real upstreams.
pub async fn plan(admin: &str) -> PlanText {
    let mut plan = PlanText::with_admin(admin, &[])
        .datacenter("pangyo", "description = 'the main campus'")
        .datacenter("ansan", "description = 'the standby'");
    for (name, datacenter) in SERVICES {
        plan = plan.http(name, datacenter, http_upstream(name).await);
    }
    plan.scenario_with(
        "pangyo-fire",
        "description = 'fire at pangyo: everything there goes dark'; max_duration = '10m'",
        &["datacenter = 'pangyo'; action = 'blackhole'"],
    )
}

/// Clients sending requests to some services, one after another each, as
/// long as it lives.
pub struct Traffic(Vec<tokio::task::JoinHandle<()>>);

impl Traffic {
    /// Starts a client per service of the stack on `running`. A request
    /// that gets no answer within 300 ms is given up (a blackhole holds
    /// it); the proxy has counted it by then.
    pub fn start(running: &Running) -> Traffic {
        let addrs: Vec<SocketAddr> = SERVICES
            .iter()
            .map(|(name, _)| running.service_addr(name).expect("service runs"))
            .collect();
        Traffic(
            addrs
                .into_iter()
                .map(|addr| tokio::spawn(flow(addr)))
                .collect(),
        )
    }
}

async fn flow(addr: SocketAddr) {
    let client = client();
    let url = format!("http://{addr}/");
    loop {
        let request = send(&client, Method::GET, &url, "");
        let _ = tokio::time::timeout(Duration::from_millis(300), request).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
