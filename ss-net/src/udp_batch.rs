//! Batched UDP: many datagrams per system call in both directions, through `quinn-udp`.
//!
//! - [`BatchReceiver`] takes every datagram waiting on a socket with one `recvmmsg(2)` (up to
//!   [`BATCH`] buffers), and splits a GRO buffer (several same-size datagrams of one sender the kernel
//!   coalesced, `UDP_GRO`) back into its datagrams: [`BatchReceiver::datagrams`] yields each one with
//!   its sender, in the order they arrived. Its buffers are allocated once and reused; it starts with
//!   one buffer and doubles up to its maximum only when a receive fills all it has, so a quiet socket
//!   costs what a plain receive buffer does.
//! - [`BatchSender`] collects datagrams (written straight into its buffer, e.g. sealed there) and sends
//!   them with GSO (`UDP_SEGMENT`): a run of consecutive datagrams to one destination, all the size of
//!   the first except perhaps a shorter last one, leaves in one `sendmsg(2)`; runs are of datagrams up
//!   to 1,452 bytes (beyond, a path MTU of 1,500 bytes would not take them). Anything else, a kernel
//!   without GSO, and a run the kernel refuses is sent one datagram per call (a run whose segments
//!   exceed the path MTU is refused with EMSGSIZE on Linux 6.x, and with EINVAL on older kernels, after
//!   which `quinn-udp` turns GSO off for the process, as after EIO). Each datagram's outcome is
//!   reported on its own.
//!
//! `quinn-udp`'s socket state is built once per process on a scratch socket: building it on our own
//! sockets would also set QUIC's options on them (no fragmentation, packet info), and a relay must still
//! send datagrams bigger than the path MTU (large DNS answers) as the kernel fragments them. Receiving
//! needs nothing of that state; our sockets only get `UDP_GRO` turned on (where Linux has it).

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::OnceLock;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

/// Most buffers one receive fills (`quinn-udp`'s batch: 32 on Linux, 1 where there is no `recvmmsg`).
pub const BATCH: usize = quinn_udp::BATCH_SIZE;
/// Size of each receive buffer: the largest UDP payload, and the largest GRO buffer.
pub const MAX_DATAGRAM: usize = 65_535;
/// Most bytes one GSO send carries (the UDP payload limit of IPv4, less a margin for IP options).
const MAX_GSO_BYTES: usize = 65_000;
/// Most segments of one GSO send (the kernel's `UDP_MAX_SEGMENTS`).
const MAX_GSO_SEGMENTS: usize = 64;
/// Largest datagram sent in a GSO run: an IPv6 datagram on a 1,500-byte MTU. A segment over the path
/// MTU makes the kernel refuse the whole run (costing a failed send; on kernels that say EINVAL,
/// `quinn-udp` then turns GSO off for the process); bigger datagrams go singly and are fragmented.
const MAX_GSO_SEGMENT: usize = 1_452;

/// The process's `quinn-udp` state (GSO support found at start, and turned off after a refusal).
fn state() -> io::Result<&'static UdpSocketState> {
    static STATE: OnceLock<UdpSocketState> = OnceLock::new();
    if let Some(state) = STATE.get() {
        return Ok(state);
    }
    let scratch = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    let state = UdpSocketState::new((&scratch).into())?;
    Ok(STATE.get_or_init(|| state))
}

/// Most datagrams one GSO send carries now: 1 where the kernel has no GSO or refused it once.
pub fn gso_segments() -> usize {
    state().map_or(1, |state| state.max_gso_segments().min(MAX_GSO_SEGMENTS))
}

/// Receive buffer asked for on relay sockets: a stall of the relay's thread (another process had the
/// core) of ~15 ms at 100,000 datagrams/s of 1,200 bytes. The kernel caps it at `net.core.rmem_max`
/// (Debian's default is 208 KiB: raise it for high UDP rates) and counts it only while datagrams wait.
pub const RECEIVE_BUFFER: usize = 2 << 20;

/// Prepares `socket` for a [`BatchReceiver`]: turns on GRO where Linux has it (ignored elsewhere) and
/// asks for a [`RECEIVE_BUFFER`], so datagrams that arrive while the thread is off the CPU wait
/// instead of being dropped.
pub fn prepare(socket: &UdpSocket) {
    #[cfg(target_os = "linux")]
    if let Err(error) = nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::UdpGroSegment, &true)
    {
        debug!(%error, "UDP_GRO not available; datagrams are received one per buffer");
    }
    if let Err(error) = socket2::SockRef::from(socket).set_recv_buffer_size(RECEIVE_BUFFER) {
        debug!(%error, "cannot enlarge the UDP receive buffer");
    }
}

