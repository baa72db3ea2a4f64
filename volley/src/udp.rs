//! Batched UDP: up to [`BATCH`] datagrams per system call in each direction (`recvmmsg`,
//! `sendmmsg`), through `nix`'s safe wrappers, with each datagram's local address
//! (`IP_PKTINFO`/`IPV6_RECVPKTINFO`) so that a server bound to a wildcard address answers from the
//! address the client reached — the one its cookies and sessions are bound to (PROTOCOL.md §7.1).
//!
//! Where the kernel has them, segmentation offload too (as quinn-udp does): a run of
//! equal-sized datagrams to one destination goes down the stack as one UDP GSO send
//! (`UDP_SEGMENT`), and a socket with UDP GRO (`UDP_GRO`) receives a coalesced run as one buffer,
//! which [`RecvBatch::iter`] splits back into datagrams. On loopback the two together carry a
//! burst through the stack once instead of once per datagram.
//!
//! Crate-private; the lab's bare echo and load generator, which must batch exactly as the
//! drivers do for a fair comparison, reach it as `volley::unstable::udp` (outside semver).
//! Linux only, like the rest of the runtime's socket handling. The buffers are
//! allocated once per driver; the `mmsghdr` arrays are built per call (a few KiB): nix's are not
//! `Send` (a driver's future must be), and the kernel rewrites each header's address and control
//! lengths, which nix offers no way to reset for reuse.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};

use nix::libc;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg,
    sendmmsg, setsockopt, sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use volley_proto::MAX_DATAGRAM_LEN;

/// Datagrams per system call, each way (quinn-udp uses the same figure for `recvmmsg`).
pub const BATCH: usize = 32;

/// A receive slot is one byte larger than any datagram we accept, so that oversized datagrams
/// are seen as oversized rather than silently truncated to a valid length.
const SLOT: usize = MAX_DATAGRAM_LEN + 1;

/// A receive slot with GRO holds the largest coalesced buffer the kernel delivers (64 KiB): a
/// smaller one would truncate a run.
const GRO_SLOT: usize = 1 << 16;

/// Most datagrams in one GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
const MAX_SEGMENTS: usize = 64;

/// Turns on UDP GRO: the kernel may deliver a run of datagrams from one sender as one buffer.
/// False where the kernel does not have it (the socket then works as before).
pub fn enable_gro(socket: &UdpSocket) -> bool {
    setsockopt(&socket.as_fd(), sockopt::UdpGroSegment, &true).is_ok()
}

/// Whether the kernel takes UDP GSO sends on this socket (`UDP_SEGMENT`; nothing is changed).
pub fn gso_supported(socket: &UdpSocket) -> bool {
    setsockopt(&socket.as_fd(), sockopt::UdpGsoSegment, &0).is_ok()
}

/// Asks the kernel for each datagram's local address; needed only on wildcard binds (on a
/// specific address every datagram arrives on it).
pub fn enable_local_addr(socket: &UdpSocket) -> io::Result<()> {
    let local = socket.local_addr()?;
    if !local.ip().is_unspecified() {
        return Ok(());
    }
    match local {
        SocketAddr::V4(_) => setsockopt(&socket.as_fd(), sockopt::Ipv4PacketInfo, &true)?,
        SocketAddr::V6(_) => setsockopt(&socket.as_fd(), sockopt::Ipv6RecvPacketInfo, &true)?,
    }
    Ok(())
}

/// One received datagram: its length, sender and the local IP it arrived on (when known).
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    /// Bytes received (one more than [`volley_proto::MAX_DATAGRAM_LEN`]: oversized, truncated).
    pub len: usize,
    /// With GRO, the size of each datagram coalesced into these bytes (the last may be
    /// shorter); equal to `len` otherwise.
    pub stride: usize,
    /// The sender.
    pub from: SocketAddr,
    /// The local IP it arrived on, on a socket [`enable_local_addr`] was called for.
    pub local_ip: Option<IpAddr>,
}

/// Receive buffers for one batch.
pub struct RecvBatch {
    data: Vec<u8>,
    meta: Vec<Meta>,
    /// Whether to ask for local addresses (wildcard binds).
    local_addr: bool,
    /// Bytes per slot: [`SLOT`], or 64 KiB with GRO.
    slot: usize,
    gro: bool,
}

impl RecvBatch {
    /// Buffers for [`BATCH`] datagrams; `local_addr`: read each datagram's local address (the
    /// socket must have had [`enable_local_addr`]).
    #[cfg_attr(not(feature = "unstable"), allow(dead_code))]
    pub fn new(local_addr: bool) -> Self {
        Self::with_gro(local_addr, false)
    }

