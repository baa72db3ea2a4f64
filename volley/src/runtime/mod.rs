//! One driver for both sides: a task that owns a UDP socket and a sans-IO core, and runs the
//! loop quinn's `ConnectionDriver` and ours share — batched receive into the core, batched send
//! of what it queued, its timers on tokio's clock, and the session handles' commands.
//!
//! What differs between a server and a client endpoint is a [`Side`]: how a datagram reaches the
//! core (one `ServerEndpoint`, or the client connection that claims it), what happens after a
//! flush (events to the application), and the side's own wake-up source (a server's control
//! channel, load changes and precise timer; a client's new connects). Sessions depend on neither
//! side, only on their [`crate::session::Link`] and the command channel this driver reads.
//!
//! The loop, per wake-up: flush what the core queued (a batch per `sendmmsg`) and let the side
//! act on it, repeated while that queues more (bounded); stop if the side is done; wait for the
//! socket, a command, the side's wake-up or the next deadline; on the socket, read up to
//! [`RECV_ROUNDS`] batches (`recvmmsg`), the side's first-pass datagrams of each batch before the
//! rest (a server serves sessions' DATA and INITs before PROBEs, PROTOCOL.md §7.7); then fire the
//! core's timers if due, checking the clock itself rather than trusting which branch woke it.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::debug;
use volley_proto::Transmit;

use crate::session::Cmd;
use crate::socket::{now, sleep_until, transient};
use crate::udp::{self, RecvBatch, SendBatch};

/// Receive batches read per wake-up before output is flushed (2 × [`udp::BATCH`] datagrams):
/// one busy socket cannot starve timers or transmits.
pub(crate) const RECV_ROUNDS: usize = 2;

/// Rounds of flush-then-act per wake-up: acting on a flush (events, a blocked session's queue)
/// can queue more; anything beyond waits for the next wake-up.
const FLUSH_ROUNDS: usize = 4;

/// Whether the driver goes on after a side's wake-up.
pub(crate) enum Flow {
    Continue,
    /// Flush once more, call [`Side::finish`], and end the task.
    Stop,
}

/// What a server or client endpoint adds to the shared loop.
pub(crate) trait Side: Send {
    /// What [`Side::wake`] yields.
    type Wake: Send;

    /// One received datagram from `from`, which arrived on local address `local`. An immediate
    /// answer may be written into `out` (at least `MAX_DATAGRAM_LEN` bytes) and returned.
    fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        local: SocketAddr,
        data: &[u8],
        out: &mut [u8],
    ) -> Option<Transmit>;

    /// Whether `data` is handled in a batch's first pass; the rest follow. Default: all.
    fn first_pass(&self, _data: &[u8]) -> bool {
        true
    }

    /// After each receive burst: whether every round was full (the socket has a backlog).
    fn backlog(&mut self, _now: Instant, _backlog: bool) {}

    /// The next datagram the core has queued, written into `out`.
    fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<Transmit>;

    /// After a flush: events to the application, blocked send queues retried. True when that may
    /// have queued more to send.
    fn after_flush(&mut self, now: Instant) -> bool;

    /// The core's next deadline.
    fn poll_timeout(&mut self, now: Instant) -> Option<Instant>;

    /// Fires every timer due at `now`.
    fn handle_timeout(&mut self, now: Instant);

    /// A session handle's command.
    fn command(&mut self, cmd: Cmd);

    /// Every session handle (and the side's own sender) is gone.
    fn commands_closed(&mut self) {}

    /// The side's own wake-up source; polled alongside the socket, commands and timer.
    fn wake(&mut self) -> impl Future<Output = Self::Wake> + Send;

    /// Acts on what [`Side::wake`] yielded.
    fn on_wake(&mut self, now: Instant, wake: Self::Wake) -> Flow;

    /// Nothing is served and nothing more can come: the driver ends.
    fn done(&self) -> bool {
        false
    }

    /// The driver is ending: the last word to sessions and whoever waits.
    fn finish(&mut self) {}
}

/// The task body: a socket, its side, and the session handles' command channel.
pub(crate) struct Driver<S> {
    socket: UdpSocket,
    local: SocketAddr,
    rx: RecvBatch,
    tx: SendBatch,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    side: S,
}

