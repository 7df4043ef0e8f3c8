//! The monitor: one job drains the events ring buffer, decodes each record into a
//! [`MonitorEvent`] and fans it out on a broadcast channel that API streams subscribe to.
//! Policy verdicts and policy drops name the deciding policy and rule (through the
//! policy repository's `rule_by_cookie`) in `MonitorEvent::policy`.

use std::sync::Arc;

use cilium_api::models::{MonitorEvent, MonitorEventType};
use cilium_bpf::{CtStatus, Datapath, DropReason, Event, EventKind, reason_name};
use cilium_policy::Repository;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::broadcast;

use crate::error::Error;

/// Events buffered per subscriber before it is told it lost some.
pub const SUBSCRIBER_BUFFER: usize = 4096;

/// Fan-out of datapath events, injected as `Arc<Monitor>`.
#[derive(Debug)]
pub struct Monitor {
    tx: broadcast::Sender<Arc<MonitorEvent>>,
    events: IntCounterVec,
    policy: Option<Arc<Repository>>,
}

impl Monitor {
    /// A monitor whose counters live in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, Error> {
        let events = IntCounterVec::new(
            Opts::new(
                "cilium_datapath_monitor_events_total",
                "Datapath events read from the ring buffer",
            ),
            &["type"],
        )?;
        registry.register(Box::new(events.clone()))?;
        let (tx, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        Ok(Self {
            tx,
            events,
            policy: None,
        })
    }

    /// Names policies in verdicts and policy drops through `repo` (cookie → rule).
    #[must_use]
    pub fn with_policy(mut self, repo: Option<Arc<Repository>>) -> Self {
        self.policy = repo;
        self
    }

    /// Decodes a record into the API model, naming the deciding policy rule.
    pub fn model(&self, ev: &Event) -> MonitorEvent {
        let mut m = to_model(ev);
        m.policy = policy_name(ev, |cookie| {
            self.policy
                .as_ref()
                .and_then(|r| r.rule_by_cookie(cookie))
                .map(|r| r.describe())
        });
        m
    }

    /// A new subscription to every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<MonitorEvent>> {
        self.tx.subscribe()
    }

    /// Number of current subscribers.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Publishes one decoded event to every subscriber.
    pub fn publish(&self, ev: MonitorEvent) {
        self.events.with_label_values(&[ev.kind.name()]).inc();
        // No subscriber is fine: events are dropped then.
        let _ = self.tx.send(Arc::new(ev));
    }

    /// The reader job: drains the ring buffer until `cancel` fires. The ring buffer is
    /// always drained, even without subscribers, so the datapath never finds it full.
    pub async fn run(
        self: Arc<Self>,
        dp: Arc<Datapath>,
        cancel: hive::CancellationToken,
        health: hive::Health,
    ) -> hive::anyhow::Result<()> {
        let mut reader = dp.event_reader()?.into_async()?;
        health.ok("reading the events ring buffer");
        loop {
            let batch = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                b = reader.next_batch() => b?,
            };
            for ev in batch {
                self.publish(self.model(&ev));
            }
        }
    }
}

/// Protocol name of an IP protocol number.
pub fn proto_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        p => format!("proto-{p}"),
    }
}

/// TCP flags as words, e.g. `SYN ACK`.
pub fn tcp_flags(flags: u8) -> String {
    const NAMES: [(u8, &str); 6] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x20, "URG"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(" ")
}

fn direction(dir: u8) -> &'static str {
    match dir {
        1 => "ingress",
        2 => "egress",
        _ => "unknown",
    }
}

/// The `policy` text of a verdict or policy drop: `<rule> <direction>` for a cookie the
/// namer knows (e.g. `CiliumNetworkPolicy x/deny-all ingressDeny[0] ingress`),
/// `cookie <n> <direction>` for one it does not, `default deny <direction> (no rule
/// allows)` for a policy-denied drop; `None` for other events.
pub fn policy_name(ev: &Event, name: impl Fn(u32) -> Option<String>) -> Option<String> {
    let is_policy_drop = matches!(
        ev.drop_reason(),
        Some(DropReason::PolicyDenied | DropReason::PolicyDeny)
    );
    if ev.kind != EventKind::PolicyVerdict && !is_policy_drop {
        return None;
    }
    let dir = direction(ev.dir);
    if ev.cookie == 0 {
        return Some(if ev.verdict == 0 {
            format!("allow-all {dir} (cookie 0)")
        } else {
            format!("default deny {dir} (no rule allows)")
        });
    }
    Some(match name(ev.cookie) {
        Some(rule) => format!("{rule} {dir}"),
        None => format!("cookie {} {dir}", ev.cookie),
    })
}