    /// Like [`RecvBatch::new`], for a socket [`enable_gro`] succeeded on when `gro` (64 KiB per
    /// slot, 2 MiB in all).
    pub fn with_gro(local_addr: bool, gro: bool) -> Self {
        let slot = if gro { GRO_SLOT } else { SLOT };
        Self {
            data: vec![0; BATCH * slot],
            meta: Vec::with_capacity(BATCH),
            local_addr,
            slot,
            gro,
        }
    }

    /// Buffers for `slots` datagrams (1..=[`BATCH`]) of any size a UDP datagram can have
    /// (64 KiB each), no GRO, no local addresses: for sockets that face applications and
    /// backends, whose datagrams a session carries in fragments (PROTOCOL.md §5.7).
    pub fn large(slots: usize) -> Self {
        let slots = slots.clamp(1, BATCH);
        Self {
            data: vec![0; slots * GRO_SLOT],
            meta: Vec::with_capacity(slots),
            local_addr: false,
            slot: GRO_SLOT,
            gro: false,
        }
    }

    /// Bytes of buffer it holds.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.data.len()
    }

    /// The datagrams of the last [`RecvBatch::recv`], a GRO buffer split back into its
    /// datagrams (each with its own `len`).
    pub fn iter(&self) -> impl Iterator<Item = (Meta, &[u8])> + '_ {
        self.meta.iter().enumerate().flat_map(move |(i, m)| {
            let bytes = &self.data[i * self.slot..i * self.slot + m.len.min(self.slot)];
            bytes.chunks(m.stride.max(1)).map(move |d| {
                let meta = Meta {
                    len: d.len(),
                    stride: d.len(),
                    ..*m
                };
                (meta, d)
            })
        })
    }

    /// Reads up to [`BATCH`] buffers (as many as it has slots) without blocking (with GRO, each may hold several
    /// datagrams); `WouldBlock` when there are none. Returns the buffers read.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.meta.clear();
        let (local_addr, gro, slot) = (self.local_addr, self.gro, self.slot);
        let Self { data, meta, .. } = self;
        socket.try_io(Interest::READABLE, || {
            let cmsg = (local_addr || gro).then(|| nix::cmsg_space!(libc::in6_pktinfo, i32));
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(data.len() / slot, cmsg);
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = data
                .chunks_mut(slot)
                .map(|c| [IoSliceMut::new(c)])
                .collect();
            let received = recvmmsg(
                socket.as_raw_fd(),
                &mut headers,
                iovs.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(io::Error::from)?;
            for msg in received {
                let Some(from) = msg.address.as_ref().and_then(to_std) else {
                    continue;
                };
                let mut local_ip = None;
                let mut stride = msg.bytes;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        match c {
                            ControlMessageOwned::Ipv4PacketInfo(i) => {
                                local_ip = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                                    i.ipi_addr.s_addr,
                                ))));
                            }
                            ControlMessageOwned::Ipv6PacketInfo(i) => {
                                local_ip = Some(IpAddr::V6(Ipv6Addr::from(i.ipi6_addr.s6_addr)));
                            }
                            ControlMessageOwned::UdpGroSegments(size) if size > 0 => {
                                stride = size as usize;
                            }
                            _ => {}
                        }
                    }
                }
                meta.push(Meta {
                    len: msg.bytes,
                    stride,
                    from,
                    local_ip,
                });
            }
            Ok(meta.len())
        })
    }
}

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// Datagrams waiting to be sent, in order: each with its destination and, on a wildcard bind,
/// the local address to send from.
pub struct SendBatch {
    data: Vec<u8>,
    items: Vec<(usize, SocketAddr, Option<IpAddr>)>,
    /// The next free byte of `data`.
    end: usize,
    /// Whether runs to one destination go as one GSO send.
    gso: bool,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self {
            data: vec![0; BATCH * MAX_DATAGRAM_LEN],
            items: Vec::with_capacity(BATCH),
            end: 0,
            gso: false,
        }
    }
}

impl SendBatch {
    /// A batch that sends runs of equal-sized datagrams to one destination as one GSO send,
    /// for a socket [`gso_supported`] said yes for (turned off again by itself if the kernel
    /// refuses a GSO send, e.g. on a device without checksum offload).
    pub fn with_gso(gso: bool) -> Self {
        Self {
            gso,
            ..Self::default()
        }
    }

    /// Whether no more datagrams fit (send first).
    pub fn is_full(&self) -> bool {
        self.items.len() >= BATCH
    }

