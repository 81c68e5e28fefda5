//! NIST Nestor mining excavator work orders (`nestor-excavators.csv`) as
//! work orders.
//!
//! Columns `BscStartDate,Asset,OriginalShorttext,PMType,Cost`. One site
//! (`nestor-mine`), five assets (`excavator-A` .. `excavator-E`),
//! `order_id = "nestor-" + 1-based data row number`, which is stable for the
//! file (the file has no order number of its own, and identical rows occur).
//!
//! # Trade
//!
//! From the free text, by the first group in [`TRADE_KEYWORDS`] with a
//! keyword at the start of a word (text lower-cased, punctuation turned into
//! spaces, so `A/C` reads `a c` and `air con.` reads `air con`):
//!
//! 1. hvac: air con, aircon, air cond, a/c, a/cond, ac, heater
//! 2. electrical: light, lamp, wiring, wire, starter, alternator, electric,
//!    batt(ery), fuse, jump start
//! 3. hydraulics: hyd(raulic), hose, cyl(inder), leak, pump
//! 4. mechanical: engine, eng, bucket, tooth, teeth, track, pin, bush, grease,
//!    boom
//!
//! Fallback `mechanical`: an excavator job that names none of these is
//! almost always structure, filters or lube (`lube fault`, `replace air
//! cleaners`, `lip shroud`). The order matters: a light on a boom cylinder is
//! an electrician's job (`boom cyl light u/s`), a leaking bucket cylinder a
//! hydraulic fitter's (`L/H BUCKET CYL LEAKING.`).
//!
//! # Work type
//!
//! `PMType` is an SAP order type. Values in the file and their mapping:
//!
//! | PMType | rows | what the text shows | work type |
//! |---|---|---|---|
//! | PM01 | 5,216 | breakdown and defect repairs | CORRECTIVE |
//! | PM02 | 153 | planned component change-outs (`CHANGEOUT ~ ...`) | PREVENTIVE |
//! | PM03 | 0 | (SAP: planned refurbishment) | PREVENTIVE |
//! | PM04 | 7 | capital work (`CAPITAL - ...`, camera upgrades) | PROJECT |
//! | PM06 | 98 | accident-damage repairs | CORRECTIVE |
//! | PM13 | 6 | repair of a removed component (`Cost to repair M/N ...`) | CORRECTIVE |
//! | PM05 | 4 | annual ground-engaging-tool cost collectors (`MINING GET - SHD023 FY10`) | UNKNOWN |
//! | anything else | 1 | a row broken by an unquoted comma (`won,t swing`) | UNKNOWN, with a `replay_warning` |
//!
//! Preventive orders carry a [`PmSchedule`] whose window is the basic start
//! date (that whole UTC day) and whose id is `<PMType>-<asset>`: the file has
//! no PM number, so the id names the plan type and the asset.
//!
//! # Safety and priority
//!
//! `LIFE_SAFETY` (priority 1) when the text mentions fire (suppression and
//! alarm systems); `SAFETY` (priority 2) for brakes and the access way
//! (handrails, stairs, ladders, walkways), which people fall from; else
//! `NONE` (priority 3). Work type stays what `PMType` says: it is a recorded
//! fact, unlike the NYC 311 work type, which is our judgement.
//!
//! # Time
//!
//! Dates only. `created_at = reported_at = BscStartDate 00:00 UTC + row
//! number seconds`: the seconds give orders of one day distinct, stable
//! times in file order, which the router's ordering by creation time would
//! otherwise leave to chance. With 5,485 rows the offset stays under two
//! hours, so it never moves an order into the next day. A row whose date
//! cannot be parsed takes the file's earliest date and a `replay_warning`.
//! No SLA deadline: the data has none.

use std::collections::BTreeMap;
use std::io::Read;

use chrono::NaiveDate;

use super::{LoadError, Source, Table, Warnings};
use crate::model::{NormalizedWorkOrder, PmSchedule, SafetyClass, WorkType, SCHEMA_VERSION};

/// Columns read, in the order [`convert_row`] indexes them.
const COLUMNS: [&str; 5] = [
    "BscStartDate",
    "Asset",
    "OriginalShorttext",
    "PMType",
    "Cost",
];