/// Converts a decoded ring-buffer record into the API model.
pub fn to_model(ev: &Event) -> MonitorEvent {
    let mut m = MonitorEvent::lost(0);
    m.lost = None;
    m.timestamp_ns = ev.timestamp_ns;
    m.endpoint = ev.endpoint;
    m.dst_endpoint = ev.dst_endpoint;
    m.direction = direction(ev.dir).to_string();
    m.src_ip = ev.src.to_string();
    m.dst_ip = ev.dst.to_string();
    m.src_port = ev.src_port;
    m.dst_port = ev.dst_port;
    m.protocol = proto_name(ev.proto);
    m.tcp_flags = if ev.proto == 6 {
        tcp_flags(ev.tcp_flags)
    } else {
        String::new()
    };
    m.ct_status = match ev.ct_status {
        CtStatus::New => "new".into(),
        CtStatus::Established => "established".into(),
        CtStatus::Reply => "reply".into(),
        CtStatus::Other(c) => format!("unknown-{c}"),
    };
    m.src_identity = ev.src_identity;
    m.dst_identity = ev.dst_identity;
    m.ifindex = ev.ifindex;
    m.dst_ifindex = ev.dst_ifindex;
    m.length = ev.len;
    m.cookie = ev.cookie;
    match ev.kind {
        EventKind::Drop { code } => {
            m.kind = MonitorEventType::Drop;
            m.verdict = "dropped".into();
            m.drop_reason = Some(reason_name(code));
            m.drop_reason_code = Some(code);
        }
        EventKind::Trace(point) => {
            m.kind = MonitorEventType::Trace;
            m.verdict = "forwarded".into();
            m.observation_point = Some(point.name().to_string());
        }
        EventKind::PolicyVerdict => {
            m.kind = MonitorEventType::PolicyVerdict;
            if ev.verdict == 0 {
                m.verdict = "allowed".into();
            } else {
                m.verdict = "denied".into();
                let code = u8::try_from(ev.verdict.unsigned_abs()).unwrap_or(u8::MAX);
                m.drop_reason = Some(reason_name(code));
                m.drop_reason_code = Some(code);
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use cilium_bpf::TracePoint;

    use super::*;

    fn event(kind: EventKind) -> Event {
        Event {
            kind,
            version: 1,
            dir: 2,
            endpoint: 12,
            dst_endpoint: 13,
            ifindex: 7,
            len: 60,
            timestamp_ns: 5,
            src: Ipv4Addr::new(10, 200, 0, 5),
            dst: Ipv4Addr::new(10, 200, 0, 7),
            src_port: 43210,
            dst_port: 80,
            proto: 6,
            ct_status: CtStatus::New,
            tcp_flags: 0x02,
            src_identity: 100,
            dst_identity: 101,
            dst_ifindex: 8,
            verdict: 0,
            cookie: 0,
        }
    }

    #[test]
    fn verdicts_and_policy_drops_name_the_rule() {
        let mut v = event(EventKind::PolicyVerdict);
        v.cookie = 42;
        v.dir = 1;
        let namer =
            |c: u32| (c == 42).then(|| "CiliumNetworkPolicy x/allow ingress[0]".to_string());
        assert_eq!(
            policy_name(&v, namer).as_deref(),
            Some("CiliumNetworkPolicy x/allow ingress[0] ingress")
        );
        v.cookie = 43;
        assert_eq!(policy_name(&v, namer).as_deref(), Some("cookie 43 ingress"));
        let mut d = event(EventKind::Drop { code: 133 });
        d.dir = 1;
        d.verdict = -133;
        assert_eq!(
            policy_name(&d, namer).as_deref(),
            Some("default deny ingress (no rule allows)")
        );
        assert_eq!(
            policy_name(&event(EventKind::Drop { code: 132 }), namer),
            None
        );
        let m = Monitor::new(&Registry::new()).unwrap().model(&v);
        assert_eq!(
            (m.cookie, m.policy.as_deref()),
            (43, Some("cookie 43 ingress"))
        );
    }

    #[test]
    fn trace_becomes_a_forwarded_event_with_its_observation_point() {
        let m = to_model(&event(EventKind::Trace(TracePoint::ToEndpoint)));
        assert_eq!(m.kind, MonitorEventType::Trace);
        assert_eq!(m.verdict, "forwarded");
        assert_eq!(m.observation_point.as_deref(), Some("to-endpoint"));
        assert_eq!((m.src_ip.as_str(), m.src_port), ("10.200.0.5", 43210));
        assert_eq!((m.dst_ip.as_str(), m.dst_port), ("10.200.0.7", 80));
        assert_eq!(m.protocol, "tcp");
        assert_eq!(m.tcp_flags, "SYN");
        assert_eq!(m.direction, "egress");
        assert_eq!(m.lost, None);
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["type"], "trace");
        assert!(json.get("drop_reason").is_none());
    }

    #[test]
    fn drop_and_denied_verdict_carry_the_reason() {
        let m = to_model(&event(EventKind::Drop { code: 132 }));
        assert_eq!(m.kind, MonitorEventType::Drop);
        assert_eq!(m.drop_reason.as_deref(), Some("invalid-source-ip"));
        assert_eq!(m.drop_reason_code, Some(132));
        let mut e = event(EventKind::PolicyVerdict);
        e.verdict = -133;
        let m = to_model(&e);
        assert_eq!(m.verdict, "denied");
        assert_eq!(m.drop_reason.as_deref(), Some("policy-denied"));
        assert_eq!(serde_json::to_value(&m).unwrap()["type"], "policy-verdict");
    }

    #[test]
    fn flags_and_protocols_have_names() {
        assert_eq!(tcp_flags(0x12), "SYN ACK");
        assert_eq!(tcp_flags(0), "");
        assert_eq!(proto_name(1), "icmp");
        assert_eq!(proto_name(47), "proto-47");
    }

    #[tokio::test]
    async fn subscribers_get_published_events_and_hear_about_losses() {
        let m = Monitor::new(&Registry::new()).unwrap();
        let mut rx = m.subscribe();
        m.publish(to_model(&event(EventKind::Drop { code: 132 })));
        assert_eq!(rx.recv().await.unwrap().kind, MonitorEventType::Drop);
        for _ in 0..SUBSCRIBER_BUFFER + 3 {
            m.publish(to_model(&event(EventKind::PolicyVerdict)));
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(3))
        ));
    }
}
