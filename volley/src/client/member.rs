//! One connection on a client driver ([`Member`]): the protocol [`Connection`] and what connects
//! it to its application — the session handle's queues ([`Link`]), its status and the
//! [`ConnectReport`] built from the connection's events.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;
use tracing::{debug, info};
use volley_proto::{ClientEvent, CloseCode, CloseReason, ConnectError, Connection, SendError};

use super::open::Parts;
use crate::error::Error;
use crate::report::{ConnectReport, OfferFate, OfferSeen};
use crate::session::{Core, Drained, Incoming, Link, LoadReport, Outbound, Status};

/// One connection of a group: the main one of a connect, or an `NBest` sibling.
pub(super) struct Member {
    pub(super) id: u32,
    pub(super) conn: Connection,
    /// Established (Ok) or failed for good (Err), once known.
    pub(super) outcome: Option<Result<(), ConnectError>>,
    /// Handed out with the ready message.
    pub(super) parts: Option<Parts>,
    report: Arc<Mutex<ConnectReport>>,
    pub(super) link: Arc<Link>,
    /// The send queue holds datagrams the connection could not take yet (racing again after a
    /// failover, or its queue full): retried at every wake-up.
    pub(super) blocked: bool,
    status: watch::Sender<Status>,
    /// Whether this member's race was decided at least once (the main one: siblings may start).
    pub(super) selected: bool,
    /// Whether its group's caller has been told how it went (it may leave the driver once done).
    pub(super) reported: bool,
    /// The deadline last entered in the timer heap.
    pub(super) deadline: Option<Instant>,
    /// The route keys last entered in the index.
    pub(super) keys: super::demux::Keys,
    /// Touched since the last flush: its transmits, events and timer are to be taken.
    pub(super) dirty: bool,
    /// Listed among the driver's blocked members.
    pub(super) in_blocked: bool,
    /// When the load report last handed to the handle arrived.
    report_at: Option<Instant>,
}

fn lock(report: &Mutex<ConnectReport>) -> MutexGuard<'_, ConnectReport> {
    // The lock guards plain data; a panic elsewhere cannot leave it inconsistent.
    report.lock().unwrap_or_else(|e| e.into_inner())
}

impl Member {
    /// A member for `conn`, whose session handle will first see `remote` as its peer.
    pub(super) fn new(
        id: u32,
        conn: Connection,
        remote: SocketAddr,
        report: ConnectReport,
    ) -> Self {
        let report = Arc::new(Mutex::new(report));
        let link = Arc::new(Link::default());
        let (status, status_rx) = watch::channel(Status {
            remote,
            closed: None,
        });
        Self {
            id,
            conn,
            outcome: None,
            parts: Some(Parts {
                link: Arc::clone(&link),
                status: status_rx,
                report: Arc::clone(&report),
            }),
            report,
            link,
            blocked: false,
            status,
            selected: false,
            reported: false,
            deadline: None,
            keys: [None; 3],
            dirty: false,
            in_blocked: false,
            report_at: None,
        }
    }

    /// Moves the handle's queued datagrams and requests into the connection (and tells it of
    /// the requests whose callers gave up), as many as it takes now. True when any moved.
    pub(super) fn drain(&mut self) -> bool {
        let mut core = ConnCore {
            conn: &mut self.conn,
            now: crate::socket::now(),
        };
        let (drained, moved) = self.link.drain(&mut core);
        self.blocked = drained == Drained::Blocked;
        moved
    }

    /// The session is over for its handle: it sees `reason` unless it already saw another.
    pub(super) fn end(&self, reason: CloseReason) {
        // The reason first: the calls the link's close fails read it.
        self.status.send_modify(|s| {
            s.closed.get_or_insert(reason);
        });
        self.link.close();
    }

