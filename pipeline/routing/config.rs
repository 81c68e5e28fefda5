//! The routing matrix's settings, read from `topology/routing.toml`.
//!
//! Two layers, as everywhere in the router: a raw layer that mirrors the file
//! (every key optional, unknown keys rejected) and a validated
//! [`RoutingConfig`] that holds only values the scoring can use as they are:
//! weights normalised to sum to 1, fractions inside 0 to 1, tier thresholds in
//! order, durations as positive milliseconds, the optional features as
//! `Option`s that are `None` when switched off. Every error names the key, the
//! value and what would be accepted.
//!
//! [`RoutingConfig::default`] is the shipped file; a test keeps them equal.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::{SafetyClass, Score};

/// Longest duration a setting accepts: ten years in milliseconds. Far beyond
/// any sensible value, and small enough that adding it to an epoch-millis
/// timestamp cannot overflow.
const MAX_DURATION_MS: i64 = 10 * 365 * 24 * 3_600_000;

/// Most candidates a routed order may list.
const MAX_CANDIDATES: i64 = 100;

/// Most entries a history memory may hold (each is a few hundred bytes).
const MAX_REMEMBERED: i64 = 10_000_000;

/// A problem with the routing config.
#[derive(Debug, thiserror::Error)]
pub enum RoutingConfigError {
    /// The file could not be read.
    #[error("cannot read routing config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML, or an unknown or mistyped key.
    #[error("invalid routing config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key, and the line.
        message: String,
    },
    /// A value is out of range.
    #[error("routing config {path}, key `{key}`: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted key, e.g. `tiers.high`.
        key: &'static str,
        /// The value, what is wrong with it and what would be accepted.
        problem: String,
    },
}

/// The file as written. Each section's `Default` is the shipped value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRoutingConfig {
    weights: RawWeights,
    safety_weights: RawSafetyWeights,
    criticality: RawCriticality,
    urgency: RawUrgency,
    pm_window: RawPmWindow,
    tiers: RawTiers,
    candidates: RawCandidates,
    repeat: RawRepeat,
    pm_due_soon: RawPmDueSoon,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWeights {
    criticality: f64,
    urgency: f64,
    trade_match: f64,
    pm_window: f64,
}

