//! `firedrill watch`: the status redrawn every second until Ctrl-C or
//! until whoever reads the output goes away. Once firedrill has answered,
//! losing it does not end the watch: the screen says so and it retries,
//! as a room watching a game day wants.

use std::time::Duration;

use http::Method;

use super::{call, render, write, Client, Failure, Stop};
use crate::admin::api;

/// Clears a terminal and moves to its top left corner.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// Redraws the status every second; JSON lines with `json`.
pub(super) async fn run(client: &Client, json: bool, terminal: bool) -> Result<(), Stop> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut reached = false;
    loop {
        let fetched = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            fetched = async {
                tick.tick().await;
                call::<api::Status>(client, Method::GET, "/status", None).await
            } => fetched,
        };
        let frame = match fetched {
            Ok((_, raw)) if json => format!("{}\n", raw.trim_end()),
            Ok((status, _)) => {
                reached = true;
                frame(&render::status(&status, terminal), client, terminal)
            }
            // Lost after it answered: keep the screen alive and retry.
            Err(Stop::Failed(Failure::Unreachable(message))) if reached && !json => frame(
                &format!("{message}\nretrying every second\n"),
                client,
                terminal,
            ),
            Err(stop) => return Err(stop),
        };
        write(&frame)?;
    }
}

/// One screen: cleared on a terminal, else separated by a blank line.
fn frame(body: &str, client: &Client, terminal: bool) -> String {
    let header = format!("firedrill at {} (Ctrl-C to stop)\n", client.url);
    if terminal {
        format!("{CLEAR}{header}{body}")
    } else {
        format!("{header}{body}\n")
    }
}
