//! Multi-stream MQTT over QUIC (`quic.max_streams` > 1): one MQTT connection over several
//! client-opened bidirectional streams, merged into the one byte stream a `Connection`
//! reads, so the client loop, its limits and its session are the same as with one stream.
//!
//! The mapping (docs/TRANSPORTS.md):
//! - The first stream is the **control stream**: CONNECT and every other packet, both ways;
//!   everything the broker sends goes on it, except the acknowledgements below.
//! - Further streams are **data streams**, opened by the client once its CONNECT is sent;
//!   they carry PUBLISH (and a QoS 2 flow's PUBREL) only. The broker answers a PUBLISH's
//!   PUBACK, PUBREC and PUBCOMP on the stream it came on, so a client can match them by
//!   stream as well as by packet id. Anything else on a data stream closes the connection.
//!
//! Each stream is split into whole packets before they are merged, so a PUBLISH stuck
//! half-sent on one stream (a slow topic, a lost packet) holds up neither the others nor
//! the control stream: QUIC retransmits per stream. What one connection can make the
//! broker hold is bounded: at most `max_streams` streams, each with at most one
//! incomplete packet of at most `limits.max_packet_size` bytes (before CONNECT, the control
//! stream's limit is `limits.max_connect_packet_size` and no data stream is accepted).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use messs_codec::frame_length;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::transport::connection::Transport;

/// Bytes read from one stream per turn.
const READ_CHUNK: usize = 8 * 1024;
/// Whole packets gathered for the reader before the streams are read again.
const READY_HIGH: usize = 64 * 1024;

const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;

type Accepting = Pin<
    Box<
        dyn Future<Output = Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>>
            + Send,
    >,
>;

/// One stream of the connection.
struct Lane {
    /// 0 for the control stream; data streams count up from 1.
    id: u64,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// The start of a packet not yet complete.
    partial: BytesMut,
    /// The client has finished sending on it.
    recv_done: bool,
    /// Writing to it failed (the client stopped or reset it).
    send_failed: bool,
}

/// What reading a stream once did.
enum Pumped {
    /// Read bytes (maybe completing packets).
    Read,
    /// Nothing to read now; woken when there is.
    Pending,
    /// The client finished the stream.
    Done,
}

/// Several QUIC streams as one MQTT byte stream.
pub(crate) struct MultiStream {
    connection: quinn::Connection,
    control: Lane,
    lanes: Vec<Lane>,
    next_id: u64,
    max_lanes: usize,
    accepting: Option<Accepting>,
    /// Whole packets, in the order they were completed, for the reader.
    ready: BytesMut,
    /// The data stream a client PUBLISH (QoS 1, 2) came on, by packet id.
    routes: Routes,
    /// The rest of a packet being written: its stream and how many bytes are left.
    carry: Option<(u64, usize)>,
    /// Where the next round of reads starts, so no stream is always first.
    turn: usize,
    /// CONNECT has come through the control stream.
    connected: bool,
    /// The control stream ended.
    eof: bool,
    max_connect: usize,
    max_packet: usize,
    closing: Closing,
}

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// The length of the fixed header of a whole packet.
fn header_len(packet: &[u8]) -> usize {
    1 + packet[1..]
        .iter()
        .take(4)
        .position(|b| b & 0x80 == 0)
        .map_or(4, |i| i + 1)
}

/// The packet identifier that follows the fixed header (acks, PUBREL).
fn leading_pid(packet: &[u8]) -> Option<u16> {
    let at = header_len(packet);
    Some(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]))
}

/// True for a PUBREC whose reason code (MQTT 5, after the packet id) is an error.
fn pubrec_failed(packet: &[u8]) -> bool {
    packet
        .get(header_len(packet) + 2)
        .is_some_and(|reason| *reason >= 0x80)
}

/// Which data stream each client PUBLISH in flight came on, by packet id, and how many
/// each stream has: at most one entry per packet id (65,535), and a stream's count is
/// read without a scan.
#[derive(Default)]
struct Routes {
    by_pid: HashMap<u16, u64>,
    per_lane: HashMap<u64, usize>,
}

