//! The dashboards proven against a real Prometheus: firedrill runs in
//! process on ephemeral ports with real upstreams in three data centers, a
//! real `prometheus` scrapes it every second, traffic flows, Pangyo goes
//! dark, and every PromQL query of every dashboard in `dashboards/` must
//! return real data. `promtool check metrics` lints a live scrape. A
//! dependency cascade (a service answering 503 because the one it calls
//! went dark) must read as failing on the dashboard's error ratio.
//! Skipped (with an install hint) without prometheus and promtool, except
//! on CI where that fails. `FIREDRILL_DASHBOARDS=DIR` checks another folder.

mod support;
use support::prometheus::Prometheus;
use support::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const INSTALL: &str = "apt-get install prometheus";

/// How long a client waits for an answer before it gives up.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(300);

/// What `$__rate_interval` becomes: well over four 1 s scrapes.
const RATE_INTERVAL: &str = "10s";

/// The dashboard panels whose query is the error ratio, per data center and
/// per service.
const ERROR_RATIO_BY_DATACENTER: &str = "Error ratio per data center";
const ERROR_RATIO_BY_SERVICE: &str = "Error ratio per service";

/// How long a scenario may take to fill the error ratio's rate interval.
const FILLING: Duration = Duration::from_secs(30);

/// The queries the dashboard checks make of the shared test Prometheus.
impl Prometheus {
    /// An instant query at now: the result list, or Prometheus's error.
    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        self.api(&format!("query?query={}", encode(promql))).await
    }

    /// A range query from `since` to now, one step a second, as Grafana
    /// evaluates annotations over its time range.
    async fn query_range(&self, promql: &str, since: SystemTime) -> Result<Vec<Value>, String> {
        let unix = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        let (start, end) = (unix(since), unix(SystemTime::now()));
        let query = encode(promql);
        self.api(&format!(
            "query_range?query={query}&start={start:.3}&end={end:.3}&step=1"
        ))
        .await
    }

    /// Calls `/api/v1/{call}`: the result list, or Prometheus's error.
    async fn api(&self, call: &str) -> Result<Vec<Value>, String> {
        let url = format!("http://{}/api/v1/{call}", self.addr);
        let (_, body) = send(&client(), Method::GET, &url, "")
            .await
            .map_err(|e| format!("prometheus unreachable: {e}"))?;
        let answer: Value =
            serde_json::from_str(&body).map_err(|e| format!("not JSON ({e}): {body}"))?;
        if answer["status"] != "success" {
            return Err(format!("{}: {}", answer["errorType"], answer["error"]));
        }
        let data = &answer["data"];
        Ok(match &data["result"] {
            Value::Array(series) => series.clone(),
            // A scalar or string is one sample.
            single => vec![serde_json::json!({ "value": single })],
        })
    }

    /// Polls `promql` until it gives a first sample at least `min`, for at
    /// most `limit`.
    async fn wait_for(&self, promql: &str, min: f64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let value = match self.query(promql).await {
                Ok(series) => series.first().and_then(|s| number(&s["value"][1])),
                Err(_) => None,
            };
            if value.is_some_and(|v| v >= min) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`{promql}` stayed {value:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Prometheus {
    /// Polls an instant query until `done` holds for its result, for at
    /// most `limit`; returns the last result, whether or not it got there.
    async fn poll(
        &self,
        promql: &str,
        limit: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let result = self.query(promql).await;
            let result = result.unwrap_or_else(|e| panic!("`{promql}`: {e}"));
            if done(&result) || Instant::now() > deadline {
                return result;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The value of the series in `result` whose `label` is `value`.
fn value_of(result: &[Value], label: &str, value: &str) -> Option<f64> {
    result
        .iter()
        .find(|s| s["metric"][label] == value)
        .and_then(|s| number(&s["value"][1]))
}

/// The query of the dashboard panel titled `title`, as Prometheus gets it
/// (template variables substituted), from the first dashboard that has it.
fn panel_query(title: &str) -> String {
    let place = format!("panel \"{title}\"");
    let query = dashboard_files()
        .iter()
        .filter_map(|file| queries(file).ok())
        .flatten()
        .find(|query| query.place.contains(&place))
        .unwrap_or_else(|| panic!("no dashboard has a panel titled {title:?}"));
    query
        .expr
        .unwrap_or_else(|e| panic!("panel {title:?}: {e}"))
}

/// Percent-encodes a query-string value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A sample value as Prometheus writes it (a string), NaN included.
fn number(value: &Value) -> Option<f64> {
    value.as_str()?.parse().ok()
}

/// Whether any sample of any series is a number other than NaN.
fn has_data(series: &[Value]) -> bool {
    series.iter().any(|s| {
        let instant = std::iter::once(&s["value"][1]);
        let range = s["values"].as_array().into_iter().flatten().map(|v| &v[1]);
        instant.chain(range).filter_map(number).any(|v| !v.is_nan())
    })
}

// --- Dashboards -------------------------------------------------------------------

/// One PromQL query of a dashboard and where it sits.
struct Query {
    place: String,
    /// As the dashboard has it.
    raw: String,
    /// With template variables substituted, or why they could not be.
    expr: Result<String, String>,
    /// Annotations mark moments in the dashboard's time range, not now.
    annotation: bool,
}

impl Query {
    /// The number of series the query gives, or why it shows nothing.
    async fn evaluate(&self, prometheus: &Prometheus, since: SystemTime) -> Result<usize, String> {
        let expr = self.expr.as_deref().map_err(|e| e.to_owned())?;
        let answer = if self.annotation {
            prometheus.query_range(expr, since).await
        } else {
            prometheus.query(expr).await
        };
        match answer.map_err(|e| format!("error {e}"))? {
            series if series.is_empty() => Err("no series".to_owned()),
            series if !has_data(&series) => Err("only NaN".to_owned()),
            series => Ok(series.len()),
        }
    }
}

/// Every `*.json` in the dashboards folder.
fn dashboard_files() -> Vec<PathBuf> {
    let dir = std::env::var_os("FIREDRILL_DASHBOARDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a folder entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no dashboards (*.json) in {}",
        dir.display()
    );
    files
}

/// Every target expr of every panel (rows' nested panels included) and
/// every annotation expr of a dashboard, template variables substituted.
fn queries(file: &Path) -> Result<Vec<Query>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let json: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    // The HTTP API's wrapping, `{"dashboard": {...}}`, is accepted too.
    let dashboard = if json["dashboard"].is_object() {
        &json["dashboard"]
    } else {
        &json
    };
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let name = file.file_name().unwrap().to_string_lossy();
    let mut found = Vec::new();
    panel_queries(&name, &dashboard["panels"], &mut found);
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let expr = annotation["expr"]
            .as_str()
            .or(annotation["target"]["expr"].as_str());
        if let Some(expr) = expr.filter(|e| !e.trim().is_empty()) {
            let place = format!("{name}: annotation {}", annotation["name"]);
            found.push((place, expr, true));
        }
    }
    if found.is_empty() {
        return Err("no PromQL queries in panels[].targets[].expr or annotations".to_owned());
    }
    let queries = found.into_iter().map(|(place, raw, annotation)| Query {
        place,
        raw: raw.to_owned(),
        expr: substitute(raw, &variables),
        annotation,
    });
    Ok(queries.collect())
}

/// The target exprs of `panels` and of the panels nested in them (rows),
/// in dashboard order.
fn panel_queries<'a>(file: &str, panels: &'a Value, found: &mut Vec<(String, &'a str, bool)>) {
    for panel in panels.as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str().filter(|e| !e.trim().is_empty()) {
                let place = format!(
                    "{file}: panel {} (id {}) target {}",
                    panel["title"], panel["id"], target["refId"]
                );
                found.push((place, expr, false));
            }
        }
        panel_queries(file, &panel["panels"], found);
    }
}

/// Replaces Grafana's `$name`, `${name}` and `${name:format}` as a
/// dashboard showing all data centers and services would.
fn substitute(expr: &str, declared: &[&str]) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out += &rest[..at];
        let after = &rest[at + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(inner) => {
                let end = inner.find('}').ok_or("an unclosed `${`")?;
                (inner[..end].split(':').next().unwrap_or(""), end + 2)
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        let value = match name {
            // A `$` of a regex, like `"^talk$"`.
            "" => "$",
            "__rate_interval" => RATE_INTERVAL,
            "__interval" => "2s",
            "__interval_ms" => "2000",
            "__range" => "1m",
            "__range_s" => "60",
            "__range_ms" => "60000",
            // "All" of a template variable.
            name if declared.contains(&name) || name == "datacenter" || name == "service" => ".*",
            name => return Err(format!("unknown variable `${name}`")),
        };
        out += value;
        rest = &after[len..];
    }
    Ok(out + rest)
}

// --- Traffic ----------------------------------------------------------------------

/// One HTTP/1.1 request on a connection of its own, given up after
/// [`CLIENT_TIMEOUT`] (closing the connection). Whether a 200 came back.
async fn request_once(addr: SocketAddr) -> bool {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET /x HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer.starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(CLIENT_TIMEOUT, exchange).await,
        Ok(Ok(true))
    )
}