/// Receives datagrams in batches; see the module docs.
#[derive(Debug)]
pub struct BatchReceiver {
    state: &'static UdpSocketState,
    buffers: Vec<Vec<u8>>,
    metas: [RecvMeta; BATCH],
    /// Buffers the last receive filled.
    filled: usize,
    max_buffers: usize,
}

impl BatchReceiver {
    /// A receiver that grows to at most `max_buffers` buffers of [`MAX_DATAGRAM`] bytes (1..=[`BATCH`]).
    /// Fails only if the process's first one cannot make its scratch socket (no descriptor left): then
    /// receiving would fail at once, again and again.
    pub fn new(max_buffers: usize) -> io::Result<BatchReceiver> {
        Ok(BatchReceiver {
            state: state()?,
            buffers: vec![vec![0; MAX_DATAGRAM]],
            metas: [RecvMeta::default(); BATCH],
            filled: 0,
            max_buffers: max_buffers.clamp(1, BATCH),
        })
    }

    /// Waits for datagrams on `socket` and takes all that are waiting, up to the buffers' count;
    /// returns how many buffers were filled (at least one). Errors are the socket's (ICMP errors
    /// reported on a connected socket among them).
    pub async fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.filled = 0;
        let state = self.state;
        let (buffers, metas) = (&mut self.buffers, &mut self.metas);
        let filled = socket
            // ERROR too: a pending socket error (ICMP unreachable on a connected socket) wakes us and
            // is returned now, not when the next datagram happens to arrive.
            .async_io(Interest::READABLE.add(Interest::ERROR), || {
                let mut slices: [IoSliceMut<'_>; BATCH] = std::array::from_fn(|_| IoSliceMut::new(&mut []));
                let count = buffers.len().min(BATCH);
                for (slice, buffer) in slices.iter_mut().zip(buffers.iter_mut()) {
                    *slice = IoSliceMut::new(buffer);
                }
                state.recv(socket.into(), &mut slices[..count], &mut metas[..count])
            })
            .await?;
        self.filled = filled;
        if filled == self.buffers.len() && self.buffers.len() < self.max_buffers {
            // Busy: the next receive may take twice as many at once.
            let grown = (self.buffers.len() * 2).min(self.max_buffers);
            self.buffers.resize_with(grown, || vec![0; MAX_DATAGRAM]);
        }
        Ok(filled)
    }

    /// The datagrams of the last receive, in order, GRO buffers split at their stride.
    pub fn datagrams(&mut self) -> Datagrams<'_> {
        let filled = self.filled;
        Datagrams { buffers: self.buffers.iter_mut().zip(self.metas.iter()).take(filled), current: None }
    }
}

/// One received datagram: its sender and its bytes (which the caller may change in place).
#[derive(Debug)]
pub struct Datagram<'a> {
    /// The sender, as the socket reports it (IPv4 senders of a dual-stack socket in mapped form).
    pub from: SocketAddr,
    /// The datagram.
    pub bytes: &'a mut [u8],
}

/// Iterator over the datagrams of one receive ([`BatchReceiver::datagrams`]).
#[derive(Debug)]
pub struct Datagrams<'a> {
    buffers:
        std::iter::Take<std::iter::Zip<std::slice::IterMut<'a, Vec<u8>>, std::slice::Iter<'a, RecvMeta>>>,
    /// The rest of the GRO buffer being split: sender, bytes left, stride.
    current: Option<(SocketAddr, &'a mut [u8], usize)>,
}

impl<'a> Iterator for Datagrams<'a> {
    type Item = Datagram<'a>;

    fn next(&mut self) -> Option<Datagram<'a>> {
        loop {
            if let Some((from, rest, stride)) = self.current.take() {
                if !rest.is_empty() {
                    let (bytes, tail) = rest.split_at_mut(stride.min(rest.len()));
                    self.current = Some((from, tail, stride));
                    return Some(Datagram { from, bytes });
                }
            }
            let (buffer, meta) = self.buffers.next()?;
            let len = meta.len.min(buffer.len());
            let bytes = &mut buffer[..len];
            if len == 0 {
                // An empty datagram is a datagram too.
                return Some(Datagram { from: meta.addr, bytes });
            }
            let stride = if meta.stride == 0 { len } else { meta.stride };
            self.current = Some((meta.addr, bytes, stride));
        }
    }
}