    /// Drains the connection's events into the report, status and channels.
    pub(super) fn events(&mut self) {
        let stats = self.conn.stats();
        let mut report = lock(&self.report);
        report.stats = stats;
        while let Some(event) = self.conn.poll_event() {
            match event {
                ClientEvent::RaceStarted { .. } => report.offers.clear(),
                ClientEvent::Collected {
                    server,
                    answer_time,
                    load,
                } => report.offers.push(OfferSeen {
                    server,
                    answer_time,
                    load: Some(load),
                    fate: OfferFate::Collected,
                }),
                ClientEvent::Selected {
                    server,
                    answer_time,
                    load,
                } => {
                    self.selected = true;
                    match report.offers.iter_mut().find(|o| o.server == server) {
                        Some(o) => o.fate = OfferFate::Selected,
                        None => report.offers.push(OfferSeen {
                            server,
                            answer_time,
                            load: Some(load),
                            fate: OfferFate::Selected,
                        }),
                    }
                    report.answer_time = Some(answer_time);
                    report.load = Some(load);
                }
                ClientEvent::LateOffer {
                    server,
                    answer_time,
                    load,
                } => {
                    report.offers.push(OfferSeen {
                        server,
                        answer_time,
                        load: Some(load),
                        fate: OfferFate::Late,
                    });
                    report.late_offers += 1;
                }
                ClientEvent::Redirected { from, added } => {
                    info!(%from, ?added, "server refused and redirected us");
                    report.redirected_to.extend(added);
                }
                ClientEvent::Established {
                    server,
                    handshake_time,
                    failover_from,
                } => {
                    report.server = Some(server);
                    report.handshake_time = Some(handshake_time);
                    self.status.send_modify(|s| s.remote = server);
                    if let Some(from) = failover_from {
                        // The new server has reported nothing yet.
                        self.link.calls().forget_learned();
                        report.failovers += 1;
                        info!(%from, to = %server, "failover: session moved to a new server");
                    }
                    self.outcome.get_or_insert(Ok(()));
                }
                ClientEvent::Datagram(data) => {
                    // A full queue means the application is slow: drop, as UDP would.
                    let delivered = self
                        .link
                        .deliver(Incoming {
                            data,
                            guard: None,
                            wire: None,
                        })
                        .is_ok();
                    if !delivered {
                        debug!("application slow: datagram dropped");
                    }
                    self.link.count_received(delivered, None);
                }
                ClientEvent::Reply(reply) => {
                    let outcome = Error::from_status(reply.status).map(|()| reply.body);
                    if !self.link.calls().complete(reply.id, outcome) {
                        // Its caller gave up a moment ago (the session had not forgotten it).
                        debug!(
                            id = reply.id,
                            "reply for a request no longer awaited: dropped"
                        );
                    }
                }
                ClientEvent::RequestsLost { ids, reason } => {
                    debug!(
                        requests = ids.len(),
                        ?reason,
                        "requests lost with their session"
                    );
                    for id in ids {
                        self.link
                            .calls()
                            .complete(id, Err(Error::RequestLost(reason)));
                    }
                }
                ClientEvent::ServerLost {
                    server,
                    reason: reason @ CloseReason::Remote(CloseCode::REVOKED),
                } => {
                    info!(%server, "session revoked: the server's allow-list no longer holds this client's key");
                    report.losses.push((server, reason));
                }
                ClientEvent::ServerLost { server, reason } => {
                    info!(%server, ?reason, "server lost; racing the rest of the pool");
                    report.losses.push((server, reason));
                }
                ClientEvent::Ejected { server, length } => {
                    info!(%server, ?length, "server failed: ejected from races");
                }
                ClientEvent::Failed(e) => {
                    self.outcome.get_or_insert(Err(e));
                    self.end(match e {
                        ConnectError::Refused(_) => CloseReason::Refused,
                        // The server said why: its allow-list no longer holds this key.
                        ConnectError::Revoked(_) => CloseReason::Remote(CloseCode::REVOKED),
                        _ => CloseReason::IdleTimeout,
                    });
                }
                ClientEvent::Closed(reason) => self.end(reason),
                _ => {}
            }
        }
        // A new report: from a reply, or from one that came too late for its caller.
        if let Some((report, at)) = self.conn.load_report()
            && self.report_at != Some(at)
        {
            self.report_at = Some(at);
            self.link
                .calls()
                .set_learned(Some(LoadReport::new(report, at)), self.conn.reply_time());
        }
    }
}

/// A client connection as the core a handle's queue drains into.
struct ConnCore<'a> {
    conn: &'a mut Connection,
    now: std::time::Instant,
}

impl Core for ConnCore<'_> {
    fn forget(&mut self, id: u32) {
        self.conn.forget_request(id);
    }

    fn push(&mut self, item: Outbound) -> Result<(), (SendError, Outbound)> {
        match item {
            Outbound::Datagram(d) => self
                .conn
                .send_datagram_owned(d)
                .map_err(|(e, d)| (e, Outbound::Datagram(d))),
            Outbound::Request { id, body } => self
                .conn
                .send_request_with_id(self.now, id, body)
                .map_err(|(e, body)| (e, Outbound::Request { id, body })),
            reply @ Outbound::Reply { .. } => Err((SendError::WrongDirection, reply)),
        }
    }
}
