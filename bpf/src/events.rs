//! Datapath events from the `cilium_events_v1` ring buffer: decoding and readers.
//!
//! Record layout: `struct cilium_event` in `bpf/lib/events.h` ([`crate::types::RawEvent`]).
//! Version 1 is 56 bytes, version 2 (64 bytes) appends the policy cookie; later versions may
//! only append, so longer records decode too.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libbpf_rs::{MapHandle, RingBuffer, RingBufferBuilder};

use crate::drop::DropReason;
use crate::error::{Error, Result};
use crate::types::{Pod, RawEvent};

/// Event layout version this crate writes and reads.
pub const EVENT_VERSION: u8 = 2;
/// Size of a version-1 record.
pub const EVENT_V1_LEN: usize = 56;
/// Size of a version-2 record.
pub const EVENT_V2_LEN: usize = 64;

/// `EVENT_TYPE_DROP`.
pub const EVENT_TYPE_DROP: u8 = 1;
/// `EVENT_TYPE_TRACE`.
pub const EVENT_TYPE_TRACE: u8 = 4;
/// `EVENT_TYPE_POLICY_VERDICT`.
pub const EVENT_TYPE_POLICY_VERDICT: u8 = 5;

/// Where a traced packet was observed (Cilium's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TracePoint {
    /// Delivered to a pod (redirect or host-to-pod).
    ToEndpoint,
    /// Handed to the host stack.
    ToStack,
    /// Left a pod.
    FromEndpoint,
    /// A code this crate does not know.
    Other(u8),
}

impl TracePoint {
    fn from_code(c: u8) -> Self {
        match c {
            0 => Self::ToEndpoint,
            3 => Self::ToStack,
            5 => Self::FromEndpoint,
            o => Self::Other(o),
        }
    }
    /// Short name for CLI/JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Self::ToEndpoint => "to-endpoint",
            Self::ToStack => "to-stack",
            Self::FromEndpoint => "from-endpoint",
            Self::Other(_) => "other",
        }
    }
}

/// What kind of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A dropped packet; `code` is the drop reason code.
    Drop {
        /// Drop reason code (see [`DropReason::from_code`]).
        code: u8,
    },
    /// A forwarded packet.
    Trace(TracePoint),
    /// A policy decision on a new connection.
    PolicyVerdict,
}

/// Conntrack result carried in an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CtStatus {
    /// First packet of a connection.
    New,
    /// Original direction of a known connection.
    Established,
    /// Reply direction.
    Reply,
    /// Unknown code.
    Other(u8),
}

/// A decoded datapath event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Event {
    /// Drop / trace / policy verdict.
    pub kind: EventKind,
    /// Layout version of the record.
    pub version: u8,
    /// 1 ingress, 2 egress (from the reporting endpoint's view).
    pub dir: u8,
    /// Reporting endpoint id (0 when unknown, e.g. spoofed source).
    pub endpoint: u16,
    /// Destination endpoint id for local delivery, else 0.
    pub dst_endpoint: u16,
    /// Interface the program ran on.
    pub ifindex: u32,
    /// Packet length in bytes.
    pub len: u32,
    /// CLOCK_BOOTTIME nanoseconds.
    pub timestamp_ns: u64,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port (host order; ICMP echo id on requests).
    pub src_port: u16,
    /// Destination port (host order).
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Conntrack status.
    pub ct_status: CtStatus,
    /// TCP flags of the packet.
    pub tcp_flags: u8,
    /// Source security identity.
    pub src_identity: u32,
    /// Destination security identity.
    pub dst_identity: u32,
    /// Interface a local delivery went to, else 0.
    pub dst_ifindex: u32,
    /// Policy verdict: 0 allowed, negative = -drop reason.
    pub verdict: i32,
    /// Cookie of the deciding policy entry (policy verdicts and policy drops), 0 = none.
    pub cookie: u32,
}

