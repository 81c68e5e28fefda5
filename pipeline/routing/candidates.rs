//! Who can take an order: the roster lookup, the short list of candidate
//! technicians, and the reason when nobody qualifies.
//!
//! A technician is a **candidate** for an order at `now_ms` when all of these
//! hold:
//!
//! - listed at the order's site and in its trade;
//! - **on duty**: `shift_start <= now < shift_end` (both known) and
//!   availability `AVAILABLE`;
//! - holds **every** required skill with a certification valid now
//!   (`expires_at` absent or after `now`). A certification that expires later
//!   in the shift is valid now and counts: the order is offered to someone
//!   qualified at the moment of routing. Partial matches are not candidates:
//!   required skills are certifications (refrigerant handling, electrical
//!   safety) that the work legally or contractually needs, so a technician
//!   missing one cannot be sent. Partial coverage still shows in the
//!   trade-match part of the score;
//! - at or above the order's required skill level, when both levels are
//!   known (a roster without levels does not exclude anyone).
//!
//! Candidates are ranked by match (always 1.0 under the rule above, kept so
//! the field means the same if partial matches are ever allowed), then by the
//! smallest skill-level surplus (a master is not proposed ahead of an adequate
//! journeyman; unknown levels last), then by technician id, so the list is
//! deterministic. At most `candidates.max` are listed.
//!
//! When nobody is a candidate, the reason is, in this order:
//! [`CertificationExpired`](UnassignedReason::CertificationExpired) when
//! someone listed holds every required skill code but at least one only with
//! an expired certification; [`OutsideShift`](UnassignedReason::OutsideShift)
//! when someone holds them all validly but is not on duty (outside the shift
//! hours, or busy, off or on leave: the schema has no separate reason, and the
//! dispatcher's choice is the same, wait or send someone else);
//! [`NoQualifiedTechnician`](UnassignedReason::NoQualifiedTechnician)
//! otherwise. Both "would qualify" tests still require the site, trade and
//! skill level.
//!
//! Skill codes compare trimmed and case-insensitively (`"epa608 "` is
//! `EPA608`); blank codes are ignored.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use crate::model::{
    Availability, Candidate, NormalizedWorkOrder, TechnicianRoster, UnassignedReason,
};

/// Read access to the technician roster, as of one snapshot.
pub trait RosterView {
    /// Every technician listed at `site` with `trade`, whatever their shift,
    /// availability or certificates: routing decides who qualifies, and needs
    /// the ones who do not to give the unassigned reason.
    fn technicians(&self, site: &str, trade: &str) -> Vec<TechnicianRoster>;
}

/// An in-memory roster, for tests, benches and replays.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StaticRoster {
    by_id: BTreeMap<String, TechnicianRoster>,
}

impl StaticRoster {
    /// A roster holding `technicians`; a later entry with the same id
    /// replaces an earlier one, as on the compacted roster topic.
    pub fn new(technicians: impl IntoIterator<Item = TechnicianRoster>) -> Self {
        let mut roster = Self::default();
        for t in technicians {
            roster.upsert(t);
        }
        roster
    }

    /// Adds or replaces a technician.
    pub fn upsert(&mut self, technician: TechnicianRoster) {
        self.by_id
            .insert(technician.technician_id.clone(), technician);
    }

    /// Removes a technician (a tombstone on the roster topic).
    pub fn remove(&mut self, technician_id: &str) -> Option<TechnicianRoster> {
        self.by_id.remove(technician_id)
    }

    /// Number of technicians.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the roster is empty.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

impl RosterView for StaticRoster {
    fn technicians(&self, site: &str, trade: &str) -> Vec<TechnicianRoster> {
        self.by_id
            .values()
            .filter(|t| lists(&t.sites, site) && lists(&t.trades, trade))
            .cloned()
            .collect()
    }
}

fn lists(values: &[String], wanted: &str) -> bool {
    values.iter().any(|v| v.trim() == wanted.trim())
}

/// Whether the technician is on duty at `now_ms`: inside a known shift and
/// available.
pub fn is_on_duty(technician: &TechnicianRoster, now_ms: i64) -> bool {
    let in_shift = match (technician.shift_start, technician.shift_end) {
        (Some(start), Some(end)) => start <= now_ms && now_ms < end,
        // An unknown shift is not a shift: nobody is dispatched on a guess.
        _ => false,
    };
    in_shift && technician.availability == Availability::Available
}

/// Whether a certification expiring at `expires_at` is valid at `now_ms`.
/// One that expires at exactly `now_ms` is no longer valid.
pub fn is_valid_at(expires_at: Option<i64>, now_ms: i64) -> bool {
    expires_at.is_none_or(|at| at > now_ms)
}

/// How a technician holds one required skill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holding {
    Valid,
    ExpiredOnly,
    Missing,
}