impl Routes {
    fn insert(&mut self, pid: u16, lane: u64) {
        if let Some(old) = self.by_pid.insert(pid, lane) {
            self.release(old);
        }
        *self.per_lane.entry(lane).or_default() += 1;
    }

    fn get(&self, pid: u16) -> Option<u64> {
        self.by_pid.get(&pid).copied()
    }

    fn remove(&mut self, pid: u16) -> Option<u64> {
        let lane = self.by_pid.remove(&pid)?;
        self.release(lane);
        Some(lane)
    }

    fn release(&mut self, lane: u64) {
        if let Some(n) = self.per_lane.get_mut(&lane) {
            *n -= 1;
            if *n == 0 {
                self.per_lane.remove(&lane);
            }
        }
    }

    /// True if an acknowledgement still has to go back on `lane`.
    fn in_use(&self, lane: u64) -> bool {
        self.per_lane.contains_key(&lane)
    }
}

/// A PUBLISH's packet identifier (QoS 1 and 2 only).
fn publish_pid(packet: &[u8]) -> Option<u16> {
    if (packet[0] >> 1) & 3 == 0 {
        return None;
    }
    let at = header_len(packet);
    let topic_len = usize::from(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]));
    let pid_at = at + 2 + topic_len;
    Some(u16::from_be_bytes([
        *packet.get(pid_at)?,
        *packet.get(pid_at + 1)?,
    ]))
}

impl Lane {
    fn new(id: u64, send: quinn::SendStream, recv: quinn::RecvStream) -> Lane {
        Lane {
            id,
            send,
            recv,
            partial: BytesMut::new(),
            recv_done: false,
            send_failed: false,
        }
    }

    /// Reads once and moves every packet it completed into `ready`. A data stream's
    /// packets must be PUBLISH or PUBREL; their packet ids are routed back to it.
    fn pump(
        &mut self,
        cx: &mut Context<'_>,
        limit: usize,
        ready: &mut BytesMut,
        routes: &mut Routes,
    ) -> io::Result<Pumped> {
        if self.recv_done {
            return Ok(Pumped::Done);
        }
        let mut chunk = [0u8; READ_CHUNK];
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut self.recv).poll_read(cx, &mut buf) {
            Poll::Pending => return Ok(Pumped::Pending),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                self.recv_done = true;
                if !self.partial.is_empty() {
                    return Err(invalid("a QUIC stream ended inside a packet"));
                }
                return Ok(Pumped::Done);
            }
            Poll::Ready(Ok(())) => self.partial.extend_from_slice(buf.filled()),
        }
        while let Some(len) =
            frame_length(&self.partial).map_err(|_| invalid("malformed remaining length"))?
        {
            if len > limit {
                return Err(invalid("a packet over the size limit"));
            }
            if self.partial.len() < len {
                break;
            }
            let packet = self.partial.split_to(len);
            if self.id != 0 {
                let pid = match packet[0] >> 4 {
                    PUBLISH => publish_pid(&packet),
                    PUBREL => leading_pid(&packet),
                    _ => {
                        return Err(invalid(
                            "only PUBLISH and PUBREL may use a QUIC data stream",
                        ))
                    }
                };
                if let Some(pid) = pid {
                    routes.insert(pid, self.id);
                }
            }
            ready.extend_from_slice(&packet);
        }
        if self.partial.is_empty() {
            self.partial = BytesMut::new();
        }
        Ok(Pumped::Read)
    }
}

impl MultiStream {
    /// Takes over a connection whose first stream is the control stream; up to
    /// `max_streams - 1` data streams follow.
    pub(crate) fn new(
        connection: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        max_streams: usize,
        max_connect: usize,
        max_packet: usize,
    ) -> Self {
        MultiStream {
            connection,
            control: Lane::new(0, send, recv),
            lanes: Vec::new(),
            next_id: 1,
            max_lanes: max_streams.saturating_sub(1),
            accepting: None,
            ready: BytesMut::new(),
            routes: Routes::default(),
            carry: None,
            turn: 0,
            connected: false,
            eof: false,
            max_connect,
            max_packet,
            closing: Closing::default(),
        }
    }