impl<S: Side> Driver<S> {
    /// On a wildcard bind each datagram's local address is read (the socket must have had
    /// [`udp::enable_local_addr`]). Sends use GSO where the kernel has it; `gro`: receive with
    /// GRO too, where the kernel has it (2 MiB of receive buffers instead of 46 KiB: for servers).
    pub(crate) fn new(
        socket: UdpSocket,
        cmds: mpsc::UnboundedReceiver<Cmd>,
        side: S,
        gro: bool,
    ) -> Self {
        let local = socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let gro = gro && udp::enable_gro(&socket);
        let gso = udp::gso_supported(&socket);
        debug!(%local, gro, gso, "driver starts");
        Self {
            rx: RecvBatch::with_gro(local.ip().is_unspecified(), gro),
            tx: SendBatch::with_gso(gso),
            socket,
            local,
            cmds,
            side,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut cmds_open = true;
        loop {
            self.flush().await;
            if self.side.done() {
                break;
            }
            let deadline = self
                .side
                .poll_timeout(now())
                .map(tokio::time::Instant::from_std);
            let flow = tokio::select! {
                ready = self.socket.readable() => match ready {
                    Ok(()) => {
                        self.receive().await;
                        Flow::Continue
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "socket failed; driver stops");
                        Flow::Stop
                    }
                },
                cmd = self.cmds.recv(), if cmds_open => {
                    match cmd {
                        // Every command already queued, then one flush for all of them.
                        Some(cmd) => {
                            self.side.command(cmd);
                            while let Ok(cmd) = self.cmds.try_recv() {
                                self.side.command(cmd);
                            }
                        }
                        None => {
                            cmds_open = false;
                            self.side.commands_closed();
                        }
                    }
                    Flow::Continue
                }
                wake = self.side.wake() => self.side.on_wake(now(), wake),
                _ = sleep_until(deadline) => Flow::Continue,
            };
            if let Flow::Stop = flow {
                break;
            }
            // Check the clock ourselves rather than trusting that the sleep branch fired.
            let now = now();
            if self.side.poll_timeout(now).is_some_and(|t| t <= now) {
                self.side.handle_timeout(now);
            }
        }
        self.flush().await;
        self.side.finish();
    }

    /// Up to [`RECV_ROUNDS`] batches, each handled first-pass datagrams first.
    async fn receive(&mut self) {
        let mut full_rounds = 0;
        for _ in 0..RECV_ROUNDS {
            match self.rx.recv(&self.socket) {
                Ok(n) => {
                    if n == udp::BATCH {
                        full_rounds += 1;
                    }
                    let now = now();
                    for pass in [true, false] {
                        for (meta, data) in self.rx.iter() {
                            if self.side.first_pass(data) != pass {
                                continue;
                            }
                            if self.tx.is_full() {
                                self.tx.flush(&self.socket).await;
                            }
                            let local = udp::local_of(self.local, &meta);
                            if let Some(t) =
                                self.side
                                    .handle(now, meta.from, local, data, self.tx.slot())
                            {
                                let source = udp::source_ip(self.local, t.source);
                                self.tx.commit(t.size, t.destination, source);
                            }
                        }
                    }
                }
                Err(e) if transient(&e) => {
                    if e.kind() == std::io::ErrorKind::WouldBlock {
                        break;
                    }
                }
                Err(e) => {
                    debug!(error = %e, "recv failed");
                    break;
                }
            }
        }
        self.side.backlog(now(), full_rounds == RECV_ROUNDS);
        self.tx.flush(&self.socket).await;
    }

    /// Sends everything the core queued, a batch per system call, and lets the side act on it.
    async fn flush(&mut self) {
        for _ in 0..FLUSH_ROUNDS {
            let now = now();
            loop {
                if self.tx.is_full() {
                    self.tx.flush(&self.socket).await;
                }
                let Some(t) = self.side.poll_transmit(now, self.tx.slot()) else {
                    break;
                };
                let source = udp::source_ip(self.local, t.source);
                self.tx.commit(t.size, t.destination, source);
            }
            self.tx.flush(&self.socket).await;
            if !self.side.after_flush(now) {
                break;
            }
        }
    }
}