/// Echo round trips on a kept-open connection every 100 ms; a round trip
/// that times out (a blackhole) drops the connection for a new one.
async fn echo_traffic(addr: SocketAddr, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(CLIENT_TIMEOUT, TcpStream::connect(addr)).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            let trip =
                tokio::time::timeout(CLIENT_TIMEOUT, echo_round_trip(&mut stream, b"ping\n"));
            if !matches!(trip.await, Ok(Ok(_))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Stops the traffic loops when dropped, however the test ends.
struct Stopper(Arc<AtomicBool>);

impl Drop for Stopper {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Requests to `addr` every 50 ms (or after a timeout) until `stop`;
/// returns (answered, not answered).
async fn http_traffic(addr: SocketAddr, stop: Arc<AtomicBool>) -> (u32, u32) {
    let (mut ok, mut failed) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        if request_once(addr).await {
            ok += 1;
        } else {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (ok, failed)
}

// --- The test ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_query_shows_real_data_while_pangyo_is_dark() {
    if !programs_present(&["prometheus", "promtool"], INSTALL) {
        return;
    }
    let started = Instant::now();
    let since = SystemTime::now();
    let phase = |what: &str| eprintln!("[{:5.1}s] {what}", started.elapsed().as_secs_f64());
    let http = ["talk", "pay", "maps", "emoticons"];
    let running = PlanText::new(&["pangyo", "ansan", "seoul"])
        .http("talk", "pangyo", http_upstream("talk").await)
        .http("pay", "pangyo", http_upstream("pay").await)
        .tcp("session-cache", "pangyo", echo_upstream().await)
        .http("maps", "ansan", http_upstream("maps").await)
        .http("emoticons", "seoul", http_upstream("emoticons").await)
        .scenario_with(
            "pangyo-fire",
            "description = 'Pangyo goes dark'; max_duration = '1m'",
            &["datacenter = 'pangyo'; action = 'blackhole'"],
        )
        .fault(
            "seoul-slow",
            "emoticons",
            "action = 'delay'; latency = '50ms'",
        )
        .start()
        .await;
    let prometheus = Prometheus::start(running.admin_addr(), None).await;
    phase(&format!("prometheus listens on {}", prometheus.addr));

    // Bounded: the loops stop on the flag, which is set at the latest when
    // the test lets go of `stopper`, and each step ends within 300 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = Stopper(Arc::clone(&stop));
    let mut clients = Vec::new();
    for service in http {
        let (addr, stop) = (addr(&running, service), Arc::clone(&stop));
        clients.push((service, tokio::spawn(http_traffic(addr, stop))));
    }
    let cache = addr(&running, "session-cache");
    let echoes: Vec<_> = (0..3)
        .map(|_| tokio::spawn(echo_traffic(cache, Arc::clone(&stop))))
        .collect();

    // Prometheus syncs new targets every 5 s, so the first scrape comes late.
    let scrapes = r#"count_over_time(up{job="firedrill"}[1m])"#;
    prometheus.wait_for(scrapes, 3.0, 2 * STEP).await;
    prometheus
        .wait_for(r#"up{job="firedrill"}"#, 1.0, STEP)
        .await;
    phase("three scrapes in; pangyo goes dark");
    activate(&running, "pangyo-fire").await;
    // The dashboard's own error ratio, read once its rate interval lies
    // inside the fire.
    let error_ratio = panel_query(ERROR_RATIO_BY_DATACENTER);
    let pangyo_dark = |r: &[Value]| value_of(r, "datacenter", "pangyo").is_some_and(|v| v > 0.9);
    prometheus.poll(&error_ratio, FILLING, pangyo_dark).await;
    phase("evaluating queries");

    let mut failures = Vec::new();
    let mut evaluated = 0;
    for file in dashboard_files() {
        let queries = match queries(&file) {
            Ok(queries) => queries,
            Err(e) => {
                failures.push(format!("{}: {e}", file.display()));
                continue;
            }
        };
        for query in queries {
            evaluated += 1;
            match query.evaluate(&prometheus, since).await {
                Ok(n) => eprintln!("ok ({n} series) {}", query.place),
                Err(e) => failures.push(format!("{}: {e}: `{}`", query.place, query.raw)),
            }
        }
    }

    let ratios = prometheus
        .query(&error_ratio)
        .await
        .expect("the error ratio query runs");
    let ratio = |dc: &str| value_of(&ratios, "datacenter", dc);
    let (pangyo, ansan, seoul) = (ratio("pangyo"), ratio("ansan"), ratio("seoul"));
    let active = prometheus
        .query(r#"firedrill_scenario_active{scenario="pangyo-fire"}"#)
        .await;
    phase(&format!(
        "{evaluated} dashboard queries; error ratio pangyo {pangyo:?}, ansan {ansan:?}, seoul {seoul:?}"
    ));

    let scrape = metrics(&running).await;
    let lint = tokio::task::spawn_blocking(move || {
        run_with_input(
            Command::new("promtool").args(["check", "metrics"]),
            scrape.as_bytes(),
            STEP,
        )
    })
    .await
    .expect("promtool runs");

    drop(stopper);
    for (service, client) in clients {
        let (ok, failed) = within(STEP, client).await.expect("a traffic loop");
        eprintln!("{service}: {ok} answered, {failed} not");
    }
    for echo in echoes {
        within(STEP, echo).await.expect("an echo loop");
    }
    phase("traffic stopped");

    assert!(
        failures.is_empty(),
        "{} of {evaluated} dashboard queries show no data:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        active
            .as_ref()
            .is_ok_and(|s| s.first().and_then(|s| number(&s["value"][1])) == Some(1.0)),
        "pangyo-fire is not active in Prometheus: {active:?}"
    );
    assert!(
        pangyo.is_some_and(|r| r > 0.9),
        "pangyo error ratio {pangyo:?}: {ratios:?}"
    );
    assert!(
        ansan.is_some_and(|r| r < 0.1),
        "ansan error ratio {ansan:?}: {ratios:?}"
    );
    assert!(
        seoul.is_some_and(|r| r < 0.1),
        "seoul error ratio {seoul:?}: {ratios:?}"
    );
    assert!(
        lint.succeeded() && lint.stdout.trim().is_empty() && lint.stderr.trim().is_empty(),
        "promtool check metrics on a live scrape: {lint:?}"
    );
}

/// How long `pay`'s upstream waits for `login` before answering 503.
const LOGIN_TIMEOUT: Duration = Duration::from_millis(100);

/// `pay`'s upstream: on every request it calls `login` (through firedrill,
/// at the address set once firedrill runs) and answers 200 when login
/// answers 200 within [`LOGIN_TIMEOUT`], else 503, as a service does when a
/// dependency goes dark.
async fn cascading_upstream(login: Arc<OnceLock<SocketAddr>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let login = Arc::clone(&login);
            let service = service_fn(move |_: Request<Incoming>| {
                let login = login.get().map(|addr| format!("http://{addr}/session"));
                async move {
                    let answered = match login {
                        Some(url) => {
                            let client = client();
                            let call = send(&client, Method::GET, &url, "");
                            tokio::time::timeout(LOGIN_TIMEOUT, call).await
                        }
                        None => Ok(Ok((StatusCode::SERVICE_UNAVAILABLE, String::new()))),
                    };
                    let (status, body) = match answered {
                        Ok(Ok((StatusCode::OK, _))) => (StatusCode::OK, "paid\n"),
                        _ => (StatusCode::SERVICE_UNAVAILABLE, "login is unavailable\n"),
                    };
                    let mut response =
                        Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    *response.status_mut() = status;
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dependency_cascade_reads_as_failing_on_the_dashboard() {
    if !programs_present(&["prometheus", "promtool"], INSTALL) {
        return;
    }
    // Metrics are process-wide: names of their own keep the other test's
    // data centers out of these ratios, and these out of its.
    let (login, pay) = (unique("login"), unique("pay"));
    let (dark, spared, fire) = (unique("pangyo"), unique("ansan"), unique("login-fire"));
    let login_addr = Arc::new(OnceLock::new());
    let blackout = format!("datacenter = '{dark}'; action = 'blackhole'");
    let running = PlanText::new(&[&dark, &spared])
        .http(&login, &dark, http_upstream("login").await)
        .http(
            &pay,
            &spared,
            cascading_upstream(Arc::clone(&login_addr)).await,
        )
        .scenario(&fire, &[&blackout])
        .start()
        .await;
    login_addr.set(addr(&running, &login)).expect("set once");
    let prometheus = Prometheus::start(running.admin_addr(), None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = Stopper(Arc::clone(&stop));
    let traffic = tokio::spawn(http_traffic(addr(&running, &pay), Arc::clone(&stop)));

    let error_ratio = panel_query(ERROR_RATIO_BY_SERVICE);
    let pay_ratio = |r: &[Value]| value_of(r, "service", &pay);
    let before = prometheus
        .poll(&error_ratio, FILLING, |r| pay_ratio(r).is_some())
        .await;
    activate(&running, &fire).await;
    let during = prometheus
        .poll(&error_ratio, FILLING, |r| {
            pay_ratio(r).is_some_and(|v| v > 0.9)
        })
        .await;

    drop(stopper);
    let (ok, failed) = within(STEP, traffic).await.expect("the traffic loop");
    eprintln!("{pay}: {ok} answered 200, {failed} not");
    assert!(
        pay_ratio(&before).is_some_and(|v| v < 0.1),
        "{pay} failing before {dark} went dark: {before:?}"
    );
    assert!(
        pay_ratio(&during).is_some_and(|v| v > 0.9),
        "{pay} answers 503 while {login} is dark, yet its error ratio reads {:?}: {during:?}",
        pay_ratio(&during)
    );
    assert!(
        value_of(&during, "service", &login).is_some_and(|v| v > 0.9),
        "{login} is dark: {during:?}"
    );
}