    /// Takes the data streams the client opened since the last look.
    fn accept_lanes(&mut self, cx: &mut Context<'_>) -> bool {
        let mut accepted = false;
        while self.connected && self.lanes.len() < self.max_lanes {
            let accepting = self.accepting.get_or_insert_with(|| {
                let connection = self.connection.clone();
                Box::pin(async move { connection.accept_bi().await })
            });
            match accepting.as_mut().poll(cx) {
                Poll::Pending => break,
                Poll::Ready(Ok((send, recv))) => {
                    self.accepting = None;
                    self.lanes.push(Lane::new(self.next_id, send, recv));
                    self.next_id += 1;
                    accepted = true;
                }
                // The connection is ending: the control stream's read reports it. The
                // finished future is dropped (polling it again would be a bug) and no
                // further stream is accepted.
                Poll::Ready(Err(_)) => {
                    self.accepting = None;
                    self.max_lanes = 0;
                    break;
                }
            }
        }
        accepted
    }

    /// Lets go of data streams the client has finished and no acknowledgement still
    /// needs, finishing our side so QUIC can count the stream as closed.
    fn retire_lanes(&mut self) {
        let (routes, carry) = (&self.routes, self.carry);
        self.lanes.retain_mut(|lane| {
            let needed = || routes.in_use(lane.id) || carry.is_some_and(|(id, _)| id == lane.id);
            if lane.recv_done && !needed() {
                let _ = lane.send.finish();
                return false;
            }
            true
        });
    }

    /// The stream a packet the broker writes goes on: an acknowledgement of a data
    /// stream's PUBLISH goes back on that stream, the rest on the control stream.
    fn route(&mut self, packet: &[u8]) -> u64 {
        let lane = match (packet[0] >> 4, leading_pid(packet)) {
            (PUBACK | PUBCOMP, Some(pid)) => self.routes.remove(pid),
            // A PUBREC with an error code ends the flow: no PUBREL will follow.
            (PUBREC, Some(pid)) if pubrec_failed(packet) => self.routes.remove(pid),
            (PUBREC, Some(pid)) => self.routes.get(pid),
            _ => None,
        };
        match lane {
            Some(id) if self.lanes.iter().any(|l| l.id == id && !l.send_failed) => id,
            _ => 0,
        }
    }

    fn lane_mut(&mut self, id: u64) -> Option<&mut Lane> {
        if id == 0 {
            return Some(&mut self.control);
        }
        self.lanes.iter_mut().find(|l| l.id == id)
    }
}

/// Always "ready": quinn buffers received data in the connection, not in the socket.
impl Transport for MultiStream {}

impl AsyncRead for MultiStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(out.remaining());
                out.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                if this.ready.is_empty() {
                    this.ready = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut progressed = this.accept_lanes(cx);
            let limit = if this.connected {
                this.max_packet
            } else {
                this.max_connect
            };
            match this
                .control
                .pump(cx, limit, &mut this.ready, &mut this.routes)?
            {
                Pumped::Read => progressed = true,
                Pumped::Pending => {}
                Pumped::Done => {
                    this.eof = true;
                    progressed = true;
                }
            }
            if !this.ready.is_empty() && !this.connected {
                this.connected = true;
                progressed = true;
            }
            let count = this.lanes.len();
            for k in 0..count {
                if this.ready.len() >= READY_HIGH {
                    break;
                }
                let lane = &mut this.lanes[(this.turn + k) % count];
                match lane.pump(cx, this.max_packet, &mut this.ready, &mut this.routes)? {
                    Pumped::Read => progressed = true,
                    Pumped::Pending | Pumped::Done => {}
                }
            }
            this.turn = this.turn.wrapping_add(1);
            this.retire_lanes();
            if !progressed {
                return Poll::Pending;
            }
        }
    }
}

