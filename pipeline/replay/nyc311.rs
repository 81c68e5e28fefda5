//! NYC 311 service requests (`nyc311-2013-12-25.csv`) as work orders.
//!
//! One row is one order, `order_id = "nyc311-" + Unique Key`. A site is a
//! building: the normalized `Incident Address` plus `Incident Zip`; a blank
//! address leaves the site empty, which the router dead-letters as a missing
//! site (street complaints often have no address).
//!
//! # Trade
//!
//! Only HPD (housing maintenance) and DOB (buildings) requests are work for a
//! building trade. By `Agency` / `Complaint Type` / `Descriptor`:
//!
//! | agency | complaint type | trade | why |
//! |---|---|---|---|
//! | HPD | HEATING | hvac | |
//! | HPD | PLUMBING (incl. RADIATOR) | plumbing | HPD files radiators under plumbing; in NYC steam radiators are a plumber's or steamfitter's job |
//! | HPD | ELECTRIC (incl. LIGHTING, BELL-BUZZER/INTERCOM) | electrical | |
//! | HPD | GENERAL CONSTRUCTION / GAS | plumbing | gas piping is licensed plumbing work in NYC |
//! | HPD | GENERAL CONSTRUCTION / VENTILATION SYSTEM | hvac | |
//! | HPD | anything else (GENERAL CONSTRUCTION, PAINT - PLASTER, NONCONST, APPLIANCE, GENERAL, DOOR/WINDOW, ...) | general | building upkeep for a handyman crew |
//! | DOB | Boilers | hvac | a boiler out in winter is a heating failure |
//! | DOB | Elevator | elevator | |
//! | DOB | Plumbing | plumbing | |
//! | DOB | General Construction/Plumbing | general | in this data all its descriptors are construction (fences, egress, stop-work orders) |
//! | DOB | anything else (Building/Use, SPIT) | `non_building` | zoning and illegal-use enforcement, not a repair |
//! | any other agency (NYPD, DOT, DEP, DSNY, DOHMH, ...) | | `non_building` | |
//!
//! DEP "Water System" and "Sewer" rows are `non_building` too: they are
//! about city mains, hydrants, catch basins and street cuts that DEP's own
//! crews maintain, not about plumbing inside the building at the address.
//!
//! # Safety, work type, priority
//!
//! Judged only for building rows (a non-building row goes to the fallback
//! desk, which sees the raw complaint in its attributes):
//!
//! - `LIFE_SAFETY` when the descriptor names carbon monoxide, smoke (detectors),
//!   fire, egress, people trapped, or is HPD's `GAS`. Such orders are
//!   `EMERGENCY`, priority 1.
//! - `SAFETY` for no heat in the heat season (HPD HEATING and DOB Boilers
//!   created 1 October to 31 May, NYC's legal heat season) and for a defective
//!   elevator with nobody reported trapped. `CORRECTIVE`, priority 2. Heat
//!   complaints stay `CORRECTIVE` rather than `EMERGENCY` on purpose: they are
//!   half the file, and as emergencies they would all take the fast lane and
//!   bypass the site windows whose batching of repeat complaints from one
//!   building is what this data is good for.
//! - Everything else `NONE`, `CORRECTIVE`, priority 3.
//!
//! # Time
//!
//! `Created Date` and `Due Date` are New York local times such as
//! `12/25/2013 11:59:08 PM`. They are read with a fixed `-05:00` offset (EST):
//! right for the December file this was written for, an hour off for
//! summer-time rows of other files. `chrono-tz` is not a dependency and an
//! hour does not matter to a replay that rebases all times anyway.
//! `created_at = reported_at = Created Date`; `sla_deadline = Due Date` when
//! present and parseable. A row whose `Created Date` cannot be parsed takes
//! the earliest creation time of the file and a `replay_warning`.

use std::collections::BTreeMap;
use std::io::Read;

use chrono::{Datelike, FixedOffset, NaiveDateTime};

use super::{LoadError, Source, Table, Warnings, NON_BUILDING_TRADE};
use crate::model::{NormalizedWorkOrder, SafetyClass, WorkType, SCHEMA_VERSION};

/// Columns read, in the order of [`Row`]'s fields.
const COLUMNS: [&str; 11] = [
    "Unique Key",
    "Created Date",
    "Due Date",
    "Agency",
    "Complaint Type",
    "Descriptor",
    "Location Type",
    "Status",
    "Incident Address",
    "Incident Zip",
    "Borough",
];

/// Layout of the 311 export's timestamps.
const TIME_FORMAT: &str = "%m/%d/%Y %I:%M:%S %p";

/// EST; see the module docs for why a fixed offset is acceptable.
const NEW_YORK_WINTER_OFFSET_SECS: i32 = -5 * 3600;

