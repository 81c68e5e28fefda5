//! Decode and validate one input record.
//!
//! Every record ends here as either a [`ValidOrder`] or a [`Rejection`] that
//! carries a stable reason code and a detail quoting the offending value. A
//! rejection is the record's fault: it goes to the dead-letter topic and the
//! loop goes on. Nothing in this module panics on record content.

use crate::codec::Codec;
use crate::model::{DeadLetterReason, NormalizedWorkOrder};
use crate::topology::Topology;

/// Why a record cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable reason code.
    pub reason: DeadLetterReason,
    /// Human-readable detail naming the field and value.
    pub detail: String,
}

impl Rejection {
    fn new(reason: DeadLetterReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// A work order that passed validation: it has an order id, a site and a
/// declared trade, and its times and ranges make sense.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidOrder {
    order: NormalizedWorkOrder,
    site: String,
}

impl ValidOrder {
    /// The order.
    pub fn order(&self) -> &NormalizedWorkOrder {
        &self.order
    }

    /// The site, trimmed and non-empty.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// Gives the order back.
    pub fn into_order(self) -> NormalizedWorkOrder {
        self.order
    }
}

/// Decodes `value` and validates it.
pub fn accept(
    codec: &Codec,
    topology: &Topology,
    value: Option<&[u8]>,
) -> Result<ValidOrder, Rejection> {
    let bytes = value.ok_or_else(|| {
        Rejection::new(
            DeadLetterReason::Undecodable,
            "record has no value (tombstone); expected a cmms.NormalizedWorkOrder",
        )
    })?;
    let order = codec
        .decode_work_order(bytes)
        .map_err(|e| Rejection::new(DeadLetterReason::Undecodable, e.to_string()))?;
    validate(order, topology)
}

/// Validates a decoded order.
pub fn validate(order: NormalizedWorkOrder, topology: &Topology) -> Result<ValidOrder, Rejection> {
    use DeadLetterReason::*;
    if order.order_id.trim().is_empty() {
        return Err(Rejection::new(MissingOrderId, "order_id is blank"));
    }
    let site = match order.site_id.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => s.to_string(),
        Some(_) => {
            return Err(Rejection::new(
                MissingSite,
                format!("order {:?}: site_id is blank", order.order_id),
            ))
        }
        None => {
            return Err(Rejection::new(
                MissingSite,
                format!("order {:?}: site_id is null", order.order_id),
            ))
        }
    };
    if topology.route(&order.trade).is_none() {
        let known: Vec<&str> = topology.trades.keys().map(String::as_str).collect();
        return Err(Rejection::new(
            UnknownTrade,
            format!(
                "order {:?}: trade {:?} is not declared in the topology (known: {})",
                order.order_id,
                order.trade,
                known.join(", ")
            ),
        ));
    }
    if let Some(deadline) = order.sla_deadline {
        if deadline < order.created_at {
            return Err(Rejection::new(
                DeadlineBeforeCreation,
                format!(
                    "order {:?}: sla_deadline {deadline} is before created_at {}",
                    order.order_id, order.created_at
                ),
            ));
        }
    }
    for (field, value) in [
        ("asset_criticality", order.asset_criticality),
        ("priority", order.priority),
        ("skill_level", order.skill_level),
    ] {
        if let Some(v) = value {
            if !(1..=5).contains(&v) {
                return Err(Rejection::new(
                    InvalidField,
                    format!("order {:?}: {field} {v} is outside 1 to 5", order.order_id),
                ));
            }
        }
    }
    if let Some(pm) = &order.pm {
        if pm.window_end < pm.window_start {
            return Err(Rejection::new(
                InvalidField,
                format!(
                    "order {:?}: pm window ends ({}) before it starts ({})",
                    order.order_id, pm.window_end, pm.window_start
                ),
            ));
        }
    }
    Ok(ValidOrder { order, site })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::{samples, PmSchedule};

    fn topology() -> Topology {
        Topology::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/topology/topology.toml"
        )))
        .expect("valid")
    }

    fn reason(order: NormalizedWorkOrder) -> DeadLetterReason {
        validate(order, &topology()).expect_err("invalid").reason
    }

    #[test]
    fn sample_order_is_valid_and_site_is_trimmed() {
        let mut o = samples::work_order("WO-1", " S1 ", "hvac");
        o.site_id = Some(" S1 ".into());
        assert_eq!(validate(o, &topology()).expect("valid").site(), "S1");
    }

    #[test]
    fn each_rule_has_its_reason() {
        let base = || samples::work_order("WO-1", "S1", "hvac");
        assert_eq!(
            reason(NormalizedWorkOrder {
                order_id: " ".into(),
                ..base()
            }),
            DeadLetterReason::MissingOrderId
        );
        assert_eq!(
            reason(NormalizedWorkOrder {
                site_id: None,
                ..base()
            }),
            DeadLetterReason::MissingSite
        );
        assert_eq!(
            reason(NormalizedWorkOrder {
                site_id: Some("".into()),
                ..base()
            }),
            DeadLetterReason::MissingSite
        );
        assert_eq!(
            reason(NormalizedWorkOrder {
                trade: "astrology".into(),
                ..base()
            }),
            DeadLetterReason::UnknownTrade
        );
        let early = NormalizedWorkOrder {
            sla_deadline: Some(base().created_at - 1),
            ..base()
        };
        assert_eq!(reason(early), DeadLetterReason::DeadlineBeforeCreation);
        assert_eq!(
            reason(NormalizedWorkOrder {
                priority: Some(0),
                ..base()
            }),
            DeadLetterReason::InvalidField
        );
        let pm = PmSchedule {
            pm_id: "PM".into(),
            window_start: 10,
            window_end: 5,
            frequency_days: None,
        };
        assert_eq!(
            reason(NormalizedWorkOrder {
                pm: Some(pm),
                ..base()
            }),
            DeadLetterReason::InvalidField
        );
    }

    #[test]
    fn unknown_trade_detail_quotes_the_value() {
        let o = samples::work_order("WO-1", "S1", "astrology");
        let r = validate(o, &topology()).expect_err("unknown");
        assert!(
            r.detail.contains("\"astrology\"") && r.detail.contains("hvac"),
            "{}",
            r.detail
        );
    }

    #[test]
    fn tombstones_and_garbage_are_undecodable() {
        let codec = Codec::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas")))
            .expect("schemas");
        let t = topology();
        assert_eq!(
            accept(&codec, &t, None).expect_err("none").reason,
            DeadLetterReason::Undecodable
        );
        assert_eq!(
            accept(&codec, &t, Some(b"\x00\x01junk"))
                .expect_err("junk")
                .reason,
            DeadLetterReason::Undecodable
        );
    }
}