/// The skill codes an order needs, normalised (trimmed, upper-case),
/// deduplicated and without blanks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredSkills {
    trade: String,
    codes: Vec<String>,
    level: Option<i32>,
}

impl RequiredSkills {
    /// The requirements of `order`.
    pub fn of(order: &NormalizedWorkOrder) -> Self {
        let mut codes: Vec<String> = order
            .required_skills
            .iter()
            .map(|c| normalize_code(c))
            .filter(|c| !c.is_empty())
            .collect();
        codes.sort();
        codes.dedup();
        Self {
            trade: order.trade.clone(),
            codes,
            level: order.skill_level,
        }
    }

    /// The normalised codes.
    pub fn codes(&self) -> &[String] {
        &self.codes
    }

    /// Whether the technician is listed at `site` in the order's trade.
    pub fn works_at(&self, technician: &TechnicianRoster, site: &str) -> bool {
        lists(&technician.sites, site) && lists(&technician.trades, &self.trade)
    }

    /// Share of the required skills the technician holds with a certificate
    /// valid at `now_ms`; 1.0 when none are required.
    pub fn share_held(&self, technician: &TechnicianRoster, now_ms: i64) -> f64 {
        if self.codes.is_empty() {
            return 1.0;
        }
        let valid = self
            .codes
            .iter()
            .filter(|c| holding(technician, c, now_ms) == Holding::Valid)
            .count();
        valid as f64 / self.codes.len() as f64
    }

    /// Whether the technician's skill level is enough (unknown on either side
    /// is enough), and by how much it exceeds the requirement.
    fn level_fit(&self, technician: &TechnicianRoster) -> Option<Surplus> {
        match (self.level, technician.skill_level) {
            (Some(needed), Some(has)) if has < needed => None,
            (Some(needed), Some(has)) => Some(Surplus::Known(has - needed)),
            _ => Some(Surplus::Unknown),
        }
    }

    fn standing(&self, technician: &TechnicianRoster, site: &str, now_ms: i64) -> Standing {
        if !self.works_at(technician, site) {
            return Standing::Unqualified;
        }
        let Some(surplus) = self.level_fit(technician) else {
            return Standing::Unqualified;
        };
        let holdings: Vec<Holding> = self
            .codes
            .iter()
            .map(|c| holding(technician, c, now_ms))
            .collect();
        if holdings.contains(&Holding::Missing) {
            Standing::Unqualified
        } else if holdings.contains(&Holding::ExpiredOnly) {
            Standing::CertificationExpired
        } else if is_on_duty(technician, now_ms) {
            Standing::Candidate(surplus)
        } else {
            Standing::OutsideShift
        }
    }
}

fn normalize_code(code: &str) -> String {
    code.trim().to_ascii_uppercase()
}

fn holding(technician: &TechnicianRoster, code: &str, now_ms: i64) -> Holding {
    let mut held = Holding::Missing;
    for cert in &technician.certifications {
        if normalize_code(&cert.code) == code {
            if is_valid_at(cert.expires_at, now_ms) {
                return Holding::Valid;
            }
            held = Holding::ExpiredOnly;
        }
    }
    held
}

/// Skill level above the requirement; `Unknown` ranks after any known one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Surplus {
    Known(i32),
    Unknown,
}

/// What one technician is to one order at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Candidate(Surplus),
    CertificationExpired,
    OutsideShift,
    Unqualified,
}

/// A non-empty, ranked list of at most `candidates.max` candidates.
#[derive(Debug, Clone, PartialEq)]
pub struct Shortlist(Vec<Candidate>);

impl Shortlist {
    /// The candidates, best first.
    pub fn as_slice(&self) -> &[Candidate] {
        &self.0
    }

    /// The candidates, best first.
    pub fn into_vec(self) -> Vec<Candidate> {
        self.0
    }
}

/// Who can take an order: a short list, or why nobody can.
#[derive(Debug, Clone, PartialEq)]
pub enum Assignment {
    /// At least one candidate.
    Candidates(Shortlist),
    /// Nobody qualifies, for this reason.
    Unassigned(UnassignedReason),
}