/// One row, by column name.
struct Row<'a> {
    unique_key: &'a str,
    created: &'a str,
    due: &'a str,
    agency: &'a str,
    complaint_type: &'a str,
    descriptor: &'a str,
    location_type: &'a str,
    status: &'a str,
    address: &'a str,
    zip: &'a str,
    borough: &'a str,
}

impl<'a> Row<'a> {
    fn new(fields: &'a [String]) -> Self {
        let f = |i: usize| fields.get(i).map(String::as_str).unwrap_or_default();
        Self {
            unique_key: f(0),
            created: f(1),
            due: f(2),
            agency: f(3),
            complaint_type: f(4),
            descriptor: f(5),
            location_type: f(6),
            status: f(7),
            address: f(8),
            zip: f(9),
            borough: f(10),
        }
    }
}

/// Converts the whole file; see the module docs for the rules.
pub(super) fn convert<R: Read>(input: R) -> Result<Vec<NormalizedWorkOrder>, LoadError> {
    let table = Table::read(Source::Nyc311, input, &COLUMNS)?;
    let rows: Vec<Row<'_>> = table.rows.iter().map(|r| Row::new(r)).collect();
    // Stand-in creation time for rows whose own cannot be parsed.
    let file_start = rows
        .iter()
        .filter_map(|r| parse_time(r.created))
        .min()
        .unwrap_or(0);
    Ok(rows
        .iter()
        .enumerate()
        .map(|(i, row)| convert_row(i as u64 + 1, row, file_start))
        .collect())
}

fn convert_row(row_number: u64, row: &Row<'_>, file_start: i64) -> NormalizedWorkOrder {
    let mut warnings = Warnings::default();

    let order_id = if row.unique_key.is_empty() {
        warnings.push(format!(
            "blank Unique Key; id made from data row {row_number}"
        ));
        format!("nyc311-row-{row_number}")
    } else {
        format!("nyc311-{}", row.unique_key)
    };

    let created_at = parse_time(row.created).unwrap_or_else(|| {
        warnings.push(format!(
            "unparseable Created Date {:?}; used the file's earliest",
            row.created
        ));
        file_start
    });
    let sla_deadline = if row.due.is_empty() {
        None
    } else {
        let parsed = parse_time(row.due);
        if parsed.is_none() {
            warnings.push(format!("unparseable Due Date {:?}; no deadline", row.due));
        }
        parsed
    };

    let trade = trade(row.agency, row.complaint_type, row.descriptor);
    let safety_class = safety(row, trade, created_at);
    let (work_type, priority) = match safety_class {
        SafetyClass::LifeSafety => (WorkType::Emergency, 1),
        SafetyClass::Safety => (WorkType::Corrective, 2),
        _ => (WorkType::Corrective, 3),
    };

    let mut attributes = BTreeMap::new();
    for (key, value) in [
        ("agency", row.agency),
        ("complaint_type", row.complaint_type),
        ("descriptor", row.descriptor),
        ("location_type", row.location_type),
        ("status", row.status),
    ] {
        // Blank columns are left out rather than stored as "".
        if !value.is_empty() {
            attributes.insert(key.to_owned(), value.to_owned());
        }
    }
    warnings.store(&mut attributes);

    NormalizedWorkOrder {
        schema_version: SCHEMA_VERSION,
        order_id,
        source_system: Source::Nyc311.as_str().to_owned(),
        site_id: site_id(row.address, row.zip),
        location: Some(row.borough)
            .filter(|b| !b.is_empty() && !b.eq_ignore_ascii_case("Unspecified"))
            .map(str::to_owned),
        asset_id: None,
        asset_criticality: None,
        vendor_managed: false,
        safety_class,
        work_type,
        trade: trade.to_owned(),
        // Nothing in a 311 row names a certification; guessing one would make
        // the roster matching look better informed than the data is.
        required_skills: Vec::new(),
        skill_level: None,
        priority: Some(priority),
        reported_at: created_at,
        created_at,
        sla_deadline,
        pm: None,
        description: row.descriptor.to_owned(),
        attributes,
    }
}

/// Parses a 311 timestamp as New York winter time into epoch millis.
fn parse_time(text: &str) -> Option<i64> {
    let local = NaiveDateTime::parse_from_str(text, TIME_FORMAT).ok()?;
    let offset = FixedOffset::east_opt(NEW_YORK_WINTER_OFFSET_SECS)?;
    let at = local.and_local_timezone(offset).single()?;
    Some(at.timestamp_millis())
}

/// `"<ADDRESS> <ZIP>"` with the address upper-cased and its whitespace
/// collapsed, so the spellings of one building agree; `None` for a blank
/// address. The zip is left out when blank rather than dropping the site.
fn site_id(address: &str, zip: &str) -> Option<String> {
    let address = address
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase();
    if address.is_empty() {
        return None;
    }
    let zip = zip.trim();
    Some(if zip.is_empty() {
        address
    } else {
        format!("{address} {zip}")
    })
}

