//! `GET /status` over real sockets with traffic flowing through real
//! upstreams: a data center goes dark under a blackout and recovers after
//! it is lifted, while the others stay healthy; the endpoint follows the
//! admin API's tokens.

mod support;
use gameday::Traffic;
use support::status::state_of;
use support::*;

#[path = "support/gameday.rs"]
mod gameday;

use std::time::Duration;

use firedrill::admin::api;
use firedrill::Running;
use http::{Method, StatusCode};
use tokio::time::Instant;

async fn status(running: &Running) -> api::Status {
    let (code, body) = admin(running, Method::GET, "/status", "").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    serde_json::from_value(body.clone()).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Each data center's state and its services', in order, to read in a
/// failure: `pangyo dark (talk dark, maps dark); ansan healthy (...)`.
fn states(status: &api::Status) -> String {
    let datacenter = |dc: &api::DataCenterStatus| {
        let services: Vec<String> = (dc.services.iter())
            .map(|s| format!("{} {}", s.name, s.state))
            .collect();
        format!("{} {} ({})", dc.name, dc.state, services.join(", "))
    };
    let all: Vec<String> = status.datacenters.iter().map(datacenter).collect();
    all.join("; ")
}

/// Polls `GET /status` until `wanted` holds, for at most `limit`.
async fn wait_for(
    running: &Running,
    limit: Duration,
    what: &str,
    wanted: impl Fn(&api::Status) -> bool,
) -> api::Status {
    let deadline = Instant::now() + limit;
    loop {
        let now = status(running).await;
        if wanted(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not within {limit:?}: {}",
            states(&now)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_blacked_out_datacenter_reads_dark_and_recovers_after_the_lift() {
    let running = gameday::plan("").await.start().await;
    let _traffic = Traffic::start(&running);
    let busy = wait_for(&running, STEP, "traffic in every data center", |s| {
        s.datacenters.iter().all(|dc| dc.requests_per_second > 0.0)
    })
    .await;
    assert_eq!(busy.window, "5s");
    assert!(busy.active.is_empty());
    for dc in &busy.datacenters {
        assert_eq!(dc.state, "healthy", "{}", states(&busy));
        assert_eq!(dc.error_ratio, Some(0.0));
        assert!(dc.p99_seconds.is_some());
    }

    activate(&running, "pangyo-fire").await;
    let dark = wait_for(&running, Duration::from_secs(3), "pangyo dark", |s| {
        state_of(s, "pangyo") == "dark"
    })
    .await;
    assert_eq!(state_of(&dark, "ansan"), "healthy", "{}", states(&dark));
    let pangyo = &dark.datacenters[0];
    assert!(pangyo.services.iter().all(|s| s.state == "dark"));
    assert_eq!(pangyo.services[0].faults[0].action.action, "blackhole");
    assert_eq!(pangyo.services[0].faults[0].scenario, "pangyo-fire");
    let scenarios: Vec<&str> = dark.active.iter().map(|a| &*a.scenario).collect();
    assert_eq!(scenarios, ["pangyo-fire"]);

    // While the blackout lasts, pangyo's requests fail and ansan's do not.
    let failing = wait_for(&running, STEP, "pangyo's requests failing", |s| {
        s.datacenters[0].error_ratio.is_some_and(|r| r > 0.5)
    })
    .await;
    assert_eq!(failing.datacenters[1].error_ratio, Some(0.0));
    assert_eq!(state_of(&failing, "ansan"), "healthy");

    lift(&running, "pangyo-fire").await;
    // Failed requests stay in the window for a few seconds after the lift.
    let recovered = wait_for(&running, Duration::from_secs(20), "pangyo healthy", |s| {
        s.datacenters.iter().all(|dc| dc.state == "healthy")
    })
    .await;
    assert!(recovered.active.is_empty());
    assert!(recovered.datacenters[0].requests_per_second > 0.0);
}

#[tokio::test]
async fn status_needs_a_token_when_the_plan_has_tokens() {
    let tokens = "tokens = [{ name = 'lead', value = 's3cret-lead' }]";
    let running = gameday::plan(tokens).await.start().await;
    let (code, body) = admin(&running, Method::GET, "/status", "").await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
    let url = format!("http://{}/status", running.admin_addr());
    let request = http::Request::get(url)
        .header("authorization", "Bearer s3cret-lead")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = within(STEP, client().request(request)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let open = format!("{tokens}; open_reads = true");
    let running = gameday::plan(&open).await.start().await;
    let status = status(&running).await;
    assert_eq!(status.datacenters.len(), 2);
}

/// An open `GET /stream`, read message by message.
struct Stream {
    body: hyper::body::Incoming,
    buffer: String,
}

/// One server-sent message: its `event:`, `data:` and `retry:` fields.
#[derive(Debug, Default)]
struct Message {
    event: String,
    data: String,
    retry: Option<String>,
}

impl Stream {
    async fn open(running: &Running) -> Stream {
        let url = format!("http://{}/stream", running.admin_addr());
        let request = http::Request::get(url)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = within(STEP, client().request(request)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Stream {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// The next message other than a keep-alive comment.
    async fn next(&mut self) -> Message {
        use http_body_util::BodyExt;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let text: String = self.buffer.drain(..end + 2).collect();
                let mut message = Message::default();
                for line in text.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => message.event = value.to_owned(),
                        "data" => message.data += value,
                        "retry" => message.retry = Some(value.to_owned()),
                        _ => {}
                    }
                }
                if !message.event.is_empty() {
                    return message;
                }
                continue;
            }
            let frame = within(STEP, self.body.frame())
                .await
                .expect("the stream stays open")
                .expect("the stream reads");
            if let Ok(data) = frame.into_data() {
                self.buffer += &String::from_utf8_lossy(&data);
            }
        }
    }

    /// The next status.
    async fn status(&mut self) -> api::Status {
        loop {
            let message = self.next().await;
            if message.event == "status" {
                return serde_json::from_str(&message.data).expect("a status");
            }
        }
    }
}

#[tokio::test]
async fn the_stream_pushes_the_status_every_second_and_engine_events_at_once() {
    let running = gameday::plan("").await.start().await;
    let _traffic = Traffic::start(&running);
    let mut stream = Stream::open(&running).await;
    let first = stream.next().await;
    assert_eq!(first.event, "status");
    assert_eq!(first.retry.as_deref(), Some("1000"), "reconnect after 1 s");
    let opened = Instant::now();
    stream.status().await;
    stream.status().await;
    assert!(
        opened.elapsed() >= Duration::from_millis(1500),
        "about once a second"
    );

    activate(&running, "pangyo-fire").await;
    let asked = Instant::now();
    // Status updates already on their way may come first.
    let engine = loop {
        let message = stream.next().await;
        if message.event == "engine" {
            break message;
        }
    };
    let live: api::LiveEvent = serde_json::from_str(&engine.data).unwrap();
    assert_eq!(live.kind, "activated");
    assert_eq!(live.scenarios, ["pangyo-fire"]);
    assert!(
        live.text.starts_with("pangyo-fire activated by 127.0.0.1:"),
        "{}",
        live.text
    );
    let after = stream.status().await;
    assert_eq!(state_of(&after, "pangyo"), "dark", "{}", states(&after));
    assert_eq!(state_of(&after, "ansan"), "healthy", "{}", states(&after));
    assert_eq!(after.active.len(), 1);
    eprintln!("pushed within {:?} of the activation", asked.elapsed());

    lift(&running, "pangyo-fire").await;
    let lifted = loop {
        let message = stream.next().await;
        if message.event == "engine" {
            let live: api::LiveEvent = serde_json::from_str(&message.data).unwrap();
            if live.kind == "lifted" {
                break live;
            }
        }
    };
    assert_eq!(lifted.scenarios, ["pangyo-fire"]);
    let after = stream.status().await;
    assert!(after.active.is_empty());
}

#[tokio::test]
async fn the_stream_ends_when_shutdown_starts() {
    use http_body_util::BodyExt;
    let running = gameday::plan("").await.start().await;
    let mut stream = Stream::open(&running).await;
    stream.status().await;
    // What `Running::shutdown` does first; the admin API still answers.
    running.engine().live().drain();
    within(STEP, async {
        while let Some(Ok(_)) = stream.body.frame().await {}
    })
    .await;
    status(&running).await;
}
