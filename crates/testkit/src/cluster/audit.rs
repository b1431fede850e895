//! The API server's audit log: every write (create, update, patch, delete) it answered, by
//! whom, on what, with which code, and when. What a program wrote is read here, not
//! guessed from its own logs or counters.

use std::path::Path;

use serde_json::Value;

/// One audited write.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub user: String,
    pub verb: String,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The HTTP code the API server answered.
    pub code: u16,
    /// When the answer was sent (RFC 3339 with microseconds, as the API server writes it).
    pub at: String,
}

impl Event {
    /// A write that changed something (2xx).
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// When the API server answered.
    pub fn time(&self) -> Option<k8s_openapi::jiff::Timestamp> {
        self.at.parse().ok()
    }

    /// `resource/name` (with `/subresource`), for messages.
    pub fn what(&self) -> String {
        let mut what = format!("{} {}/{}", self.verb, self.resource, self.name);
        if !self.subresource.is_empty() {
            what = format!("{what}/{}", self.subresource);
        }
        if !self.namespace.is_empty() {
            what = format!("{what} in {}", self.namespace);
        }
        format!("{what} ({}, {})", self.code, self.at)
    }
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

/// The events of the audit log at `path`, in the order written; a line being written is
/// left for the next read.
pub fn read(path: &Path) -> Vec<Event> {
    let Ok(log) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["stage"] == "ResponseComplete")
        .map(|event| {
            let object = &event["objectRef"];
            Event {
                user: text(&event["user"]["username"]),
                verb: text(&event["verb"]),
                api_group: text(&object["apiGroup"]),
                resource: text(&object["resource"]),
                subresource: text(&object["subresource"]),
                namespace: text(&object["namespace"]),
                name: text(&object["name"]),
                code: event["responseStatus"]["code"]
                    .as_u64()
                    .and_then(|c| u16::try_from(c).ok())
                    .unwrap_or_default(),
                at: text(&event["stageTimestamp"]),
            }
        })
        .collect()
}
