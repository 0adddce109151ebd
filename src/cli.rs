//! The command line as a client of a running firedrill's admin API:
//! `trigger`, `lift`, `status`, `watch`, `events` and `report`, each
//! printing for a person or, with `--json`, the API's JSON. Exit codes
//! for runbooks: 0 done, 1 the API answered an error, 2 usage, 3 not
//! reachable. `client.rs` makes the calls; `render.rs` and `table.rs`
//! turn answers into text, as pure functions.

pub mod client;
pub mod render;
pub mod table;
mod watch;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use http::Method;
use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::admin::api;
use crate::fetch;
pub use client::{Answer, Client, Failure, Target};

/// The API answered an error.
pub const EXIT_API: u8 = 1;
/// The command line cannot work as given.
pub const EXIT_USAGE: u8 = 2;
/// Nothing answered as firedrill's admin API at the address given.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Where to call and how to print, shared by every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    #[command(flatten)]
    pub target: Target,
    /// Print the API's JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The commands that call a running firedrill. The token, when the plan
/// has `[admin] tokens`, comes from `FIREDRILL_TOKEN`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Activate a scenario on a running firedrill.
    Trigger {
        /// The scenario, as the plan names it.
        scenario: String,
        /// How long it lasts (capped at its max_duration); default: its
        /// max_duration. On an active scenario, its new length.
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        #[command(flatten)]
        common: Common,
    },
    /// Lift one active scenario, or every one with --all.
    #[command(group = clap::ArgGroup::new("what").required(true).args(["scenario", "all"]))]
    Lift {
        /// The scenario to lift.
        scenario: Option<String>,
        /// Lift every active scenario (the big red button).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Every data center and service now, and the active scenarios.
    ///
    /// Each with its state (healthy, degraded, dark), request rate, error
    /// ratio and p99; each active scenario with its time left and guards.
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// The status, redrawn every second until Ctrl-C.
    Watch {
        #[command(flatten)]
        common: Common,
    },
    /// Recent activations, newest first: who started each, how it ended.
    Events {
        /// Show at most this many.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        #[command(flatten)]
        common: Common,
    },
    /// An activation's impact report as Markdown; the latest without an id.
    Report {
        /// The report's id, as `GET /reports` lists them.
        id: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

/// Why a command stopped before it was done.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The API answered an error status.
    Api(Answer),
    /// Something the API answered or lacks, said in a sentence: exit 1.
    Message(String),
    /// No answer, or not a usable one.
    Failed(Failure),
    /// Whoever read our output went away: nothing more to do.
    Closed,
}

impl From<Failure> for Stop {
    fn from(failure: Failure) -> Stop {
        Stop::Failed(failure)
    }
}

/// Runs a client command to its end; the exit code for the runbook.
pub fn run(command: Command) -> ExitCode {
    let common = match &command {
        Command::Trigger { common, .. }
        | Command::Lift { common, .. }
        | Command::Status { common }
        | Command::Watch { common }
        | Command::Events { common, .. }
        | Command::Report { common, .. } => common.clone(),
    };
    let token = std::env::var("FIREDRILL_TOKEN").ok();
    let client = match Client::new(&common.target, token) {
        Ok(client) => client,
        Err(failure) => return exit(Stop::Failed(failure), &common, None),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let done = runtime.block_on(dispatch(command, &client, common.json));
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(stop) => exit(stop, &common, Some(&client)),
    }
}

async fn dispatch(command: Command, client: &Client, json: bool) -> Result<(), Stop> {
    match command {
        Command::Trigger {
            scenario, duration, ..
        } => {
            let body = duration.map(|d| {
                let duration = humantime::format_duration(d).to_string();
                serde_json::json!({ "duration": duration }).to_string()
            });
            let path = format!("/faults/{}", fetch::encode(&scenario));
            let (answer, raw) =
                call::<api::ActivateAnswer>(client, Method::POST, &path, body).await?;
            print(json, &raw, || render::triggered(&answer))
        }
        Command::Lift { all: true, .. } => {
            let (answer, raw) =
                call::<api::HaltAnswer>(client, Method::DELETE, "/faults", None).await?;
            print(json, &raw, || render::halted(&answer))
        }
        Command::Lift { scenario, .. } => {
            let path = format!("/faults/{}", fetch::encode(&scenario.unwrap_or_default()));
            let (answer, raw) =
                call::<api::LiftAnswer>(client, Method::DELETE, &path, None).await?;
            print(json, &raw, || render::lifted(&answer))
        }
        Command::Status { .. } => {
            let (status, raw) = call::<api::Status>(client, Method::GET, "/status", None).await?;
            print(json, &raw, || render::status(&status, colour()))
        }
        Command::Watch { .. } => watch::run(client, json, colour()).await,
        Command::Events { limit, .. } => {
            let (mut list, mut raw) =
                call::<api::EventList>(client, Method::GET, "/events", None).await?;
            if let Some(limit) = limit {
                list.events.truncate(limit);
                if json {
                    raw = first_events(&raw, limit).map_err(|e| {
                        Stop::Message(format!("cannot cut the API's events to --limit: {e}"))
                    })?;
                }
            }
            print(json, &raw, || render::events(&list.events))
        }
        Command::Report { id, .. } => report(client, id, json).await,
    }
}

/// `report [ID]`: the Markdown (or JSON) of one report, the latest
/// without an id.
async fn report(client: &Client, id: Option<String>, json: bool) -> Result<(), Stop> {
    let id = match id {
        Some(id) => id,
        None => {
            let (list, _) = call::<api::ReportList>(client, Method::GET, "/reports", None).await?;
            match list.reports.into_iter().next() {
                Some(latest) => latest.id,
                None => {
                    return Err(Stop::Message(
                        "no report yet: firedrill keeps one when an activation ends".to_owned(),
                    ))
                }
            }
        }
    };
    let path = format!("/reports/{}", fetch::encode(&id));
    let accept = if json {
        "application/json"
    } else {
        "text/markdown"
    };
    let answer = client.call(Method::GET, &path, None, accept).await?;
    if !answer.status.is_success() {
        return Err(Stop::Api(answer));
    }
    let mut text = answer.text();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    write(&text)
}

/// Calls the API and reads a successful answer as `T`; also the answer's
/// text, for `--json`.
pub(crate) async fn call<T: DeserializeOwned>(
    client: &Client,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<(T, String), Stop> {
    let answer = client.call(method, path, body, "application/json").await?;
    if !answer.status.is_success() {
        return Err(Stop::Api(answer));
    }
    let value = serde_json::from_slice(&answer.body).map_err(|e| {
        Failure::Unreachable(format!(
            "{} answered {path} with {} that is not firedrill's admin API ({e}): {}",
            client.url,
            answer.status,
            clip(&answer.text())
        ))
    })?;
    Ok((value, answer.text()))
}

/// The API's `/events` answer with its `events` array cut to the first
/// `limit`; every other field, and each event as the API wrote it, stay
/// as they came, known to this version of the command line or not.
fn first_events(raw: &str, limit: usize) -> Result<String, serde_json::Error> {
    let mut answer: IndexMap<String, Box<RawValue>> = serde_json::from_str(raw)?;
    if let Some(events) = answer.get_mut("events") {
        let mut list: Vec<Box<RawValue>> = serde_json::from_str(events.get())?;
        list.truncate(limit);
        *events = serde_json::value::to_raw_value(&list)?;
    }
    serde_json::to_string(&answer)
}

/// Prints the API's JSON as it came, or the text `render` makes.
fn print(json: bool, raw: &str, render: impl FnOnce() -> String) -> Result<(), Stop> {
    if json {
        write(&format!("{}\n", raw.trim_end()))
    } else {
        write(&render())
    }
}

/// Writes to stdout; a reader that went away ends the command quietly.
pub(crate) fn write(text: &str) -> Result<(), Stop> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Stop::Closed),
        Err(e) => Err(Stop::Message(format!("cannot write the output: {e}"))),
    }
}