impl AsyncWrite for MultiStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut used = 0;
        while used < buf.len() {
            let (lane_id, left) = match this.carry {
                Some(carry) => carry,
                None => {
                    let rest = &buf[used..];
                    // The writer (a Connection) writes whole packets; anything else goes
                    // to the control stream as it is.
                    let len = match frame_length(rest) {
                        Ok(Some(len)) if len <= rest.len() => len,
                        _ => rest.len(),
                    };
                    // Routed once: a write that must wait retries from `carry`.
                    let next = (this.route(&rest[..len]), len);
                    this.carry = Some(next);
                    next
                }
            };
            let end = (used + left).min(buf.len());
            let Some(lane) = this.lane_mut(lane_id) else {
                // Its stream is gone: the rest of the packet goes nowhere.
                this.carry = (left > end - used).then(|| (lane_id, left - (end - used)));
                used = end;
                continue;
            };
            match AsyncWrite::poll_write(Pin::new(&mut lane.send), cx, &buf[used..end]) {
                Poll::Ready(Ok(n)) => {
                    used += n;
                    this.carry = (left > n).then(|| (lane_id, left - n));
                }
                Poll::Ready(Err(e)) if lane_id == 0 => return Poll::Ready(Err(e)),
                Poll::Ready(Err(_)) => {
                    // The client gave up that stream: drop the acknowledgement.
                    lane.send_failed = true;
                    this.carry = (left > end - used).then(|| (lane_id, left - (end - used)));
                    used = end;
                }
                Poll::Pending if used == 0 => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        Poll::Ready(Ok(used))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().control.send), cx)
    }

    /// Finishes every data stream, then closes as [`Closing`] says (on the
    /// control stream).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        for lane in &mut this.lanes {
            let _ = lane.send.finish();
        }
        this.closing
            .poll_close(cx, &mut this.control.send, &this.connection)
    }
}

impl Drop for MultiStream {
    fn drop(&mut self) {
        self.connection.close(quinn::VarInt::from_u32(0), b"");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_count_per_stream_and_forget_what_is_acknowledged() {
        let mut r = Routes::default();
        r.insert(1, 5);
        r.insert(2, 5);
        r.insert(1, 6); // pid 1 reused on stream 6: stream 5 keeps only pid 2
        assert!(r.in_use(5) && r.in_use(6));
        assert_eq!(r.remove(2), Some(5));
        assert!(!r.in_use(5));
        assert_eq!(r.get(1), Some(6));
        assert_eq!(r.remove(1), Some(6));
        assert!(!r.in_use(6) && r.per_lane.is_empty() && r.by_pid.is_empty());
        assert_eq!(r.remove(1), None);
    }

    #[test]
    fn packet_ids_are_found_where_the_spec_puts_them() {
        // PUBLISH QoS 1, topic "a/b", pid 0x1234, payload "x".
        let publish = [0x32, 8, 0, 3, b'a', b'/', b'b', 0x12, 0x34, b'x'];
        assert_eq!(publish_pid(&publish), Some(0x1234));
        // QoS 0 has none.
        let qos0 = [0x30, 6, 0, 3, b'a', b'/', b'b', b'x'];
        assert_eq!(publish_pid(&qos0), None);
        // Truncated: none, no panic.
        assert_eq!(publish_pid(&[0x32, 3, 0, 9, b'a']), None);
        // PUBACK pid 7.
        assert_eq!(leading_pid(&[0x40, 2, 0, 7]), Some(7));
        // PUBREC pid 7: success (3.1.1 and 5), and 0x87 Not authorized (5).
        assert!(!pubrec_failed(&[0x50, 2, 0, 7]));
        assert!(!pubrec_failed(&[0x50, 3, 0, 7, 0x10]));
        assert!(pubrec_failed(&[0x50, 3, 0, 7, 0x87]));
        assert_eq!(header_len(&[0x30, 0x80, 0x01]), 3);
    }
}

/// The graceful end of a QUIC connection: finish the stream that carried the MQTT
/// connection, wait until the peer has acknowledged all of it (a DISCONNECT included),
/// then close the connection, so nothing in flight is lost. (`Connection::close` bounds
/// the wait.)
#[derive(Default)]
pub(crate) struct Closing(Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>);

impl Closing {
    pub(crate) fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        send: &mut quinn::SendStream,
        connection: &quinn::Connection,
    ) -> Poll<io::Result<()>> {
        let acked = self.0.get_or_insert_with(|| {
            let _ = send.finish();
            let stopped = send.stopped();
            Box::pin(async move {
                let _ = stopped.await;
            })
        });
        ready!(acked.as_mut().poll(cx));
        connection.close(quinn::VarInt::from_u32(0), b"");
        Poll::Ready(Ok(()))
    }
}