impl Event {
    /// Decodes one ring-buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Event> {
        if bytes.len() < 4 {
            return Err(Error::EventDecode {
                reason: "shorter than the header",
                len: bytes.len(),
            });
        }
        let version = bytes[2];
        if version == 0 {
            return Err(Error::EventDecode {
                reason: "version 0 is invalid",
                len: bytes.len(),
            });
        }
        if bytes.len() < EVENT_V1_LEN {
            return Err(Error::EventDecode {
                reason: "shorter than a version-1 record (56 bytes)",
                len: bytes.len(),
            });
        }
        // Version 1 records lack the cookie: decode them zero-extended.
        let mut buf = [0u8; EVENT_V2_LEN];
        let n = bytes.len().min(EVENT_V2_LEN);
        buf[..n].copy_from_slice(&bytes[..n]);
        let raw = RawEvent::from_bytes(&buf).ok_or(Error::EventDecode {
            reason: "shorter than a version-1 record (56 bytes)",
            len: bytes.len(),
        })?;
        let kind = match raw.r#type {
            EVENT_TYPE_DROP => EventKind::Drop { code: raw.subtype },
            EVENT_TYPE_TRACE => EventKind::Trace(TracePoint::from_code(raw.subtype)),
            EVENT_TYPE_POLICY_VERDICT => EventKind::PolicyVerdict,
            _ => {
                return Err(Error::EventDecode {
                    reason: "unknown event type",
                    len: bytes.len(),
                });
            }
        };
        Ok(Event {
            kind,
            version,
            dir: raw.dir,
            endpoint: raw.ep_id,
            dst_endpoint: raw.dst_ep_id,
            ifindex: raw.ifindex,
            len: raw.pkt_len,
            timestamp_ns: raw.ts_ns,
            src: Ipv4Addr::from(raw.saddr.to_ne_bytes()),
            dst: Ipv4Addr::from(raw.daddr.to_ne_bytes()),
            src_port: u16::from_be(raw.sport),
            dst_port: u16::from_be(raw.dport),
            proto: raw.proto,
            ct_status: match raw.ct_status {
                0 => CtStatus::New,
                1 => CtStatus::Established,
                2 => CtStatus::Reply,
                o => CtStatus::Other(o),
            },
            tcp_flags: raw.tcp_flags,
            src_identity: raw.src_identity,
            dst_identity: raw.dst_identity,
            dst_ifindex: raw.dst_ifindex,
            verdict: raw.verdict,
            cookie: if version >= 2 { raw.cookie } else { 0 },
        })
    }

    /// The drop reason of a drop event.
    pub fn drop_reason(&self) -> Option<DropReason> {
        match self.kind {
            EventKind::Drop { code } => DropReason::from_code(code),
            _ => None,
        }
    }
}

/// Reads events from the ring buffer. `Send`, not `Sync`; one per consumer.
///
/// Blocking use: [`EventReader::poll`]. With tokio: [`EventReader::into_async`], or register
/// [`AsRawFd::as_raw_fd`] (the ring buffer's epoll fd) yourself and call
/// [`EventReader::consume`] when it is readable.
pub struct EventReader {
    rb: RingBuffer<'static>,
    queue: Arc<Mutex<Vec<Result<Event>>>>,
    _map: MapHandle,
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReader")
            .field("epoll_fd", &self.rb.epoll_fd())
            .finish()
    }
}

impl EventReader {
    /// Builds a reader over a `cilium_events_v1` handle (from [`crate::Maps`] or a pin).
    pub fn new(map: MapHandle) -> Result<Self> {
        // The callback runs on the thread calling poll/consume; the mutex only makes the
        // reader `Send` so the agent can move it into a task.
        let queue: Arc<Mutex<Vec<Result<Event>>>> = Arc::default();
        let sink = Arc::clone(&queue);
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&map, move |data: &[u8]| {
                if let Ok(mut q) = sink.lock() {
                    q.push(Event::decode(data));
                }
                0
            })
            .map_err(|source| Error::RingBuffer {
                op: "add map",
                source,
            })?;
        let rb = builder.build().map_err(|source| Error::RingBuffer {
            op: "build",
            source,
        })?;
        Ok(Self {
            rb,
            queue,
            _map: map,
        })
    }

    /// Waits up to `timeout` for events and returns what arrived (possibly nothing).
    pub fn poll(&self, timeout: Duration) -> Result<Vec<Event>> {
        self.rb
            .poll(timeout)
            .map_err(|source| Error::RingBuffer { op: "poll", source })?;
        Ok(self.drain())
    }

    /// Returns every event available now, without waiting.
    pub fn consume(&self) -> Result<Vec<Event>> {
        self.rb.consume().map_err(|source| Error::RingBuffer {
            op: "consume",
            source,
        })?;
        Ok(self.drain())
    }

    fn drain(&self) -> Vec<Event> {
        let mut out = Vec::new();
        let items: Vec<_> = match self.queue.lock() {
            Ok(mut q) => q.drain(..).collect(),
            Err(poisoned) => poisoned.into_inner().drain(..).collect(),
        };
        for item in items {
            match item {
                Ok(ev) => out.push(ev),
                Err(error) => tracing::warn!(%error, "skipping undecodable datapath event"),
            }
        }
        out
    }

    /// Wraps the reader for tokio (needs a running runtime with IO enabled).
    #[allow(
        unsafe_code,
        reason = "tokio's fd registration is unsafe (I/O safety contract)"
    )]
    pub fn into_async(self) -> Result<AsyncEventReader> {
        // SAFETY: the epoll fd belongs to `self.rb`, which the AsyncFd owns from here on;
        // it stays open and unchanged until the AsyncFd (and with it the reader) drops.
        let inner = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE)
        }
        .map_err(|e| Error::Async(e.into()))?;
        Ok(AsyncEventReader { inner })
    }
}

