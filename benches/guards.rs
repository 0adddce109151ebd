//! What guards cost: the CPU time of a firedrill carrying steady HTTP
//! traffic while a scenario is active, once without guards and once with
//! `GUARDS` built-in guards (error ratio and p99 over the services
//! outside the scenario, a data center, a service; thresholds no traffic
//! here reaches, so none trips). Everything runs in this process (an
//! upstream, firedrill, the clients), so the ratio is of the whole and
//! the guards' share is what differs. Run by hand:
//! `cargo bench --bench guards` (GUARDS=20, RATE=400 requests/s,
//! SECONDS=10 per run, ROUNDS=3 of both runs, alternating which goes
//! first). The last line is machine-readable: medians and their ratio.

mod support;
use support::{cpu, env_number, upstream};

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const SERVICES: [(&str, &str); 4] = [
    ("talk", "pangyo"),
    ("mail", "pangyo"),
    ("maps", "ansan"),
    ("pay", "ansan"),
];

fn plan(upstream: SocketAddr, guards: usize) -> String {
    let mut plan =
        "[admin]\nlisten = '127.0.0.1:0'\n[datacenters.pangyo]\n[datacenters.ansan]\n".to_owned();
    for (name, dc) in SERVICES {
        plan += &format!(
            "[services.{name}]\ndatacenter = '{dc}'\nprotocol = 'http'\nlisten = '127.0.0.1:0'\nupstream = '{upstream}'\n"
        );
    }
    plan += "[scenarios.drill]\n[[scenarios.drill.faults]]\nservice = 'talk'\naction = 'delay'\nlatency = '1ms'\n";
    let selectors = [
        "{ outside = true }",
        "{ datacenter = 'ansan' }",
        "{ service = 'maps' }",
    ];
    for i in 0..guards {
        let selector = selectors[i % selectors.len()];
        let (measure, above) = if i % 2 == 0 {
            ("error_ratio", "0.99")
        } else {
            ("p99_latency", "'20s'")
        };
        plan += &format!(
            "[[scenarios.drill.stop_when]]\nname = 'g{i}'\n{measure} = {selector}\nabove = {above}\nwindow = '30s'\n"
        );
    }
    plan
}

/// The CPU this process spends over `seconds` of `rate` requests a second
/// spread over every service, with the scenario active.
async fn run(guards: usize, rate: u64, seconds: u64) -> Duration {
    let upstream = upstream().await;
    let plan =
        firedrill::config::parse(&plan(upstream, guards), "guards.toml").expect("plan parses");
    let running = firedrill::start(plan).await.expect("firedrill starts");
    running
        .engine()
        .activate("drill", None, "bench")
        .expect("drill activates");
    let urls: Vec<String> = SERVICES
        .iter()
        .map(|(name, _)| format!("http://{}/", running.service_addr(name).unwrap()))
        .collect();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut every = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    // Warm up: connections pooled, windows filled.
    let warm_up = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut measured_from = None;
    let end = warm_up + Duration::from_secs(seconds);
    let mut sent = 0usize;
    loop {
        let now = every.tick().await;
        if now >= end {
            break;
        }
        if now >= warm_up && measured_from.is_none() {
            measured_from = Some(cpu());
        }
        let url = urls[sent % urls.len()].parse().unwrap();
        sent += 1;
        let request = client.get(url);
        tokio::spawn(async move {
            if let Ok(response) = request.await {
                let _ = response.into_body().collect().await;
            }
        });
    }
    let spent = cpu() - measured_from.unwrap_or_default();
    running.shutdown(Duration::from_secs(1)).await;
    spent
}

#[tokio::main]
async fn main() {
    let guards: usize = env_number("GUARDS", 20);
    let rate: u64 = env_number("RATE", 400);
    let seconds: u64 = env_number("SECONDS", 10);
    let rounds: usize = env_number("ROUNDS", 3);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    // Alternating which goes first, so neither gains from running second.
    for round in 0..rounds {
        for guarded in [round % 2 == 1, round % 2 == 0] {
            let spent = run(if guarded { guards } else { 0 }, rate, seconds).await;
            let what = if guarded { "with guards" } else { "without" };
            println!(
                "round {}: {what}: {spent:?} CPU over {seconds}s at {rate} req/s",
                round + 1
            );
            if guarded { &mut with } else { &mut without }.push(spent.as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (without, with) = (median(&mut without), median(&mut with));
    println!(
        "guards guards={guards} rate={rate} seconds={seconds} rounds={rounds} cpu_without_ms={:.0} cpu_with_ms={:.0} ratio={:.3}",
        without * 1000.0,
        with * 1000.0,
        with / without.max(0.001)
    );
}
