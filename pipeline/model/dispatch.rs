//! `cmms.DispatchBatch`: one job packet for one trade at one site.

use serde::{Deserialize, Serialize};

use super::NormalizedWorkOrder;

/// Which kind of topic a packet went to (`cmms.Destination`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Destination {
    /// The trade's own dispatch topic.
    Trade,
    /// The vendor desk: vendor-managed work nobody on shift can take.
    VendorDesk,
    /// The fallback topic: work with no building trade, or nobody to take it.
    Fallback,
}

/// Urgency tier (`cmms.Tier`), most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Tier {
    /// Life-safety, emergencies, site-stopping failures.
    Critical,
    /// Urgent but not critical.
    High,
    /// Everything else that is not preventive.
    Standard,
    /// Preventive work that can wait for its window.
    PmWindow,
}

/// Why a site batch closed (`cmms.CloseReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CloseReason {
    /// The batch reached `max_orders`.
    MaxOrders,
    /// `max_wait` passed since its first order.
    MaxWait,
    /// A critical order that is not held back.
    FastLane,
    /// The router is shutting down and flushed it.
    Shutdown,
    /// A symbol this version does not know (schema evolution).
    Other,
    /// Its input partition was moved to another instance, which flushed
    /// it before handing the partition over.
    Revoked,
}

impl CloseReason {
    /// Stable lowercase label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxOrders => "max_orders",
            Self::MaxWait => "max_wait",
            Self::FastLane => "fast_lane",
            Self::Shutdown => "shutdown",
            Self::Other => "other",
            Self::Revoked => "revoked",
        }
    }
}

/// Why nobody on shift can take an order (`cmms.UnassignedReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnassignedReason {
    /// Nobody on shift at the site holds the trade and skills.
    NoQualifiedTechnician,
    /// Someone would qualify, but the certification has expired.
    CertificationExpired,
    /// Someone would qualify, but is not on shift now.
    OutsideShift,
    /// The request is not building maintenance work at all.
    NotBuildingTrade,
    /// A symbol this version does not know (schema evolution).
    Other,
    /// Its input partition was moved to another instance, which flushed
    /// it before handing the partition over.
    Revoked,
}

/// The routing score and its parts (`cmms.Score`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Score {
    /// Weighted sum of the parts; orders are sorted on it, highest first.
    pub total: f64,
    /// Asset failure impact x safety weight.
    pub criticality: f64,
    /// Time left to the SLA deadline.
    pub urgency: f64,
    /// Required skills against on-shift certifications.
    pub trade_match: f64,
    /// Distance from the preventive-maintenance window.
    pub pm_window: f64,
}

/// A technician who could take an order (`cmms.Candidate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Technician id.
    pub technician_id: String,
    /// Share of the required skills held, 0 to 1.
    #[serde(rename = "match")]
    pub match_ratio: f64,
}

/// One order inside a packet (`cmms.RoutedOrder`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutedOrder {
    /// The order as received.
    pub order: NormalizedWorkOrder,
    /// Input partition it was read from.
    pub source_partition: i32,
    /// Input offset it was read from.
    pub source_offset: i64,
    /// Score with its parts.
    pub score: Score,
    /// Tier of the order.
    pub tier: Tier,
    /// Technicians who could take it, best first.
    pub candidates: Vec<Candidate>,
    /// Why nobody can take it, if so.
    pub unassigned_reason: Option<UnassignedReason>,
    /// Earlier order for the same site, asset and problem.
    pub repeat_of: Option<String>,
    /// Routing flags for the dispatcher.
    pub flags: Vec<String>,
}

/// A job packet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DispatchBatch {
    /// Record layout version.
    pub schema_version: i32,
    /// Deterministic id from content and input coordinates.
    pub batch_id: String,
    /// Site of every order.
    pub site_id: String,
    /// Trade code of the packet.
    pub trade: String,
    /// Kind of topic it went to.
    pub destination: Destination,
    /// Tier of the most urgent order.
    pub tier: Tier,
    /// Why the site batch closed.
    pub close_reason: CloseReason,
    /// Earliest SLA deadline among the orders, epoch millis.
    pub earliest_sla_deadline: Option<i64>,
    /// When the site batch got its first order, epoch millis.
    pub opened_at: i64,
    /// When the site batch closed, epoch millis.
    pub closed_at: i64,
    /// Orders, highest score first.
    pub orders: Vec<RoutedOrder>,
}