    /// The buffer the next datagram is written into (by the protocol core, in place).
    pub fn slot(&mut self) -> &mut [u8] {
        &mut self.data[self.end..self.end + MAX_DATAGRAM_LEN]
    }

    /// Commits the first `len` bytes of [`SendBatch::slot`] as a datagram to `to`, sent from
    /// `source` when given (the socket is bound to a wildcard address and the datagram answers
    /// one that arrived on a specific address).
    pub fn commit(&mut self, len: usize, to: SocketAddr, source: Option<IpAddr>) {
        self.items.push((len, to, source));
        self.end += len;
    }

    /// Sends everything queued, waiting for the socket to be writable when its buffer is full.
    /// A datagram the kernel refuses (a route error) is dropped and logged, as a lost datagram.
    pub async fn flush(&mut self, socket: &UdpSocket) {
        let mut sent = 0;
        let mut offset = 0;
        while sent < self.items.len() {
            // Straight to the kernel (MSG_DONTWAIT): tokio's readiness for a socket that has
            // not yet been polled writable would turn the first send into a wait for the
            // reactor. Only a real EAGAIN clears the readiness and waits.
            let gso = self.gso;
            match send_run(
                socket,
                &self.data[offset..self.end],
                &self.items[sent..],
                gso,
            ) {
                Ok(n) => {
                    offset += self.items[sent..sent + n]
                        .iter()
                        .map(|i| i.0)
                        .sum::<usize>();
                    sent += n;
                }
                Err(e)
                    if gso
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOPROTOOPT)
                        ) =>
                {
                    tracing::debug!(error = %e, "GSO send refused: sending one by one from now on");
                    self.gso = false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = socket.try_io(Interest::WRITABLE, || Err::<(), _>(e));
                    if socket.writable().await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let (len, to, _) = self.items[sent];
                    tracing::debug!(%to, error = %e, "send failed");
                    offset += len;
                    sent += 1;
                }
            }
        }
        self.items.clear();
        self.end = 0;
    }
}

/// One `sendmmsg` over the leading run of `items` that share a source address (a control
/// message applies to a whole call). With `gso`, consecutive items of one size to one
/// destination are one message with `UDP_SEGMENT` (the kernel splits it); the call's messages
/// then share that segment size, each either such a run or one datagram no larger. Returns how
/// many items were sent.
fn send_run(
    socket: &UdpSocket,
    data: &[u8],
    items: &[(usize, SocketAddr, Option<IpAddr>)],
    gso: bool,
) -> io::Result<usize> {
    let source = items[0].2;
    let run = items.iter().take_while(|i| i.2 == source).count();
    let items = &items[..run];
    // Messages: (first item, items in it, bytes).
    let mut messages: Vec<(usize, usize, usize)> = Vec::with_capacity(run);
    let mut segment = None;
    let mut i = 0;
    while i < items.len() {
        let (len, to, _) = items[i];
        let mut count = 1;
        let mut bytes = len;
        if gso {
            while i + count < items.len()
                && count < MAX_SEGMENTS
                && items[i + count].1 == to
                && items[i + count].0 <= len
                && bytes + items[i + count].0 <= GRO_SLOT - 1024
            {
                bytes += items[i + count].0;
                count += 1;
                if items[i + count - 1].0 < len {
                    break; // a shorter datagram ends a run
                }
            }
            // Every message of the call shares one segment size.
            let size = *segment.get_or_insert(len);
            if (count > 1 && len != size) || (count == 1 && len > size) {
                break;
            }
        }
        messages.push((i, count, bytes));
        i += count;
    }
    let segmented = messages.iter().any(|m| m.1 > 1);
    let mut slices: Vec<[IoSlice<'_>; 1]> = Vec::with_capacity(messages.len());
    let mut addrs: Vec<Option<SockaddrStorage>> = Vec::with_capacity(messages.len());
    let mut at = 0;
    for &(first, _, bytes) in &messages {
        slices.push([IoSlice::new(&data[at..at + bytes])]);
        addrs.push(Some(SockaddrStorage::from(items[first].1)));
        at += bytes;
    }
    let v4;
    let v6;
    let mut cmsgs: Vec<ControlMessage<'_>> = match source {
        None => Vec::new(),
        Some(IpAddr::V4(ip)) => {
            v4 = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(ip).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            vec![ControlMessage::Ipv4PacketInfo(&v4)]
        }
        Some(IpAddr::V6(ip)) => {
            v6 = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: ip.octets(),
                },
                ipi6_ifindex: 0,
            };
            vec![ControlMessage::Ipv6PacketInfo(&v6)]
        }
    };
    let segment_size = segment.unwrap_or(0) as u16;
    if segmented {
        cmsgs.push(ControlMessage::UdpGsoSegments(&segment_size));
    }
    // Exactly the space of the messages present: nix hands the kernel the whole buffer as
    // control data, and unused space would read as a malformed header (EINVAL).
    let cmsg_buf = match (source, segmented) {
        (None, false) => None,
        (None, true) => Some(nix::cmsg_space!(u16)),
        (Some(IpAddr::V4(_)), false) => Some(nix::cmsg_space!(libc::in_pktinfo)),
        (Some(IpAddr::V4(_)), true) => Some(nix::cmsg_space!(libc::in_pktinfo, u16)),
        (Some(IpAddr::V6(_)), false) => Some(nix::cmsg_space!(libc::in6_pktinfo)),
        (Some(IpAddr::V6(_)), true) => Some(nix::cmsg_space!(libc::in6_pktinfo, u16)),
    };
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(messages.len(), cmsg_buf);
    let sent = sendmmsg(
        socket.as_raw_fd(),
        &mut headers,
        slices.iter(),
        &addrs,
        &cmsgs,
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    Ok(messages.iter().take(sent.count()).map(|m| m.1).sum())
}

