"""Independent Avro reader and writer for tests/avro_interop.rs.

fastavro shares no code with the Rust `apache-avro` crate, so agreeing with it
shows our bytes are plain Avro datums (no header, no registry prefix) that any
consumer holding the same .avsc files can read.

    fastavro_check.py read SCHEMAS_DIR DATUM_DIR
        Decode DATUM_DIR/<stem>.bin with schemas/<stem>.avsc for every schema
        file, print {stem: record} as JSON. Timestamps are printed as ISO 8601
        UTC strings and bytes as hex, so the Rust side sees how fastavro
        interpreted the logical types, not just the raw longs.

    fastavro_check.py write SCHEMAS_DIR OUT_FILE
        Write one cmms.NormalizedWorkOrder datum built from a Python dict.
"""

import datetime
import io
import json
import os
import sys

import fastavro

# Parse order matters: dispatch_batch.avsc refers to cmms.NormalizedWorkOrder,
# which work_order.avsc defines. This mirrors codec::SCHEMA_FILES.
STEMS = ["work_order", "technician_roster", "dispatch_batch", "dead_letter", "dedup_entry"]

UTC = datetime.timezone.utc


def load_schemas(schemas_dir):
    """Parse the .avsc files ourselves, sharing one table of named types."""
    named = {}
    parsed = {}
    for stem in STEMS:
        with open(os.path.join(schemas_dir, stem + ".avsc"), encoding="utf-8") as f:
            parsed[stem] = fastavro.parse_schema(json.load(f), named_schemas=named)
    return parsed


def to_json(value):
    """json.dumps fallback for what fastavro returns beyond plain JSON types."""
    if isinstance(value, datetime.datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds")
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"unexpected {type(value).__name__} in a decoded record")


def read(schemas_dir, datum_dir):
    schemas = load_schemas(schemas_dir)
    out = {}
    for stem in STEMS:
        with open(os.path.join(datum_dir, stem + ".bin"), "rb") as f:
            data = f.read()
        buf = io.BytesIO(data)
        out[stem] = fastavro.schemaless_reader(buf, schemas[stem])
        # schemaless_reader stops at the end of the record; leftover bytes
        # would mean the writer used a different layout.
        if buf.tell() != len(data):
            sys.exit(f"{stem}: {len(data) - buf.tell()} bytes left after the record")
    json.dump(out, sys.stdout, default=to_json, sort_keys=True)


def write(schemas_dir, out_file):
    schemas = load_schemas(schemas_dir)
    monday_8am = datetime.datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    hour = datetime.timedelta(hours=1)
    order = {
        "schema_version": 1,
        "order_id": "PY-42",
        "source_system": "fastavro",
        "site_id": "SITE-PY",
        "location": None,
        "asset_id": "CH-01",
        "asset_criticality": 5,
        "vendor_managed": True,
        "safety_class": "LIFE_SAFETY",
        "work_type": "PREVENTIVE",
        "trade": "mechanical",
        "required_skills": ["NFPA70E", "EPA608"],
        "skill_level": None,
        "priority": 1,
        "reported_at": monday_8am - hour,
        "created_at": monday_8am,
        "sla_deadline": monday_8am + 4 * hour,
        "pm": {
            "pm_id": "PM-CHILLER-A",
            "window_start": monday_8am + 24 * hour,
            "window_end": monday_8am + 48 * hour,
            "frequency_days": 30,
        },
        # Non-ASCII on purpose: strings are UTF-8 on both sides.
        "description": "Kältemittel prüfen – chiller 1",
        # Keys in sorted order, as the Rust side's BTreeMap writes them, so the
        # test can also compare bytes.
        "attributes": {"cost_centre": "FAC-310", "zone": "B2"},
    }
    buf = io.BytesIO()
    # strict: every field must be given, no silent defaults.
    fastavro.schemaless_writer(buf, schemas["work_order"], order, strict=True)
    with open(out_file, "wb") as f:
        f.write(buf.getvalue())


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("read", "write"):
        sys.exit(__doc__)
    {"read": read, "write": write}[sys.argv[1]](sys.argv[2], sys.argv[3])