/// Trade by the table in the module docs.
fn trade(agency: &str, complaint_type: &str, descriptor: &str) -> &'static str {
    let complaint = complaint_type.to_ascii_uppercase();
    match agency.to_ascii_uppercase().as_str() {
        "HPD" => match complaint.as_str() {
            "HEATING" => "hvac",
            "PLUMBING" => "plumbing",
            "ELECTRIC" => "electrical",
            "GENERAL CONSTRUCTION" => match descriptor.to_ascii_uppercase().as_str() {
                "GAS" => "plumbing",
                "VENTILATION SYSTEM" => "hvac",
                _ => "general",
            },
            _ => "general",
        },
        "DOB" => match complaint.as_str() {
            "BOILERS" => "hvac",
            "ELEVATOR" => "elevator",
            "PLUMBING" => "plumbing",
            "GENERAL CONSTRUCTION/PLUMBING" => "general",
            _ => NON_BUILDING_TRADE,
        },
        _ => NON_BUILDING_TRADE,
    }
}

/// Descriptor words that make a building request life-safety work.
const LIFE_SAFETY_WORDS: [&str; 6] = [
    "CARBON MONOXIDE",
    "SMOKE",
    "FIRE",
    "EGRESS",
    "TRAPPED",
    "ENTRAPMENT",
];

/// First month after the heat season (1 October to 31 May).
const HEAT_SEASON_ENDS_BEFORE_MONTH: u32 = 6;
/// First month of the heat season.
const HEAT_SEASON_STARTS_MONTH: u32 = 10;

/// Safety class by the rules in the module docs.
fn safety(row: &Row<'_>, trade: &str, created_at: i64) -> SafetyClass {
    if trade == NON_BUILDING_TRADE {
        return SafetyClass::None;
    }
    let descriptor = row.descriptor.to_ascii_uppercase();
    // HPD's bare "GAS" is a gas leak or outage; "ELECTRIC/GAS RANGE" (an
    // appliance) is not, hence the exact match instead of a word search.
    if descriptor == "GAS" || LIFE_SAFETY_WORDS.iter().any(|w| descriptor.contains(w)) {
        return SafetyClass::LifeSafety;
    }
    let complaint = row.complaint_type.to_ascii_uppercase();
    let heating = complaint == "HEATING" || complaint == "BOILERS";
    if heating && in_heat_season(created_at) {
        return SafetyClass::Safety;
    }
    if complaint == "ELEVATOR" {
        return SafetyClass::Safety;
    }
    SafetyClass::None
}