/// The one site all excavators work at.
const SITE_ID: &str = "nestor-mine";

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Trade keyword groups, tried in order; a keyword matches at the start of a
/// word, and one ending in a space must also end the word.
const TRADE_KEYWORDS: [(&str, &[&str]); 4] = [
    (
        "hvac",
        &[
            "air con", "aircon", "air cond", "a c ", "a cond", "ac ", "heater",
        ],
    ),
    (
        "electrical",
        &[
            "light",
            "lamp",
            "wiring",
            "wire",
            "starter",
            "alternator",
            "electric",
            "batt",
            "fuse",
            "jump start",
            "jumpstart",
        ],
    ),
    ("hydraulics", &["hyd", "hose", "cyl", "leak", "pump"]),
    (
        "mechanical",
        &[
            "engine", "eng ", "bucket", "tooth", "teeth", "track", "pin", "bush", "grease", "boom",
        ],
    ),
];

/// Trade of a job whose text names none of [`TRADE_KEYWORDS`].
const FALLBACK_TRADE: &str = "mechanical";

/// Words that make a job life-safety work: fire suppression and alarms.
const LIFE_SAFETY_KEYWORDS: [&str; 1] = ["fire"];

/// Words that make a job safety work: brakes and the access way.
const SAFETY_KEYWORDS: [&str; 7] = [
    "brake",
    "handrail",
    "hand rail",
    "h rail",
    "stair",
    "ladder",
    "walkway",
];

/// Converts the whole file; see the module docs for the rules.
pub(super) fn convert<R: Read>(input: R) -> Result<Vec<NormalizedWorkOrder>, LoadError> {
    let table = Table::read(Source::Nestor, input, &COLUMNS)?;
    // Stand-in date for rows whose own cannot be parsed.
    let file_start = table
        .rows
        .iter()
        .filter_map(|r| r.first().and_then(|date| parse_date(date)))
        .min()
        .unwrap_or(0);
    Ok(table
        .rows
        .iter()
        .enumerate()
        .map(|(i, row)| convert_row(i as u64 + 1, row, file_start))
        .collect())
}

fn convert_row(row_number: u64, row: &[String], file_start: i64) -> NormalizedWorkOrder {
    let field = |i: usize| row.get(i).map(String::as_str).unwrap_or_default();
    let (date, asset, text, pm_type, cost) = (field(0), field(1), field(2), field(3), field(4));
    let mut warnings = Warnings::default();

    let day_start = parse_date(date).unwrap_or_else(|| {
        warnings.push(format!(
            "unparseable BscStartDate {date:?}; used the file's earliest"
        ));
        file_start
    });
    // Row numbers are far below i64::MAX / 1000; see the module docs.
    let created_at = day_start + i64::try_from(row_number).unwrap_or(0) * 1000;

    let work_type = work_type(pm_type);
    if !is_pm_code(pm_type) {
        warnings.push(format!(
            "PMType {pm_type:?} is not a PMnn code (an unquoted comma in the text?)"
        ));
    }
    if !cost.is_empty() && cost.parse::<f64>().is_err() {
        warnings.push(format!("Cost {cost:?} is not a number"));
    }

    let asset_id = format!("excavator-{asset}");
    let pm = (work_type == WorkType::Preventive).then(|| PmSchedule {
        pm_id: format!("{pm_type}-{asset_id}"),
        window_start: day_start,
        window_end: day_start + DAY_MS,
        frequency_days: None,
    });

    let words = words(text);
    let safety_class = if has_keyword(&words, &LIFE_SAFETY_KEYWORDS) {
        SafetyClass::LifeSafety
    } else if has_keyword(&words, &SAFETY_KEYWORDS) {
        SafetyClass::Safety
    } else {
        SafetyClass::None
    };
    let priority = match safety_class {
        SafetyClass::LifeSafety => 1,
        SafetyClass::Safety => 2,
        _ => 3,
    };

    let mut attributes = BTreeMap::from([
        ("asset".to_owned(), asset.to_owned()),
        ("cost".to_owned(), cost.to_owned()),
        ("pm_type".to_owned(), pm_type.to_owned()),
    ]);
    warnings.store(&mut attributes);

    NormalizedWorkOrder {
        schema_version: SCHEMA_VERSION,
        order_id: format!("nestor-{row_number}"),
        source_system: Source::Nestor.as_str().to_owned(),
        site_id: Some(SITE_ID.to_owned()),
        location: None,
        asset_id: Some(asset_id),
        asset_criticality: None,
        vendor_managed: false,
        safety_class,
        work_type,
        trade: trade(&words).to_owned(),
        required_skills: Vec::new(),
        skill_level: None,
        priority: Some(priority),
        reported_at: created_at,
        created_at,
        sla_deadline: None,
        pm,
        description: text.to_owned(),
        attributes,
    }
}