impl Default for RawWeights {
    fn default() -> Self {
        Self {
            criticality: 0.40,
            urgency: 0.35,
            trade_match: 0.15,
            pm_window: 0.10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSafetyWeights {
    life_safety: f64,
    regulatory: f64,
    safety: f64,
    unknown: f64,
    none: f64,
}

impl Default for RawSafetyWeights {
    fn default() -> Self {
        Self {
            life_safety: 1.0,
            regulatory: 0.9,
            safety: 0.7,
            unknown: 0.55,
            none: 0.4,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCriticality {
    missing_asset_criticality: i64,
}

impl Default for RawCriticality {
    fn default() -> Self {
        Self {
            missing_asset_criticality: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUrgency {
    midpoint_ms: i64,
    without_deadline: f64,
}

impl Default for RawUrgency {
    fn default() -> Self {
        Self {
            midpoint_ms: 24 * 3_600_000,
            without_deadline: 0.1,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPmWindow {
    lead_ms: i64,
    start_value: f64,
}

impl Default for RawPmWindow {
    fn default() -> Self {
        Self {
            lead_ms: 7 * 24 * 3_600_000,
            start_value: 0.6,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTiers {
    critical: f64,
    high: f64,
}

impl Default for RawTiers {
    fn default() -> Self {
        Self {
            critical: 0.85,
            high: 0.55,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCandidates {
    max: i64,
}

impl Default for RawCandidates {
    fn default() -> Self {
        Self { max: 3 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRepeat {
    enabled: bool,
    period_ms: i64,
    max_remembered: i64,
}

impl Default for RawRepeat {
    fn default() -> Self {
        Self {
            enabled: true,
            period_ms: 72 * 3_600_000,
            max_remembered: 50_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPmDueSoon {
    enabled: bool,
    horizon_ms: i64,
    max_remembered: i64,
}

impl Default for RawPmDueSoon {
    fn default() -> Self {
        Self {
            enabled: true,
            horizon_ms: 14 * 24 * 3_600_000,
            max_remembered: 50_000,
        }
    }
}

/// Weights of the four score parts, normalised to sum to 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartWeights {
    criticality: f64,
    urgency: f64,
    trade_match: f64,
    pm_window: f64,
}

impl PartWeights {
    /// The weighted sum of a score's parts, between 0 and 1. The clamp only
    /// absorbs rounding (normalised weights can sum to 1 + 1 ulp), which keeps
    /// "overdue ranks above everything else" exact.
    pub fn weighted_sum(&self, parts: &Score) -> f64 {
        let sum = self.criticality * parts.criticality
            + self.urgency * parts.urgency
            + self.trade_match * parts.trade_match
            + self.pm_window * parts.pm_window;
        sum.clamp(0.0, 1.0)
    }

    /// Normalised weight of the criticality part.
    pub fn criticality(&self) -> f64 {
        self.criticality
    }

    /// Normalised weight of the urgency part.
    pub fn urgency(&self) -> f64 {
        self.urgency
    }

    /// Normalised weight of the trade-match part.
    pub fn trade_match(&self) -> f64 {
        self.trade_match
    }

    /// Normalised weight of the PM-window part.
    pub fn pm_window(&self) -> f64 {
        self.pm_window
    }
}

/// Safety / compliance multipliers of the criticality part, each 0 to 1, with
/// life-safety and regulatory at least as heavy as every other class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SafetyWeights {
    life_safety: f64,
    regulatory: f64,
    safety: f64,
    unknown: f64,
    none: f64,
}

impl SafetyWeights {
    /// The multiplier of a safety class.
    pub fn weight(&self, class: SafetyClass) -> f64 {
        match class {
            SafetyClass::LifeSafety => self.life_safety,
            SafetyClass::Regulatory => self.regulatory,
            SafetyClass::Safety => self.safety,
            SafetyClass::Unknown => self.unknown,
            SafetyClass::None => self.none,
        }
    }
}

/// Settings of the repeat-request feature (present only when it is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepeatSettings {
    /// How long a routed problem is remembered after it was last seen, ms.
    pub period_ms: i64,
    /// Most problems remembered at once.
    pub max_remembered: NonZeroUsize,
}

/// Settings of the PM-due-soon feature (present only when it is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmDueSoonSettings {
    /// How far ahead a PM window may open and still count as due soon, ms.
    pub horizon_ms: i64,
    /// Most preventive orders remembered at once.
    pub max_remembered: NonZeroUsize,
}

/// The validated routing settings. Built only by [`RoutingConfig::parse`],
/// [`RoutingConfig::load`] or [`RoutingConfig::default`], so every value in
/// it is in range.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    pub(super) weights: PartWeights,
    pub(super) safety_weights: SafetyWeights,
    /// 1 to 5.
    pub(super) missing_asset_criticality: i32,
    /// Positive.
    pub(super) urgency_midpoint_ms: i64,
    /// 0 to 1.
    pub(super) urgency_without_deadline: f64,
    /// Positive.
    pub(super) pm_lead_ms: i64,
    /// 0 to 1.
    pub(super) pm_start_value: f64,
    /// 0 <= high <= critical <= 1.
    pub(super) critical_threshold: f64,
    pub(super) high_threshold: f64,
    pub(super) max_candidates: NonZeroUsize,
    pub(super) repeat: Option<RepeatSettings>,
    pub(super) pm_due_soon: Option<PmDueSoonSettings>,
}

impl Default for RoutingConfig {
    /// The shipped `topology/routing.toml`.
    fn default() -> Self {
        RawRoutingConfig::default()
            .validate()
            .map_err(|(key, problem)| format!("{key}: {problem}"))
            .expect("the built-in routing defaults are valid (tested)")
    }
}

impl RoutingConfig {
    /// Reads and validates a routing config file.
    pub fn load(path: &Path) -> Result<Self, RoutingConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| RoutingConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates routing config text (`path` only names it in
    /// errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, RoutingConfigError> {
        let raw: RawRoutingConfig = toml::from_str(text).map_err(|e| {
            // 1-based line of the offending key or value.
            let line = e
                .span()
                .map(|span| text.get(..span.start).unwrap_or(text).matches('\n').count() + 1);
            RoutingConfigError::Parse {
                path: path.to_path_buf(),
                message: match line {
                    Some(line) => format!("line {line}: {}", e.message()),
                    None => e.message().to_string(),
                },
            }
        })?;
        raw.validate()
            .map_err(|(key, problem)| RoutingConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                problem,
            })
    }

    /// Weights of the four parts, normalised to sum to 1.
    pub fn weights(&self) -> &PartWeights {
        &self.weights
    }

    /// Safety / compliance multipliers.
    pub fn safety_weights(&self) -> &SafetyWeights {
        &self.safety_weights
    }

    /// Most candidates listed per order.
    pub fn max_candidates(&self) -> NonZeroUsize {
        self.max_candidates
    }

    /// Repeat-request settings, `None` when the feature is off.
    pub fn repeat(&self) -> Option<&RepeatSettings> {
        self.repeat.as_ref()
    }

    /// PM-due-soon settings, `None` when the feature is off.
    pub fn pm_due_soon(&self) -> Option<&PmDueSoonSettings> {
        self.pm_due_soon.as_ref()
    }
}

/// A validation failure: the key and what is wrong with its value.
type Invalid = (&'static str, String);

impl RawRoutingConfig {
    fn validate(self) -> Result<RoutingConfig, Invalid> {
        let w = &self.weights;
        let criticality = non_negative("weights.criticality", w.criticality)?;
        let urgency = non_negative("weights.urgency", w.urgency)?;
        let trade_match = non_negative("weights.trade_match", w.trade_match)?;
        let pm_window = non_negative("weights.pm_window", w.pm_window)?;
        let sum = criticality + urgency + trade_match + pm_window;
        if !(sum > 0.0 && sum.is_finite()) {
            return Err((
                "weights",
                format!("the four weights sum to {sum}; expected a finite, positive sum (they are relative, e.g. 0.4, 0.35, 0.15, 0.1)"),
            ));
        }
        let weights = PartWeights {
            criticality: criticality / sum,
            urgency: urgency / sum,
            trade_match: trade_match / sum,
            pm_window: pm_window / sum,
        };

        let s = &self.safety_weights;
        let safety_weights = SafetyWeights {
            life_safety: fraction("safety_weights.life_safety", s.life_safety)?,
            regulatory: fraction("safety_weights.regulatory", s.regulatory)?,
            safety: fraction("safety_weights.safety", s.safety)?,
            unknown: fraction("safety_weights.unknown", s.unknown)?,
            none: fraction("safety_weights.none", s.none)?,
        };
        let others = [
            ("safety", safety_weights.safety),
            ("unknown", safety_weights.unknown),
            ("none", safety_weights.none),
        ];
        for (key, top) in [
            ("safety_weights.life_safety", safety_weights.life_safety),
            ("safety_weights.regulatory", safety_weights.regulatory),
        ] {
            if let Some((name, other)) = others.iter().find(|(_, other)| *other > top) {
                return Err((
                    key,
                    format!("{top} is below {name} ({other}); life_safety and regulatory must weigh at least as much as safety, unknown and none"),
                ));
            }
        }

        let missing = self.criticality.missing_asset_criticality;
        if !(1..=5).contains(&missing) {
            return Err((
                "criticality.missing_asset_criticality",
                format!("{missing} is outside the asset criticality scale; expected 1 to 5"),
            ));
        }

        let tiers = &self.tiers;
        let critical_threshold = fraction("tiers.critical", tiers.critical)?;
        let high_threshold = fraction("tiers.high", tiers.high)?;
        if high_threshold > critical_threshold {
            return Err((
                "tiers.high",
                format!("{high_threshold} is above tiers.critical ({critical_threshold}); expected 0 <= high <= critical <= 1"),
            ));
        }

        let max = self.candidates.max;
        let max_candidates = usize::try_from(max)
            .ok()
            .filter(|n| (1..=MAX_CANDIDATES as usize).contains(n))
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| {
                (
                    "candidates.max",
                    format!("{max} is out of range; expected 1 to {MAX_CANDIDATES}"),
                )
            })?;

        let repeat = RepeatSettings {
            period_ms: duration_ms("repeat.period_ms", self.repeat.period_ms)?,
            max_remembered: capacity("repeat.max_remembered", self.repeat.max_remembered)?,
        };
        let pm_due_soon = PmDueSoonSettings {
            horizon_ms: duration_ms("pm_due_soon.horizon_ms", self.pm_due_soon.horizon_ms)?,
            max_remembered: capacity(
                "pm_due_soon.max_remembered",
                self.pm_due_soon.max_remembered,
            )?,
        };

        Ok(RoutingConfig {
            weights,
            safety_weights,
            missing_asset_criticality: missing as i32,
            urgency_midpoint_ms: duration_ms("urgency.midpoint_ms", self.urgency.midpoint_ms)?,
            urgency_without_deadline: fraction(
                "urgency.without_deadline",
                self.urgency.without_deadline,
            )?,
            pm_lead_ms: duration_ms("pm_window.lead_ms", self.pm_window.lead_ms)?,
            pm_start_value: fraction("pm_window.start_value", self.pm_window.start_value)?,
            critical_threshold,
            high_threshold,
            max_candidates,
            // Settings are validated even when a feature is off, so switching
            // it on later cannot uncover a bad value.
            repeat: self.repeat.enabled.then_some(repeat),
            pm_due_soon: self.pm_due_soon.enabled.then_some(pm_due_soon),
        })
    }
}

fn non_negative(key: &'static str, value: f64) -> Result<f64, Invalid> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err((
            key,
            format!("{value} is not allowed; expected a finite number >= 0"),
        ))
    }
}

fn fraction(key: &'static str, value: f64) -> Result<f64, Invalid> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err((
            key,
            format!("{value} is not allowed; expected a number from 0 to 1"),
        ))
    }
}

fn duration_ms(key: &'static str, value: i64) -> Result<i64, Invalid> {
    if (1..=MAX_DURATION_MS).contains(&value) {
        Ok(value)
    } else {
        Err((
            key,
            format!("{value} ms is out of range; expected 1 to {MAX_DURATION_MS} (ten years)"),
        ))
    }
}

fn capacity(key: &'static str, value: i64) -> Result<NonZeroUsize, Invalid> {
    usize::try_from(value)
        .ok()
        .filter(|_| value <= MAX_REMEMBERED)
        .and_then(NonZeroUsize::new)
        .ok_or_else(|| {
            (
                key,
                format!("{value} is out of range; expected 1 to {MAX_REMEMBERED}"),
            )
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `topology/routing.toml` in the crate root.
    pub(crate) fn shipped_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("topology/routing.toml")
    }

    /// A config from TOML text on top of the defaults; panics when invalid.
    pub(crate) fn config(text: &str) -> RoutingConfig {
        RoutingConfig::parse(text, Path::new("test.toml")).expect("valid test config")
    }

    fn error(text: &str) -> String {
        RoutingConfig::parse(text, Path::new("test.toml"))
            .expect_err("invalid")
            .to_string()
    }

    #[test]
    fn shipped_file_parses_to_the_default() {
        let shipped = RoutingConfig::load(&shipped_path()).expect("shipped file is valid");
        assert_eq!(shipped, RoutingConfig::default());
        assert_eq!(config(""), RoutingConfig::default());
    }

    #[test]
    fn defaults_are_what_the_file_says() {
        let c = RoutingConfig::default();
        assert!((c.weights.criticality() - 0.40).abs() < 1e-9);
        assert!((c.weights.urgency() - 0.35).abs() < 1e-9);
        assert_eq!(c.max_candidates().get(), 3);
        assert_eq!(c.repeat().map(|r| r.period_ms), Some(72 * 3_600_000));
        assert_eq!(
            c.pm_due_soon().map(|p| p.horizon_ms),
            Some(14 * 24 * 3_600_000)
        );
        assert!(
            c.safety_weights.weight(SafetyClass::LifeSafety)
                > c.safety_weights.weight(SafetyClass::None)
        );
    }

    #[test]
    fn weights_are_relative() {
        let c = config("[weights]\ncriticality = 4\nurgency = 3\ntrade_match = 2\npm_window = 1\n");
        let w = c.weights();
        let sum = w.criticality() + w.urgency() + w.trade_match() + w.pm_window();
        assert!((sum - 1.0).abs() < 1e-12);
        assert!((w.criticality() - 0.4).abs() < 1e-12);
    }

    #[test]
    fn switches_turn_features_off() {
        let c = config("[repeat]\nenabled = false\n[pm_due_soon]\nenabled = false\n");
        assert_eq!(c.repeat(), None);
        assert_eq!(c.pm_due_soon(), None);
    }

    #[test]
    fn bad_values_name_key_value_and_what_is_accepted() {
        let cases = [
            (
                "[weights]\nurgency = -0.5\n",
                &["`weights.urgency`", "-0.5", ">= 0"][..],
            ),
            (
                "[weights]\ncriticality = 0\nurgency = 0\ntrade_match = 0\npm_window = 0\n",
                &["`weights`", "positive"],
            ),
            (
                "[weights]\ncriticality = nan\n",
                &["`weights.criticality`", "NaN"],
            ),
            (
                "[safety_weights]\nnone = 1.5\n",
                &["`safety_weights.none`", "1.5", "0 to 1"],
            ),
            (
                "[safety_weights]\nregulatory = 0.5\n",
                &["`safety_weights.regulatory`", "0.5", "safety (0.7)"],
            ),
            (
                "[criticality]\nmissing_asset_criticality = 0\n",
                &["`criticality.missing_asset_criticality`", "0", "1 to 5"],
            ),
            (
                "[tiers]\nhigh = 0.9\n",
                &["`tiers.high`", "0.9", "high <= critical"],
            ),
            (
                "[candidates]\nmax = 0\n",
                &["`candidates.max`", "0", "1 to 100"],
            ),
            (
                "[urgency]\nmidpoint_ms = 0\n",
                &["`urgency.midpoint_ms`", "0 ms", "ten years"],
            ),
            (
                "[repeat]\nenabled = false\nperiod_ms = -5\n",
                &["`repeat.period_ms`", "-5"],
            ),
            (
                "[pm_due_soon]\nmax_remembered = 0\n",
                &["`pm_due_soon.max_remembered`", "0"],
            ),
        ];
        for (text, wanted) in cases {
            let err = error(text);
            for w in wanted {
                assert!(err.contains(w), "{text:?}: {err:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_parse_errors() {
        let err = error("[tiers]\ncritcal = 0.9\n");
        assert!(err.contains("critcal") && err.contains("line 2"), "{err}");
        let err = error("[repeat]\nenabled = \"yes\"\n");
        assert!(err.contains("line 2"), "{err}");
        let err = error("[routing]\nx = 1\n");
        assert!(err.contains("routing"), "{err}");
    }
}