impl AsRawFd for EventReader {
    /// The ring buffer's epoll fd: readable when events are pending.
    fn as_raw_fd(&self) -> RawFd {
        self.rb.epoll_fd()
    }
}

/// Tokio-driven event reader.
#[derive(Debug)]
pub struct AsyncEventReader {
    inner: tokio::io::unix::AsyncFd<EventReader>,
}

impl AsyncEventReader {
    /// Waits until at least one event is available and returns all available ones.
    /// Takes `&mut self` so the future is `Send` (the reader is not `Sync`).
    pub async fn next_batch(&mut self) -> Result<Vec<Event>> {
        loop {
            let mut guard = self.inner.readable_mut().await.map_err(Error::Async)?;
            guard.clear_ready();
            let events = guard.get_inner().consume()?;
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_drop() -> RawEvent {
        RawEvent {
            r#type: EVENT_TYPE_DROP,
            subtype: 132,
            version: 1,
            dir: 2,
            ep_id: 7,
            ifindex: 12,
            pkt_len: 84,
            saddr: u32::from_ne_bytes([10, 0, 0, 99]),
            daddr: u32::from_ne_bytes([10, 0, 0, 2]),
            sport: 1234u16.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            verdict: -132,
            ..Default::default()
        }
    }

    #[test]
    fn decodes_drop_event() {
        let raw = raw_drop();
        let ev = Event::decode(raw.as_bytes()).unwrap();
        assert_eq!(ev.kind, EventKind::Drop { code: 132 });
        assert_eq!(ev.drop_reason(), Some(DropReason::InvalidSip));
        assert_eq!(ev.src, Ipv4Addr::new(10, 0, 0, 99));
        assert_eq!(ev.dst, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!((ev.src_port, ev.dst_port), (1234, 80));
        assert_eq!(ev.endpoint, 7);
        assert_eq!(ev.ct_status, CtStatus::New);
    }

    #[test]
    fn accepts_longer_newer_records_and_rejects_bad_ones() {
        let mut raw = raw_drop();
        raw.version = 3;
        raw.cookie = 77;
        let mut bytes = raw.as_bytes().to_vec();
        bytes.extend_from_slice(&[0xff; 8]);
        let ev = Event::decode(&bytes).unwrap();
        assert_eq!((ev.version, ev.cookie), (3, 77));
        // A version-1 record is 56 bytes and carries no cookie.
        raw.version = 1;
        let v1 = Event::decode(&raw.as_bytes()[..EVENT_V1_LEN]).unwrap();
        assert_eq!((v1.version, v1.cookie), (1, 0));
        assert!(Event::decode(&raw.as_bytes()[..EVENT_V1_LEN - 1]).is_err());
        assert!(Event::decode(&bytes[..40]).is_err());
        raw.version = 0;
        assert!(Event::decode(raw.as_bytes()).is_err());
        raw.version = 1;
        raw.r#type = 99;
        assert!(Event::decode(raw.as_bytes()).is_err());
        raw.r#type = EVENT_TYPE_TRACE;
        raw.subtype = 3;
        assert_eq!(
            Event::decode(raw.as_bytes()).unwrap().kind,
            EventKind::Trace(TracePoint::ToStack)
        );
    }
}