/// Ranks the technicians the roster lists for the order's site and trade.
pub fn assign(
    order: &NormalizedWorkOrder,
    technicians: &[TechnicianRoster],
    site: &str,
    max: NonZeroUsize,
    now_ms: i64,
) -> Assignment {
    let skills = RequiredSkills::of(order);
    let mut ranked: Vec<(Surplus, &str, f64)> = Vec::new();
    let (mut expired, mut outside) = (false, false);
    for t in technicians {
        match skills.standing(t, site, now_ms) {
            Standing::Candidate(surplus) => ranked.push((
                surplus,
                t.technician_id.as_str(),
                skills.share_held(t, now_ms),
            )),
            Standing::CertificationExpired => expired = true,
            Standing::OutsideShift => outside = true,
            Standing::Unqualified => {}
        }
    }
    if ranked.is_empty() {
        return Assignment::Unassigned(if expired {
            UnassignedReason::CertificationExpired
        } else if outside {
            UnassignedReason::OutsideShift
        } else {
            UnassignedReason::NoQualifiedTechnician
        });
    }
    ranked.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(b.1)));
    // The same technician listed twice (a roster view that does not
    // deduplicate) is proposed once.
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked.truncate(max.get());
    Assignment::Candidates(Shortlist(
        ranked
            .into_iter()
            .map(|(_, id, share)| Candidate {
                technician_id: id.to_string(),
                match_ratio: share,
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::{samples, Certification};

    const HOUR: i64 = 3_600_000;
    const NOW: i64 = samples::MONDAY_8AM;

    fn max(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).expect("positive")
    }

    fn order(skills: &[&str]) -> NormalizedWorkOrder {
        let mut o = samples::work_order("A", "S1", "hvac");
        o.required_skills = skills.iter().map(|s| s.to_string()).collect();
        o.skill_level = None;
        o
    }

    use crate::model::samples::certified_technician as tech;

    fn ids(a: &Assignment) -> Vec<&str> {
        match a {
            Assignment::Candidates(list) => list
                .as_slice()
                .iter()
                .map(|c| c.technician_id.as_str())
                .collect(),
            Assignment::Unassigned(_) => vec![],
        }
    }

    /// Candidate ids in rank order, or the unassigned reason.
    type Expected = Result<Vec<&'static str>, UnassignedReason>;

    #[test]
    fn standing_table() {
        use UnassignedReason::*;
        let both = [("EPA608", None), ("NFPA70E", None)];
        let at = |mut t: TechnicianRoster, f: fn(&mut TechnicianRoster)| {
            f(&mut t);
            t
        };
        // (case, roster, expected candidate ids, or the reason)
        let table: Vec<(&str, Vec<TechnicianRoster>, Expected)> = vec![
            ("nobody", vec![], Err(NoQualifiedTechnician)),
            ("fully certified", vec![tech("T1", &both)], Ok(vec!["T1"])),
            (
                "partial match is not a candidate",
                vec![tech("T1", &[("EPA608", None)])],
                Err(NoQualifiedTechnician),
            ),
            (
                "certification expired before now",
                vec![tech("T1", &[("EPA608", Some(-HOUR)), ("NFPA70E", None)])],
                Err(CertificationExpired),
            ),
            (
                "certification expiring exactly now",
                vec![tech("T1", &[("EPA608", Some(0)), ("NFPA70E", None)])],
                Err(CertificationExpired),
            ),
            (
                "certification expiring during the shift counts",
                vec![tech("T1", &[("EPA608", Some(HOUR)), ("NFPA70E", None)])],
                Ok(vec!["T1"]),
            ),
            (
                "an expired and a valid copy of one certification",
                vec![tech(
                    "T1",
                    &[("EPA608", Some(-HOUR)), ("epa608", None), ("NFPA70E", None)],
                )],
                Ok(vec!["T1"]),
            ),
            (
                "technician at another site",
                vec![at(tech("T1", &both), |t| t.sites = vec!["S2".into()])],
                Err(NoQualifiedTechnician),
            ),
            (
                "technician in another trade",
                vec![at(tech("T1", &both), |t| {
                    t.trades = vec!["plumbing".into()]
                })],
                Err(NoQualifiedTechnician),
            ),
            (
                "shift not started",
                vec![at(tech("T1", &both), |t| t.shift_start = Some(NOW + 1))],
                Err(OutsideShift),
            ),
            (
                "shift ends exactly now",
                vec![at(tech("T1", &both), |t| t.shift_end = Some(NOW))],
                Err(OutsideShift),
            ),
            (
                "shift starts exactly now",
                vec![at(tech("T1", &both), |t| t.shift_start = Some(NOW))],
                Ok(vec!["T1"]),
            ),
            (
                "unknown shift",
                vec![at(tech("T1", &both), |t| t.shift_end = None)],
                Err(OutsideShift),
            ),
            (
                "busy",
                vec![at(tech("T1", &both), |t| {
                    t.availability = Availability::Busy
                })],
                Err(OutsideShift),
            ),
            (
                "expired outranks outside shift",
                vec![
                    at(tech("T1", &both), |t| t.availability = Availability::Off),
                    tech("T2", &[("EPA608", Some(-1)), ("NFPA70E", None)]),
                ],
                Err(CertificationExpired),
            ),
            (
                "one qualified among unqualified",
                vec![
                    tech("T3", &[("EPA608", None)]),
                    tech("T2", &[("EPA608", Some(-1)), ("NFPA70E", None)]),
                    tech("T1", &both),
                ],
                Ok(vec!["T1"]),
            ),
        ];
        for (case, roster, expected) in table {
            let got = assign(&order(&["EPA608", "NFPA70E"]), &roster, "S1", max(3), NOW);
            match expected {
                Ok(want) => assert_eq!(ids(&got), want, "{case}"),
                Err(reason) => assert_eq!(got, Assignment::Unassigned(reason), "{case}"),
            }
        }
    }

    #[test]
    fn no_required_skills_anyone_of_the_trade_on_duty() {
        let got = assign(&order(&[]), &[tech("T1", &[])], "S1", max(3), NOW);
        assert_eq!(ids(&got), ["T1"]);
        if let Assignment::Candidates(list) = got {
            assert_eq!(list.as_slice()[0].match_ratio, 1.0);
        }
    }

    #[test]
    fn ranked_by_skill_fit_then_id_and_capped() {
        let mut o = order(&["EPA608"]);
        o.skill_level = Some(3);
        let level = |id: &str, l: Option<i32>| {
            let mut t = tech(id, &[("EPA608", None)]);
            t.skill_level = l;
            t
        };
        let roster = [
            level("T5", Some(5)),
            level("T4", Some(3)),
            level("T3", None),
            level("T2", Some(3)),
            level("T1", Some(2)),
        ];
        let got = assign(&o, &roster, "S1", max(10), NOW);
        // T1 is below the required level; T2 and T4 fit exactly (by id),
        // then the master, then the unknown level.
        assert_eq!(ids(&got), ["T2", "T4", "T5", "T3"]);
        let got = assign(&o, &roster, "S1", max(2), NOW);
        assert_eq!(ids(&got), ["T2", "T4"]);
    }

    #[test]
    fn static_roster_lists_site_and_trade_only() {
        let mut other_site = tech("T2", &[]);
        other_site.sites = vec!["S2".into()];
        let roster = StaticRoster::new([tech("T1", &[]), other_site, tech("T1", &[])]);
        assert_eq!(roster.len(), 2);
        let listed: Vec<_> = roster
            .technicians("S1", "hvac")
            .into_iter()
            .map(|t| t.technician_id)
            .collect();
        assert_eq!(listed, ["T1"]);
        assert!(roster.technicians("S1", "plumbing").is_empty());
    }

    proptest! {
        /// However the roster looks, nobody whose needed certification has
        /// expired at `now` becomes a candidate.
        #[test]
        fn expired_certification_never_makes_a_candidate(
            techs in prop::collection::vec(
                (
                    prop::collection::vec((0..3usize, prop::option::of(-10 * HOUR..10 * HOUR)), 0..5),
                    -10 * HOUR..0i64,
                    0..10 * HOUR,
                    any::<bool>(),
                ),
                0..8,
            ),
            needed in prop::collection::btree_set(0..3usize, 0..3),
        ) {
            let codes = ["EPA608", "NFPA70E", "OSHA10"];
            let roster: Vec<TechnicianRoster> = techs
                .iter()
                .enumerate()
                .map(|(i, (certs, start, end, available))| {
                    let mut t = tech(&format!("T{i}"), &[]);
                    t.certifications = certs
                        .iter()
                        .map(|(c, exp)| Certification {
                            code: codes[*c].into(),
                            expires_at: exp.map(|e| NOW + e),
                        })
                        .collect();
                    t.shift_start = Some(NOW + start);
                    t.shift_end = Some(NOW + end);
                    if !available {
                        t.availability = Availability::Busy;
                    }
                    t
                })
                .collect();
            let skills: Vec<&str> = needed.iter().map(|&c| codes[c]).collect();
            let got = assign(&order(&skills), &roster, "S1", max(10), NOW);
            for id in ids(&got) {
                let t = roster.iter().find(|t| t.technician_id == id).expect("listed");
                for code in &skills {
                    prop_assert!(
                        t.certifications.iter().any(|c| c.code == *code && is_valid_at(c.expires_at, NOW)),
                        "{id} proposed without a valid {code}: {t:?}"
                    );
                }
                prop_assert!(is_on_duty(t, NOW));
            }
        }
    }
}