fn in_heat_season(at_ms: i64) -> bool {
    let Some(offset) = FixedOffset::east_opt(NEW_YORK_WINTER_OFFSET_SECS) else {
        return false;
    };
    match chrono::DateTime::from_timestamp_millis(at_ms) {
        Some(utc) => {
            let month = utc.with_timezone(&offset).month();
            !(HEAT_SEASON_ENDS_BEFORE_MONTH..HEAT_SEASON_STARTS_MONTH).contains(&month)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::tests::{codec, data_file};
    use crate::replay::{load, trade_counts, WARNING_ATTRIBUTE};

    fn orders() -> Option<Vec<NormalizedWorkOrder>> {
        let path = data_file(Source::Nyc311)?;
        Some(load(Source::Nyc311, &path).expect("nyc311 file loads"))
    }

    fn attr<'a>(order: &'a NormalizedWorkOrder, key: &str) -> &'a str {
        order
            .attributes
            .get(key)
            .map(String::as_str)
            .unwrap_or_default()
    }

    #[test]
    fn every_row_becomes_one_order_with_a_unique_id() {
        let Some(orders) = orders() else { return };
        assert_eq!(orders.len(), 2_386);
        let ids: std::collections::HashSet<_> = orders.iter().map(|o| &o.order_id).collect();
        assert_eq!(ids.len(), orders.len());
        assert!(orders.iter().all(|o| o.source_system == "nyc311"));
        assert!(orders
            .iter()
            .all(|o| !o.attributes.contains_key(WARNING_ATTRIBUTE)));
    }

    #[test]
    fn hpd_heating_is_hvac_safety_in_december() {
        let Some(orders) = orders() else { return };
        let heating: Vec<_> = orders
            .iter()
            .filter(|o| attr(o, "agency") == "HPD" && attr(o, "complaint_type") == "HEATING")
            .collect();
        assert_eq!(heating.len(), 1_201);
        for order in heating {
            assert_eq!(order.trade, "hvac", "{}", order.order_id);
            assert_eq!(order.safety_class, SafetyClass::Safety);
            assert_eq!(order.work_type, WorkType::Corrective);
            assert_eq!(order.priority, Some(2));
        }
    }

    #[test]
    fn agencies_without_a_building_trade_are_kept_as_non_building() {
        let Some(orders) = orders() else { return };
        let nypd: Vec<_> = orders
            .iter()
            .filter(|o| attr(o, "agency") == "NYPD")
            .collect();
        assert_eq!(nypd.len(), 298);
        assert!(nypd.iter().all(|o| o.trade == NON_BUILDING_TRADE));
        let building = ["HPD", "DOB"];
        for order in &orders {
            if !building.contains(&attr(order, "agency")) {
                assert_eq!(order.trade, NON_BUILDING_TRADE, "{}", order.order_id);
            }
        }
    }

    #[test]
    fn blank_addresses_keep_the_order_without_a_site() {
        let Some(orders) = orders() else { return };
        let no_site = orders.iter().filter(|o| o.site_id.is_none()).count();
        assert_eq!(no_site, 272);
    }

    #[test]
    fn first_row_is_read_as_new_york_winter_time() {
        let Some(orders) = orders() else { return };
        let first = &orders[0];
        assert_eq!(first.order_id, "nyc311-26984072");
        // 12/25/2013 11:59:08 PM EST is 2013-12-26T04:59:08Z.
        assert_eq!(first.created_at, 1_388_033_948_000);
        assert_eq!(first.reported_at, first.created_at);
        // Due 12/26/2013 07:59:08 AM EST.
        assert_eq!(first.sla_deadline, Some(1_388_062_748_000));
        assert_eq!(first.site_id.as_deref(), Some("952 EAST 58 STREET 11234"));
        assert_eq!(first.location.as_deref(), Some("BROOKLYN"));
        assert_eq!(first.description, "No Access");
        assert_eq!(attr(first, "complaint_type"), "Blocked Driveway");
        assert_eq!(attr(first, "status"), "Closed");
    }

    #[test]
    fn elevators_gas_and_smoke_detectors_are_classified() {
        let Some(orders) = orders() else { return };
        for order in &orders {
            match (attr(order, "complaint_type"), attr(order, "descriptor")) {
                ("Elevator", _) => {
                    assert_eq!(order.trade, "elevator");
                    assert_eq!(order.safety_class, SafetyClass::Safety);
                }
                ("GENERAL CONSTRUCTION", "GAS") | ("NONCONST", "SMOKE-DETECTOR") => {
                    assert_eq!(order.safety_class, SafetyClass::LifeSafety);
                    assert_eq!(order.work_type, WorkType::Emergency);
                    assert_eq!(order.priority, Some(1));
                }
                ("APPLIANCE", _) => {
                    assert_eq!(order.trade, "general");
                    assert_eq!(order.safety_class, SafetyClass::None);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn per_trade_and_safety_counts() {
        let Some(orders) = orders() else { return };
        let counts = trade_counts(&orders);
        eprintln!("nyc311 per-trade counts: {counts:?}");
        let expected: BTreeMap<String, u64> = [
            ("electrical", 37),
            ("elevator", 8),
            ("general", 154),
            ("hvac", 1_207),
            ("non_building", 901),
            ("plumbing", 79),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(counts.values().sum::<u64>(), 2_386);
        assert_eq!(counts, expected);
        let count = |class: SafetyClass| orders.iter().filter(|o| o.safety_class == class).count();
        // CO 2, smoke detectors 3, gas 5, blocked egress 1.
        assert_eq!(count(SafetyClass::LifeSafety), 11);
        // Heating 1,201, boilers 5, elevators 8.
        assert_eq!(count(SafetyClass::Safety), 1_214);
    }

    #[test]
    fn unparseable_dates_keep_the_row_with_a_warning() {
        let csv = "Unique Key,Created Date,Due Date,Agency,Complaint Type,Descriptor,\
                   Location Type,Status,Incident Address,Incident Zip,Borough\n\
                   1,12/25/2013 10:00:00 AM,,HPD,HEATING,HEAT,,Open,1 MAIN  st,10001,BRONX\n\
                   2,yesterday,soon,NYPD,Noise,Loud,,Open,,,Unspecified\n";
        let orders = convert(csv.as_bytes()).expect("converts");
        assert_eq!(orders.len(), 2);
        assert_eq!(orders[0].site_id.as_deref(), Some("1 MAIN ST 10001"));
        assert!(!orders[0].attributes.contains_key(WARNING_ATTRIBUTE));
        let bad = &orders[1];
        assert_eq!(bad.created_at, orders[0].created_at);
        assert_eq!(bad.sla_deadline, None);
        assert_eq!(bad.site_id, None);
        assert_eq!(bad.location, None);
        let warning = attr(bad, WARNING_ATTRIBUTE);
        assert!(
            warning.contains("\"yesterday\"") && warning.contains("\"soon\""),
            "{warning}"
        );
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
