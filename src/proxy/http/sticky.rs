//! An upstream HTTP/1.1 connection of each client connection's own. A
//! kept-alive client's requests go over one upstream connection with no
//! pool in between: no shared lock, no checkout, and the upstream sees the
//! same connection pattern the client has. (Driving the upstream
//! connection inside the client connection's task was measured too: it
//! cost more CPU per request than a task of its own.)

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use hyper::body::Incoming;

use super::origin::{Failure, Sender};
use super::Proxy;
use crate::proxy::Counted;

/// The upstream connection of one client connection, while idle.
#[derive(Default)]
pub(super) struct Sticky {
    // A std mutex, held only to take or return the sender, never across an
    // await; only the client connection's own requests touch it.
    idle: Mutex<Option<Sender>>,
}

impl Sticky {
    fn take(&self) -> Option<Sender> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn put(&self, sender: Sender) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.is_none() {
            *idle = Some(sender);
        }
    }
}

impl Proxy {
    /// Sends `request` over the client connection's own upstream
    /// connection, opening one when there is none or it has closed. A
    /// request the closed connection never took is sent again on a new one.
    pub(super) async fn send_sticky(
        &self,
        sticky: &Arc<Sticky>,
        request: Request<Counted<Incoming>>,
    ) -> Result<Response<Incoming>, Failure> {
        let mut request = request;
        if let Some(mut sender) = sticky.take() {
            if sender.ready().await.is_ok() {
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        sticky.put(sender);
                        return Ok(response);
                    }
                    Err(mut e) => match e.take_message() {
                        // Not sent: the upstream closed the idle connection.
                        Some(unsent) => request = unsent,
                        None => return Err(Failure::Http(e.into_error())),
                    },
                }
            }
        }
        // Boxed: a connect happens once per client connection, and its
        // future (TLS included) would otherwise swell every request's.
        let mut sender = Box::pin(self.open_upstream(false)).await?;
        let response = sender.send_request(request).await.map_err(Failure::Http)?;
        sticky.put(sender);
        Ok(response)
    }
}