/// `YYYY-MM-DD` as midnight UTC in epoch millis.
fn parse_date(text: &str) -> Option<i64> {
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

fn is_pm_code(pm_type: &str) -> bool {
    // `get` rather than indexing: the text may hold multi-byte characters.
    match (pm_type.get(..2), pm_type.get(2..)) {
        (Some(prefix), Some(digits)) => {
            prefix.eq_ignore_ascii_case("PM")
                && !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    }
}

/// Work type by the table in the module docs.
fn work_type(pm_type: &str) -> WorkType {
    match pm_type.to_ascii_uppercase().as_str() {
        "PM01" | "PM06" | "PM13" => WorkType::Corrective,
        "PM02" | "PM03" => WorkType::Preventive,
        "PM04" => WorkType::Project,
        _ => WorkType::Unknown,
    }
}

/// The text lower-cased with every run of non-alphanumerics turned into one
/// space, padded with a space at both ends so keywords can anchor on them.
fn words(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push(' ');
    for c in text.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.ends_with(' ') {
            out.push(' ');
        }
    }
    if !out.ends_with(' ') {
        out.push(' ');
    }
    out
}

/// Whether a keyword starts a word of `words` (the output of [`words`]).
fn has_keyword(words: &str, keywords: &[&str]) -> bool {
    keywords.iter().any(|k| {
        // Anchored on the space before the word; `words` always starts with one.
        words
            .match_indices(k)
            .any(|(at, _)| at > 0 && words.as_bytes()[at - 1] == b' ')
    })
}

fn trade(words: &str) -> &'static str {
    TRADE_KEYWORDS
        .iter()
        .find(|(_, keywords)| has_keyword(words, keywords))
        .map_or(FALLBACK_TRADE, |(trade, _)| trade)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::tests::{codec, data_file};
    use crate::replay::{load, trade_counts, WARNING_ATTRIBUTE};

    fn orders() -> Option<Vec<NormalizedWorkOrder>> {
        let path = data_file(Source::Nestor)?;
        Some(load(Source::Nestor, &path).expect("nestor file loads"))
    }

    fn trade_of(text: &str) -> &'static str {
        trade(&words(text))
    }

    #[test]
    fn keyword_table_on_real_phrasings() {
        assert_eq!(trade_of("air con. not getting cold."), "hvac");
        assert_eq!(trade_of("RF - CHECK REAR A/C (HOT AIR)"), "hvac");
        assert_eq!(trade_of("CHARGE AIRCON"), "hvac");
        assert_eq!(trade_of("L/H BUCKET CYL LEAKING."), "hydraulics");
        assert_eq!(trade_of("BLOWN HYD HOSE."), "hydraulics");
        assert_eq!(
            trade_of("CHECK ALTERNATOR LIGHT ON RH ENGINE."),
            "electrical"
        );
        assert_eq!(
            trade_of("LH outer & RH inner boom cyl light u/s"),
            "electrical"
        );
        assert_eq!(trade_of("FIT BUCKET TOOTH"), "mechanical");
        assert_eq!(trade_of("Lube fault"), FALLBACK_TRADE);
        // "ACC" (accident) is not "AC"; "spin" does not start with "pin".
        assert_eq!(trade_of("ACC DAMAGE spin"), FALLBACK_TRADE);
    }

    #[test]
    fn every_row_becomes_one_order() {
        let Some(orders) = orders() else { return };
        assert_eq!(orders.len(), 5_485);
        assert_eq!(orders[0].order_id, "nestor-1");
        assert_eq!(orders[5_484].order_id, "nestor-5485");
        assert!(orders.iter().all(|o| o.site_id.as_deref() == Some(SITE_ID)));
        let assets: std::collections::BTreeSet<_> = orders
            .iter()
            .filter_map(|o| o.asset_id.as_deref())
            .collect();
        assert_eq!(
            assets.into_iter().collect::<Vec<_>>(),
            [
                "excavator-A",
                "excavator-B",
                "excavator-C",
                "excavator-D",
                "excavator-E"
            ]
        );
    }

    #[test]
    fn first_row_is_midnight_utc_plus_its_row_number() {
        let Some(orders) = orders() else { return };
        let first = &orders[0];
        // 2004-07-01T00:00:01Z
        assert_eq!(first.created_at, 1_088_640_001_000);
        assert_eq!(first.reported_at, first.created_at);
        assert_eq!(first.description, "BUCKET WON'T OPEN");
        assert_eq!(first.trade, "mechanical");
        assert_eq!(first.work_type, WorkType::Corrective);
        assert_eq!(first.attributes["pm_type"], "PM01");
        assert_eq!(first.attributes["cost"], "183.05");
        assert_eq!(first.attributes["asset"], "A");
    }

    #[test]
    fn air_con_rows_map_to_hvac() {
        let Some(orders) = orders() else { return };
        let air_con: Vec<_> = orders
            .iter()
            .filter(|o| {
                let text = o.description.to_ascii_lowercase();
                text.starts_with("air con") || text.starts_with("a/c ")
            })
            .collect();
        assert!(air_con.len() > 20, "found {}", air_con.len());
        for order in air_con {
            assert_eq!(order.trade, "hvac", "{:?}", order.description);
        }
    }

    #[test]
    fn pm_types_map_to_work_types() {
        let Some(orders) = orders() else { return };
        let mut by_type: std::collections::HashMap<(&str, WorkType), u64> =
            std::collections::HashMap::new();
        for order in &orders {
            *by_type
                .entry((order.attributes["pm_type"].as_str(), order.work_type))
                .or_default() += 1;
        }
        let preventive = orders
            .iter()
            .filter(|o| o.work_type == WorkType::Preventive)
            .count();
        assert_eq!(preventive, 153);
        assert!(orders
            .iter()
            .filter(|o| o.work_type == WorkType::Preventive)
            .all(|o| o
                .pm
                .as_ref()
                .is_some_and(|pm| pm.window_end - pm.window_start == DAY_MS)));
        assert!(orders
            .iter()
            .filter(|o| o.work_type != WorkType::Preventive)
            .all(|o| o.pm.is_none()));
        assert_eq!(by_type.get(&("PM04", WorkType::Project)), Some(&7));
        assert_eq!(by_type.get(&("PM05", WorkType::Unknown)), Some(&4));
        assert_eq!(by_type.get(&("PM06", WorkType::Corrective)), Some(&98));
    }

    #[test]
    fn the_row_broken_by_a_comma_is_kept_with_a_warning() {
        let Some(orders) = orders() else { return };
        let warned: Vec<_> = orders
            .iter()
            .filter(|o| o.attributes.contains_key(WARNING_ATTRIBUTE))
            .collect();
        assert_eq!(warned.len(), 1);
        let broken = warned[0];
        assert_eq!(broken.description, "won");
        assert_eq!(broken.work_type, WorkType::Unknown);
        let warning = &broken.attributes[WARNING_ATTRIBUTE];
        assert!(
            warning.contains("\"t swing\"") && warning.contains("\"PM01\""),
            "{warning}"
        );
    }

    #[test]
    fn unparseable_date_takes_the_file_start_with_a_warning() {
        let csv = "BscStartDate,Asset,OriginalShorttext,PMType,Cost\n\
                   2004-07-01,A,FIT BUCKET TOOTH,PM01,0\n\
                   01/07/2004,B,A/C not cold,PM01,\n";
        let orders = convert(csv.as_bytes()).expect("converts");
        assert_eq!(orders.len(), 2);
        assert_eq!(orders[1].created_at, orders[0].created_at + 1000);
        assert_eq!(orders[1].trade, "hvac");
        assert!(orders[1].attributes[WARNING_ATTRIBUTE].contains("\"01/07/2004\""));
        assert!(!orders[0].attributes.contains_key(WARNING_ATTRIBUTE));
    }

    #[test]
    fn per_trade_and_safety_counts() {
        let Some(orders) = orders() else { return };
        let counts = trade_counts(&orders);
        eprintln!("nestor per-trade counts: {counts:?}");
        assert_eq!(counts.values().sum::<u64>(), 5_485);
        let expected: BTreeMap<String, u64> = [
            ("electrical", 302),
            ("hvac", 225),
            ("hydraulics", 1_567),
            ("mechanical", 3_391),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(counts, expected);
        let count = |class: SafetyClass| orders.iter().filter(|o| o.safety_class == class).count();
        assert_eq!(count(SafetyClass::LifeSafety), 54);
        assert_eq!(count(SafetyClass::Safety), 206);
        assert_eq!(count(SafetyClass::None), 5_225);
    }

    #[test]
    fn every_order_round_trips_through_the_real_schema() {
        let Some(orders) = orders() else { return };
        let codec = codec();
        for order in &orders {
            let bytes = codec.encode_work_order(order).expect("encodes");
            let back = codec.decode_work_order(&bytes).expect("decodes");
            assert_eq!(&back, order);
        }
    }
}
