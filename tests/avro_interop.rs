//! Our Avro bytes are plain Avro: an independent implementation (Python
//! fastavro, via `tests/interop/fastavro_check.py`) parses the `.avsc` files
//! in `schemas/` itself, decodes every record type we encode, and writes a
//! work order that we decode.
//!
//! Needs `python3` with fastavro. A missing fastavro fails the test rather
//! than skipping it: a skipped interop test proves nothing, and CI installs
//! it (`pip install fastavro`).

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, SecondsFormat};
use cmms_router::codec::Codec;
use cmms_router::model::{samples, SafetyClass, UnassignedReason, WorkType};
use serde_json::{json, Value};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn schemas() -> PathBuf {
    repo().join("schemas")
}

fn codec() -> Codec {
    Codec::load(&schemas()).expect("schemas in the repository load")
}

/// Runs the checker with `args`, failing loudly when fastavro is missing.
fn fastavro_check(args: &[&Path]) -> Vec<u8> {
    let probe = Command::new("python3")
        .args(["-c", "import fastavro"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "python3 cannot import fastavro; install it with `pip install fastavro` \
             (this interop test does not skip): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run python3 ({e}); install Python 3 and `pip install fastavro` \
             to run the Avro interop test"
        ),
    }
    let out = Command::new("python3")
        .arg(repo().join("tests/interop/fastavro_check.py"))
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "fastavro_check.py {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// How fastavro prints a `timestamp-millis` value (see `to_json` in the script).
fn iso(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .expect("sample timestamps are in range")
        .to_rfc3339_opts(SecondsFormat::Millis, false)
}

#[test]
fn fastavro_decodes_every_record_type_we_encode() {
    let codec = codec();

    let mut order = samples::preventive_order("WO-PM-1", "SITE-7");
    order.sla_deadline = Some(samples::MONDAY_8AM + 90 * 60_000);
    order.description = "Prüfung Kessel – quarterly".to_string();
    order
        .attributes
        .insert("complaint_type".into(), "HEAT/HOT WATER".into());

    let mut roster = samples::technician("T-9", "SITE-7", "plumbing");
    roster.shift_end = None;

    let mut batch = samples::packet(vec![
        samples::work_order("WO-1", "SITE-7", "hvac"),
        samples::preventive_order("WO-2", "SITE-7"),
    ]);
    batch.orders[1].unassigned_reason = Some(UnassignedReason::OutsideShift);
    batch.orders[1].flags = vec!["pm_due_soon".into()];

    let dead = samples::dead_letter();
    let dedup = cmms_router::model::DedupEntry {
        schema_version: 1,
        order_id: "WO-PM-1".into(),
        input_partition: 3,
        first_seen_at: samples::MONDAY_8AM,
        expires_at: samples::MONDAY_8AM + 3_600_000,
        batch_id: Some("00000000-0000-5000-8000-000000000001".into()),
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let data = [
        ("work_order", codec.encode_work_order(&order)),
        ("technician_roster", codec.encode_roster(&roster)),
        ("dispatch_batch", codec.encode_dispatch(&batch)),
        ("dead_letter", codec.encode_dead_letter(&dead)),
        ("dedup_entry", codec.encode_dedup_entry(&dedup)),
    ];
    for (stem, bytes) in data {
        let bytes = bytes.expect("sample encodes");
        std::fs::write(dir.path().join(format!("{stem}.bin")), bytes).expect("write datum");
    }

    let stdout = fastavro_check(&[Path::new("read"), &schemas(), dir.path()]);
    let seen: Value = serde_json::from_slice(&stdout).expect("checker prints JSON");

    let wo = &seen["work_order"];
    assert_eq!(wo["order_id"], "WO-PM-1");
    assert_eq!(wo["site_id"], "SITE-7");
    assert_eq!(wo["safety_class"], "REGULATORY");
    assert_eq!(wo["work_type"], "PREVENTIVE");
    assert_eq!(wo["created_at"], iso(samples::MONDAY_8AM));
    assert_eq!(wo["reported_at"], iso(order.reported_at));
    assert_eq!(wo["sla_deadline"], "2026-01-05T09:30:00.000+00:00");
    assert_eq!(wo["asset_id"], "AHU-07");
    assert_eq!(wo["required_skills"], json!([]));
    assert_eq!(wo["description"], "Prüfung Kessel – quarterly");
    let pm = order.pm.as_ref().expect("preventive sample has a PM");
    assert_eq!(wo["pm"]["pm_id"], "PM-BOILER-Q");
    assert_eq!(wo["pm"]["window_start"], iso(pm.window_start));
    assert_eq!(wo["pm"]["window_end"], iso(pm.window_end));
    assert_eq!(wo["pm"]["frequency_days"], 90);
    assert_eq!(
        wo["attributes"],
        json!({"complaint_type": "HEAT/HOT WATER", "cost_centre": "FAC-200"})
    );

    let t = &seen["technician_roster"];
    assert_eq!(t["technician_id"], "T-9");
    assert_eq!(t["sites"], json!(["SITE-7"]));
    assert_eq!(t["trades"], json!(["plumbing"]));
    assert_eq!(t["availability"], "AVAILABLE");
    assert_eq!(t["shift_end"], Value::Null);
    assert_eq!(t["shift_start"], iso(samples::MONDAY_8AM - 3_600_000));
    assert_eq!(t["certifications"][0]["code"], "EPA608");
    assert_eq!(
        t["certifications"][0]["expires_at"],
        iso(roster.certifications[0].expires_at.expect("sample expires"))
    );

    let b = &seen["dispatch_batch"];
    assert_eq!(b["batch_id"], batch.batch_id);
    assert_eq!(b["site_id"], "SITE-7");
    assert_eq!(b["destination"], "TRADE");
    assert_eq!(b["tier"], "HIGH");
    assert_eq!(b["close_reason"], "MAX_ORDERS");
    assert_eq!(b["opened_at"], iso(samples::MONDAY_8AM));
    assert_eq!(b["closed_at"], "2026-01-05T08:00:01.000+00:00");
    assert_eq!(
        b["earliest_sla_deadline"],
        iso(samples::MONDAY_8AM + 8 * 3_600_000)
    );
    let ids: Vec<&Value> = b["orders"]
        .as_array()
        .expect("orders is an array")
        .iter()
        .map(|o| &o["order"]["order_id"])
        .collect();
    assert_eq!(ids, [&json!("WO-1"), &json!("WO-2")]);
    assert_eq!(b["orders"][0]["order"]["trade"], "hvac");
    assert_eq!(b["orders"][1]["order"]["pm"]["pm_id"], "PM-BOILER-Q");
    assert_eq!(b["orders"][1]["source_offset"], 1);
    assert_eq!(b["orders"][1]["unassigned_reason"], "OUTSIDE_SHIFT");
    assert_eq!(b["orders"][0]["unassigned_reason"], Value::Null);
    assert_eq!(b["orders"][1]["flags"], json!(["pm_due_soon"]));
    assert_eq!(b["orders"][0]["score"]["total"], 0.7);
    assert_eq!(b["orders"][0]["candidates"][0]["match"], 1.0);

    let d = &seen["dead_letter"];
    assert_eq!(d["reason"], "UNDECODABLE");
    assert_eq!(d["source_topic"], "cmms.workorders.normalized");
    assert_eq!(d["source_partition"], 2);
    assert_eq!(d["source_offset"], 41);
    assert_eq!(d["original_key"], hex(b"SITE-1"));
    assert_eq!(d["original_value"], "deadbeef");
    // 5 ms after the hour: millisecond precision survives.
    assert_eq!(d["failed_at"], "2026-01-05T08:00:00.005+00:00");
    assert_eq!(d["router_instance"], "router-1");

    let e = &seen["dedup_entry"];
    assert_eq!(e["order_id"], "WO-PM-1");
    assert_eq!(e["input_partition"], 3);
    assert_eq!(e["expires_at"], "2026-01-05T09:00:00.000+00:00");
    assert_eq!(e["batch_id"], "00000000-0000-5000-8000-000000000001");
}

#[test]
fn we_decode_a_work_order_written_by_fastavro() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("from_fastavro.bin");
    fastavro_check(&[Path::new("write"), &schemas(), &file]);
    let bytes = std::fs::read(&file).expect("checker wrote the datum");

    let codec = codec();
    let order = codec
        .decode_work_order(&bytes)
        .expect("fastavro's datum decodes");
    const HOUR: i64 = 3_600_000;
    assert_eq!(order.order_id, "PY-42");
    assert_eq!(order.source_system, "fastavro");
    assert_eq!(order.site_id.as_deref(), Some("SITE-PY"));
    assert_eq!(order.location, None);
    assert_eq!(order.asset_id.as_deref(), Some("CH-01"));
    assert_eq!(order.asset_criticality, Some(5));
    assert!(order.vendor_managed);
    assert_eq!(order.safety_class, SafetyClass::LifeSafety);
    assert_eq!(order.work_type, WorkType::Preventive);
    assert_eq!(order.trade, "mechanical");
    assert_eq!(order.required_skills, ["NFPA70E", "EPA608"]);
    assert_eq!(order.skill_level, None);
    assert_eq!(order.priority, Some(1));
    assert_eq!(order.reported_at, samples::MONDAY_8AM - HOUR);
    assert_eq!(order.created_at, samples::MONDAY_8AM);
    assert_eq!(order.sla_deadline, Some(samples::MONDAY_8AM + 4 * HOUR));
    let pm = order.pm.as_ref().expect("pm present");
    assert_eq!(pm.pm_id, "PM-CHILLER-A");
    assert_eq!(pm.window_start, samples::MONDAY_8AM + 24 * HOUR);
    assert_eq!(pm.window_end, samples::MONDAY_8AM + 48 * HOUR);
    assert_eq!(pm.frequency_days, Some(30));
    assert_eq!(order.description, "Kältemittel prüfen – chiller 1");
    assert_eq!(
        order.attributes.into_iter().collect::<Vec<_>>(),
        [
            ("cost_centre".to_string(), "FAC-310".to_string()),
            ("zone".to_string(), "B2".to_string())
        ]
    );

    // Both writers produce the same bytes for the same record.
    let decoded = codec.decode_work_order(&bytes).expect("decodes");
    assert_eq!(
        codec.encode_work_order(&decoded).expect("encodes"),
        bytes,
        "re-encoding fastavro's datum gives different bytes"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