/// Sends datagrams in GSO runs; `T` is what the caller needs back per datagram with its outcome.
#[derive(Debug)]
pub struct BatchSender<T> {
    bytes: Vec<u8>,
    queued: Vec<Queued<T>>,
}

#[derive(Debug)]
struct Queued<T> {
    to: SocketAddr,
    len: usize,
    tag: T,
    sent: bool,
}

impl<T> Default for BatchSender<T> {
    fn default() -> Self {
        BatchSender { bytes: Vec::with_capacity(MAX_DATAGRAM), queued: Vec::with_capacity(BATCH) }
    }
}

impl<T> BatchSender<T> {
    /// An empty sender.
    pub fn new() -> BatchSender<T> {
        BatchSender::default()
    }

    /// Datagrams queued and not sent yet.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Queues one datagram for `to` that `write` appends to the buffer it is given. If `write` fails
    /// nothing is queued and its error is returned.
    pub fn push<E>(
        &mut self,
        to: SocketAddr,
        tag: T,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.bytes.len();
        if let Err(error) = write(&mut self.bytes) {
            self.bytes.truncate(start);
            return Err(error);
        }
        self.queued.push(Queued { to, len: self.bytes.len() - start, tag, sent: false });
        Ok(())
    }

    /// Sends everything queued on `socket` and empties the queue: yields each datagram's tag, in the
    /// order queued, with whether the kernel took it. Failures are logged at debug level.
    pub async fn send(&mut self, socket: &UdpSocket) -> impl Iterator<Item = (T, bool)> + '_ {
        let max_segments = gso_segments();
        let (mut start, mut offset) = (0, 0);
        while start < self.queued.len() {
            let end = run_end(&self.queued, start, max_segments);
            let run_bytes: usize = self.queued[start..end].iter().map(|queued| queued.len).sum();
            let contents = &self.bytes[offset..offset + run_bytes];
            let (to, segment) = (self.queued[start].to, self.queued[start].len);
            let sent = if end - start > 1 {
                match send_one(socket, to, contents, Some(segment)).await {
                    Ok(()) => true,
                    // Refused (quinn-udp turned GSO off if that was why): one datagram per send.
                    Err(error) => {
                        debug!(%error, segments = end - start, "UDP GSO send failed; sending singly");
                        self.send_singly(socket, start, end, offset).await;
                        start = end;
                        offset += run_bytes;
                        continue;
                    }
                }
            } else {
                log_failure(send_one(socket, to, contents, None).await)
            };
            self.queued[start..end].iter_mut().for_each(|queued| queued.sent = sent);
            start = end;
            offset += run_bytes;
        }
        self.bytes.clear();
        self.queued.drain(..).map(|queued| (queued.tag, queued.sent))
    }

    async fn send_singly(&mut self, socket: &UdpSocket, start: usize, end: usize, mut offset: usize) {
        for queued in &mut self.queued[start..end] {
            let contents = &self.bytes[offset..offset + queued.len];
            queued.sent = log_failure(send_one(socket, queued.to, contents, None).await);
            offset += queued.len;
        }
    }
}

/// The end of the GSO run starting at `start`: same destination, every segment the size of the first
/// but the last, which may be shorter; within the kernel's limits and [`MAX_GSO_SEGMENT`].
fn run_end<T>(queued: &[Queued<T>], start: usize, max_segments: usize) -> usize {
    let first = &queued[start];
    let (mut end, mut bytes) = (start + 1, first.len);
    if first.len > MAX_GSO_SEGMENT {
        return end;
    }
    while let Some(next) = queued.get(end) {
        let previous_full = queued[end - 1].len == first.len;
        if !previous_full
            || next.to != first.to
            || next.len > first.len
            || next.len == 0
            || end - start >= max_segments
            || bytes + next.len > MAX_GSO_BYTES
        {
            break;
        }
        bytes += next.len;
        end += 1;
    }
    end
}

async fn send_one(
    socket: &UdpSocket,
    to: SocketAddr,
    contents: &[u8],
    segment: Option<usize>,
) -> io::Result<()> {
    let state = state()?;
    let transmit = Transmit { destination: to, ecn: None, contents, segment_size: segment, src_ip: None };
    socket.async_io(Interest::WRITABLE, || state.try_send(socket.into(), &transmit)).await
}

fn log_failure(result: io::Result<()>) -> bool {
    match result {
        Ok(()) => true,
        Err(error) => {
            debug!(%error, "UDP send failed");
            false
        }
    }
}

#[cfg(test)]
#[path = "udp_batch/tests.rs"]
mod tests;
