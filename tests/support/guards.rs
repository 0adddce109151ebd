//! What the guard tests share: an upstream switched between answers, a
//! plan with one guarded scenario `fire`, steady traffic, and waits on a
//! guard's state in `GET /faults` and on the engine stopping `fire`.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use firedrill::engine::Happened;
use firedrill::Running;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{admin, client, send, url, EngineEvents, PlanText};

/// An HTTP upstream answering every request with the status it is set to.
pub async fn switchable_upstream() -> (SocketAddr, Arc<AtomicU16>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let status = Arc::new(AtomicU16::new(200));
    let shared = Arc::clone(&status);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let status = Arc::clone(&shared);
            tokio::spawn(async move {
                let service = service_fn(move |_: Request<Incoming>| {
                    let code = status.load(Ordering::Relaxed);
                    async move {
                        let mut response = Response::new(Full::new(Bytes::from_static(b"hi\n")));
                        *response.status_mut() = StatusCode::from_u16(code).unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, status)
}

/// Requests to each of `services` in turn, every 10 ms, until aborted;
/// each bounded, so a dropped or held request does not stall the rest.
pub fn traffic(running: &Running, services: &[&str]) -> JoinHandle<()> {
    let urls: Vec<String> = services.iter().map(|s| url(running, s, "/")).collect();
    tokio::spawn(async move {
        let client = client();
        loop {
            for url in &urls {
                let request = send(&client, Method::GET, url, "");
                let _ = tokio::time::timeout(Duration::from_secs(1), request).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// Two data centers: `talk` in pangyo in front of a healthy upstream,
/// `maps` in ansan in front of `maps`, and scenario `fire` with `fault`
/// on talk and the given `stop_when` tables (each as its lines).
pub fn plan(maps: SocketAddr, fault: &str, guards: &[&str]) -> String {
    let mut text = PlanText::new(&["pangyo", "ansan"])
        .http("maps", "ansan", maps)
        .toml()
        .to_owned();
    text += &format!("\n[services.talk]\ndatacenter = 'pangyo'\nprotocol = 'http'\nlisten = '127.0.0.1:0'\nupstream = '{maps}'\n");
    text += &format!("\n[scenarios.fire]\n[[scenarios.fire.faults]]\nservice = 'talk'\n{fault}\n");
    for guard in guards {
        text += "\n[[scenarios.fire.stop_when]]\n";
        for line in guard.split("; ") {
            text += line;
            text += "\n";
        }
    }
    text
}

/// The guards of the active `scenario` in `GET /faults`.
pub async fn guards(running: &Running, scenario: &str) -> Option<Vec<Value>> {
    let (status, body) = admin(running, Method::GET, "/faults", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let active = body["active"].as_array()?.iter();
    let found = active.clone().find(|a| a["scenario"] == scenario)?;
    found["guards"].as_array().cloned()
}

/// Polls `GET /faults` until the first guard of `scenario` satisfies
/// `done`, for at most `limit`; returns it.
pub async fn wait_for_guard(
    running: &Running,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let guard = guards(running, "fire")
            .await
            .and_then(|g| g.first().cloned());
        match guard {
            Some(guard) if done(&guard) => return guard,
            last => assert!(
                Instant::now() < deadline,
                "guard never got there; last: {last:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for `scenario` to be stopped by a guard; returns the stop.
pub async fn wait_for_stop(events: &mut EngineEvents, limit: Duration) -> firedrill::engine::Stop {
    let found = tokio::time::timeout(limit, async {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Happened::Stopped { stop, .. } = event.what {
                        return stop;
                    }
                }
                Err(error) => panic!("engine events stopped: {error}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no guard stopped the scenario within {limit:?}"))
}

/// The newest `GET /events` record.
pub async fn last_event(running: &Running) -> Value {
    let (_, body) = admin(running, Method::GET, "/events", "").await;
    body["events"][0].clone()
}
