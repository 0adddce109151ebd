//! `firedrill watch`: the status redrawn every second until Ctrl-C or
//! until whoever reads the output goes away. Once firedrill has answered,
//! losing it does not end the watch: the screen says so and it retries,
//! as a room watching a game day wants.

use std::time::Duration;

use http::Method;

use super::{call, render, write, Client, Failure, Stop};
use crate::admin::api;

/// Moves to a terminal's top left corner; each line then clears what is
/// left of the previous frame's, and the screen below the last line is
/// cleared, so a redraw does not flicker.
const HOME: &str = "\x1b[H";
const CLEAR_LINE: &str = "\x1b[K";
const CLEAR_BELOW: &str = "\x1b[J";

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

/// One screen: drawn over the last on a terminal, else after a blank line.
fn frame(body: &str, client: &Client, terminal: bool) -> String {
    let header = format!("firedrill at {} (Ctrl-C to stop)\n", client.url);
    if !terminal {
        return format!("{header}{body}\n");
    }
    let mut screen = HOME.to_owned();
    for line in header.lines().chain(body.lines()) {
        screen += line;
        screen += CLEAR_LINE;
        screen += "\n";
    }
    screen + CLEAR_BELOW
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Target;

    #[test]
    fn a_terminal_frame_draws_over_the_last_and_a_pipe_gets_plain_frames() {
        let target = Target {
            admin: "http://127.0.0.1:9090".to_owned(),
            cacert: None,
            cert: None,
            key: None,
            timeout: Duration::from_secs(1),
        };
        let client = Client::new(&target, None).unwrap();
        assert_eq!(
            frame("a\nb\n", &client, true),
            "\x1b[Hfiredrill at http://127.0.0.1:9090 (Ctrl-C to stop)\x1b[K\na\x1b[K\nb\x1b[K\n\x1b[J"
        );
        assert_eq!(
            frame("a\n", &client, false),
            "firedrill at http://127.0.0.1:9090 (Ctrl-C to stop)\na\n\n"
        );
    }
}
