//! `cmms.TechnicianRoster`: one technician's roster entry from the compacted roster topic.

use serde::{Deserialize, Serialize};

/// Availability within the shift (`cmms.Availability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Availability {
    /// Can take work.
    Available,
    /// On shift but committed to other work.
    Busy,
    /// Not working.
    Off,
    /// Away for a longer period.
    OnLeave,
    /// A symbol this version does not know (schema evolution).
    Unknown,
}

/// A certification with its expiry (`cmms.Certification`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certification {
    /// Certification or skill code.
    pub code: String,
    /// Expiry, epoch millis; `None` when it does not expire.
    pub expires_at: Option<i64>,
}

/// A technician's roster entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TechnicianRoster {
    /// Record layout version.
    pub schema_version: i32,
    /// Stable technician id; also the record key.
    pub technician_id: String,
    /// Display name.
    pub name: String,
    /// Sites the technician works at.
    pub sites: Vec<String>,
    /// Trade codes.
    pub trades: Vec<String>,
    /// Craft skill level.
    pub skill_level: Option<i32>,
    /// Certifications held.
    pub certifications: Vec<Certification>,
    /// Start of the current or next shift, epoch millis.
    pub shift_start: Option<i64>,
    /// End of the current or next shift, epoch millis.
    pub shift_end: Option<i64>,
    /// Availability within the shift.
    pub availability: Availability,
    /// Last upstream change, epoch millis.
    pub updated_at: i64,
}