/// The local address a datagram arrived on: the bound address, with the IP the kernel reported
/// when the socket is bound to a wildcard address.
pub fn local_of(bound: SocketAddr, meta: &Meta) -> SocketAddr {
    match meta.local_ip {
        Some(ip) if bound.ip().is_unspecified() => SocketAddr::new(ip, bound.port()),
        _ => bound,
    }
}

/// The source IP to set on a datagram the core asked to send from `source`: only on a wildcard
/// bind (otherwise the socket's own address is already right).
pub fn source_ip(bound: SocketAddr, source: Option<SocketAddr>) -> Option<IpAddr> {
    source
        .filter(|_| bound.ip().is_unspecified())
        .map(|s| s.ip())
}

/// Batched UDP on real loopback sockets: `sendmmsg`/`recvmmsg`, and GSO/GRO where the kernel
/// has them — every datagram arrives whole, once, in order, whatever the kernel coalesced.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::timeout;

    use super::*;

    /// Sends `sizes` from a batch to a receiver and returns what arrived and in how many buffers.
    async fn burst(sizes: &[usize], gso: bool, gro: bool) -> (Vec<Vec<u8>>, usize, bool, bool) {
        let rx_sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx_sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let gro = gro && enable_gro(&rx_sock);
        let gso = gso && gso_supported(&tx_sock);
        let to = rx_sock.local_addr().unwrap();
        let mut tx = SendBatch::with_gso(gso);
        for (i, &n) in sizes.iter().enumerate() {
            let slot = tx.slot();
            for (j, b) in slot[..n].iter_mut().enumerate() {
                *b = (i * 7 + j) as u8;
            }
            tx.commit(n, to, None);
        }
        tx.flush(&tx_sock).await;
        let mut rx = RecvBatch::with_gro(false, gro);
        let mut got = Vec::new();
        let mut buffers = 0;
        while got.len() < sizes.len() {
            timeout(Duration::from_secs(5), rx_sock.readable())
                .await
                .expect("the burst arrives")
                .unwrap();
            match rx.recv(&rx_sock) {
                Ok(n) => {
                    buffers += n;
                    got.extend(rx.iter().map(|(m, d)| {
                        assert_eq!(m.len, d.len());
                        d.to_vec()
                    }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        (got, buffers, gso, gro)
    }

    fn expected(sizes: &[usize]) -> Vec<Vec<u8>> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 7 + j) as u8).collect())
            .collect()
    }

    #[tokio::test]
    async fn gso_and_gro_carry_a_burst_whole_once_and_in_order() {
        // Runs of equal sizes (one GSO send each), a shorter one closing a run, sizes that change.
        let sizes: Vec<usize> = std::iter::repeat_n(1200, 12)
            .chain([700])
            .chain(std::iter::repeat_n(64, 10))
            .chain([1452, 1, 1452, 1452])
            .collect();
        for (gso, gro) in [(false, false), (true, false), (false, true), (true, true)] {
            let (got, buffers, gso_on, gro_on) = burst(&sizes, gso, gro).await;
            assert_eq!(got, expected(&sizes), "gso {gso_on}, gro {gro_on}");
            if gso_on && gro_on {
                // On loopback a GSO send reaches a GRO socket as one buffer.
                assert!(
                    buffers < sizes.len(),
                    "{buffers} buffers for {} datagrams",
                    sizes.len()
                );
            } else if !gro_on {
                assert_eq!(buffers, sizes.len());
            }
        }
    }
}
