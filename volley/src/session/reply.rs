//! The future of one request on a client session ([`ReplyFuture`], what
//! [`Session::request`](super::Session::request) returns): it resolves to the reply's bytes or
//! to why there are none, and forgets the request when dropped first.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use volley_proto::{CloseCode, CloseReason};

use super::calls::Outcome;
use super::link::{Cmd, Link, Status};
use crate::error::Error;

/// The reply to one request ([`Session::request`](super::Session::request)): resolves to the
/// reply's bytes, or to why there are none — [`Error::RequestDropped`],
/// [`Error::RequestRefused`], [`Error::RequestLost`] (the session ended or lost its server),
/// and at once [`Error::TooManyRequests`], [`Error::TooLarge`] or [`Error::Closed`].
///
/// The request is sent when it is made, not when this is first polled. Cancel safe: dropping
/// it before it resolves forgets the request — its id is free again and a reply that still comes
/// is counted and dropped — so a timeout around it (tokio's, tower's) costs nothing more.
/// Nothing is retransmitted: put a timeout around it, since a lost request or reply gets no
/// answer at all. `Send`, `Unpin` and `'static`: it borrows nothing from its session, so a
/// `tower::Service` can return it as its future.
#[must_use = "the request is forgotten when its reply future is dropped"]
#[derive(Debug)]
pub struct ReplyFuture {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    /// Refused before it was sent.
    Failed(Option<Error>),
    Waiting {
        id: u32,
        rx: oneshot::Receiver<Outcome>,
        link: Arc<Link>,
        cmd: mpsc::UnboundedSender<Cmd>,
        session: u32,
        status: watch::Receiver<Status>,
    },
    Done,
}

impl ReplyFuture {
    /// A request refused at once.
    pub(super) fn failed(e: Error) -> Self {
        Self {
            inner: Inner::Failed(Some(e)),
        }
    }

    /// Request `id`, sent on session `session`, its outcome to come through `rx`.
    pub(super) fn waiting(
        id: u32,
        rx: oneshot::Receiver<Outcome>,
        link: Arc<Link>,
        cmd: mpsc::UnboundedSender<Cmd>,
        session: u32,
        status: watch::Receiver<Status>,
    ) -> Self {
        Self {
            inner: Inner::Waiting {
                id,
                rx,
                link,
                cmd,
                session,
                status,
            },
        }
    }

    /// The request's id on its session, once sent (PROTOCOL.md §5.8); None for a request
    /// refused at once or after the future resolved.
    pub fn id(&self) -> Option<u32> {
        match &self.inner {
            Inner::Waiting { id, .. } => Some(*id),
            _ => None,
        }
    }
}

impl Future for ReplyFuture {
    type Output = Result<Bytes, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let outcome = match &mut this.inner {
            Inner::Failed(e) => Err(e.take().unwrap_or(Error::InvalidArgument(
                "reply future polled after it resolved",
            ))),
            Inner::Waiting { rx, status, .. } => match Pin::new(rx).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(outcome)) => outcome,
                // The call ended with its session, which says why.
                Poll::Ready(Err(_)) => Err(Error::RequestLost(
                    status
                        .borrow()
                        .closed
                        .unwrap_or(CloseReason::Local(CloseCode::NORMAL)),
                )),
            },
            Inner::Done => Err(Error::InvalidArgument(
                "reply future polled after it resolved",
            )),
        };
        this.inner = Inner::Done;
        Poll::Ready(outcome)
    }
}

impl Drop for ReplyFuture {
    fn drop(&mut self) {
        if let Inner::Waiting {
            id,
            link,
            cmd,
            session,
            ..
        } = &self.inner
            && link.calls().cancel(*id)
            && link.forget(*id)
        {
            // The session forgets it at its next drain; tell the driver there is one.
            let _ = cmd.send(Cmd::Ready { id: *session });
        }
    }
}
