//! `cmms.NormalizedWorkOrder`: one maintenance request from CMMS intake.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Safety or compliance weight of a piece of work (`cmms.SafetyClass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SafetyClass {
    /// No safety implication.
    None,
    /// A hazard to people or property if left.
    Safety,
    /// Life-safety systems: fire, egress, gas, elevators with people trapped.
    LifeSafety,
    /// Required by a regulator or an inspection regime.
    Regulatory,
    /// A symbol this version does not know (schema evolution).
    Unknown,
}

/// Maximo `WORKTYPE` class (`cmms.WorkType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkType {
    /// Fix something that failed or is failing.
    Corrective,
    /// Scheduled maintenance from a PM plan.
    Preventive,
    /// Must be attended to at once.
    Emergency,
    /// Look and report, no repair planned.
    Inspection,
    /// Planned improvement work.
    Project,
    /// A symbol this version does not know (schema evolution).
    Unknown,
}

/// The preventive-maintenance schedule an order was generated from (`cmms.PmSchedule`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PmSchedule {
    /// PM record number (Maximo `PMNUM`).
    pub pm_id: String,
    /// Earliest time the PM should be done, epoch millis.
    pub window_start: i64,
    /// Latest time the PM should be done, epoch millis.
    pub window_end: i64,
    /// Interval of the PM in days.
    pub frequency_days: Option<i32>,
}

/// A normalized work order as read from the input topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormalizedWorkOrder {
    /// Record layout version.
    pub schema_version: i32,
    /// Upstream order number; the idempotency key.
    pub order_id: String,
    /// Upstream system name.
    pub source_system: String,
    /// Site; `None` (or blank) makes the order invalid.
    pub site_id: Option<String>,
    /// Building or functional location within the site.
    pub location: Option<String>,
    /// Asset number, when the work is about one asset.
    pub asset_id: Option<String>,
    /// Failure impact of the asset, 1 to 5.
    pub asset_criticality: Option<i32>,
    /// Serviced under a vendor contract.
    pub vendor_managed: bool,
    /// Safety or compliance weight.
    pub safety_class: SafetyClass,
    /// Work type class.
    pub work_type: WorkType,
    /// Trade code; must be declared in the topology.
    pub trade: String,
    /// Skill or certification codes the work needs.
    pub required_skills: Vec<String>,
    /// Required craft skill level, 1 to 5.
    pub skill_level: Option<i32>,
    /// Upstream priority, 1 (highest) to 5.
    pub priority: Option<i32>,
    /// When the problem was reported, epoch millis.
    pub reported_at: i64,
    /// When the order was created, epoch millis.
    pub created_at: i64,
    /// Target completion, epoch millis.
    pub sla_deadline: Option<i64>,
    /// PM schedule, for preventive work.
    pub pm: Option<PmSchedule>,
    /// Free text from the requester.
    pub description: String,
    /// Source-specific details. A `BTreeMap` so encoding is deterministic,
    /// which keeps batch ids stable across replays.
    pub attributes: BTreeMap<String, String>,
}