/// Prints why the command stopped and gives its exit code.
fn exit(stop: Stop, common: &Common, client: Option<&Client>) -> ExitCode {
    let code = match stop {
        Stop::Closed => return ExitCode::SUCCESS,
        Stop::Failed(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            EXIT_USAGE
        }
        Stop::Failed(Failure::Unreachable(message)) => {
            eprintln!("error: {message}");
            EXIT_UNREACHABLE
        }
        Stop::Message(message) => {
            eprintln!("error: {message}");
            EXIT_API
        }
        Stop::Api(answer) => {
            if common.json && answer.error().is_some() {
                let _ = write(&format!("{}\n", answer.text().trim_end()));
            }
            eprint!("{}", api_error(&answer, client));
            EXIT_API
        }
    };
    ExitCode::from(code)
}

/// The API's error as it gave it, with the known scenarios or the plan's
/// located errors when it sent them, and a hint for a missing token.
pub fn api_error(answer: &Answer, client: Option<&Client>) -> String {
    let Some(body) = answer.error() else {
        return format!(
            "error: the admin API answered {}: {}\n",
            answer.status,
            clip(&answer.text())
        );
    };
    let mut text = format!("error: {}\n", body.error);
    if let Some(known) = body.known {
        text += "known scenarios:\n";
        for name in known {
            text += &format!("  {name}\n");
        }
    }
    for e in body.errors.unwrap_or_default() {
        text += &format!("  {}:{}:{}: {}\n", e.file, e.line, e.column, e.message);
    }
    if answer.status == http::StatusCode::UNAUTHORIZED && !client.is_some_and(Client::has_token) {
        text += "hint: set FIREDRILL_TOKEN to a token from the plan's [admin] tokens\n";
    }
    text
}

/// At most 200 characters of an answer, for a message.
fn clip(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

/// Colour for a terminal, unless NO_COLOR is set.
fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_cut_to_a_limit_keep_the_apis_own_json() {
        let raw = r#"{"events":[{"scenario":"b","later":{"x":1},"time":2},{"scenario":"a","time":1}],"next":"c"}"#;
        assert_eq!(
            first_events(raw, 1).unwrap(),
            r#"{"events":[{"scenario":"b","later":{"x":1},"time":2}],"next":"c"}"#
        );
        assert_eq!(first_events(raw, 5).unwrap(), raw);
        assert_eq!(first_events(raw, 0).unwrap(), r#"{"events":[],"next":"c"}"#);
    }

    #[test]
    fn an_error_that_is_not_the_apis_json_is_shown_with_its_status() {
        let answer = Answer {
            status: http::StatusCode::BAD_GATEWAY,
            body: "<html>bad gateway</html>".into(),
        };
        assert_eq!(
            api_error(&answer, None),
            "error: the admin API answered 502 Bad Gateway: <html>bad gateway</html>\n"
        );
    }
}
