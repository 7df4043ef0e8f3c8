//! Per-object reconcile status.

use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where an object is in reconciliation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusKind {
    /// Written but not yet reconciled.
    Pending,
    /// Reconciled successfully.
    Done,
    /// Reconciliation failed; it is being retried.
    Error,
}

/// Reconcile status embedded in each reconciled object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The state.
    pub kind: StatusKind,
    /// When the status was set.
    #[serde(serialize_with = "ser_time", deserialize_with = "de_time")]
    pub updated_at: SystemTime,
    /// The last error (for [`StatusKind::Error`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn ser_time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

fn de_time<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
}

impl Default for Status {
    fn default() -> Self {
        Status::pending()
    }
}

impl Status {
    /// Pending, as writers set it when inserting or changing an object.
    pub fn pending() -> Self {
        Status {
            kind: StatusKind::Pending,
            updated_at: SystemTime::now(),
            error: None,
        }
    }

    /// Successfully reconciled now.
    pub fn done() -> Self {
        Status {
            kind: StatusKind::Done,
            updated_at: SystemTime::now(),
            error: None,
        }
    }

    /// Failed now with `err`.
    pub fn error(err: impl Into<String>) -> Self {
        Status {
            kind: StatusKind::Error,
            updated_at: SystemTime::now(),
            error: Some(err.into()),
        }
    }

    /// True if pending.
    pub fn is_pending(&self) -> bool {
        self.kind == StatusKind::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_roundtrip() {
        let s = Status::error("boom");
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["kind"], "error");
        assert_eq!(v["error"], "boom");
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back.kind, StatusKind::Error);
        assert!(
            !serde_json::to_value(Status::done())
                .unwrap()
                .as_object()
                .unwrap()
                .contains_key("error")
        );
    }
}
