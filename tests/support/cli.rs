//! The real `firedrill` binary as a client of a running firedrill: the
//! command with its admin URL and token set, a run to its end off the
//! test's runtime (which keeps serving firedrill meanwhile), and its exit
//! code.

use std::process::Command;

use firedrill::Running;

use super::{run_captured, Ran, STEP};

/// `running`'s admin API as a plain http URL.
pub fn http_admin(running: &Running) -> String {
    format!("http://{}", running.admin_addr())
}

/// `firedrill ARGS` with `FIREDRILL_ADMIN=admin` and `token`, if any, as
/// `FIREDRILL_TOKEN` (an inherited one removed), logging only warnings.
pub fn command(admin: &str, token: Option<&str>, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_firedrill"));
    command
        .args(args)
        .env("FIREDRILL_ADMIN", admin)
        .env_remove("FIREDRILL_TOKEN")
        .env("RUST_LOG", "warn");
    if let Some(token) = token {
        command.env("FIREDRILL_TOKEN", token);
    }
    command
}

/// Runs `firedrill ARGS` to its end (killed after [`STEP`]), off the
/// test's runtime so firedrill keeps serving.
pub async fn cli(admin: &str, token: Option<&str>, args: &[&str]) -> Ran {
    let mut command = command(admin, token, args);
    let ran = tokio::task::spawn_blocking(move || run_captured(&mut command, STEP));
    ran.await.expect("the command ran")
}

/// Its exit code; the test fails if it hung or was killed.
pub fn code(ran: &Ran) -> i32 {
    let status = ran.status.unwrap_or_else(|| panic!("hung: {ran:?}"));
    status.code().unwrap_or_else(|| panic!("killed: {ran:?}"))
}
