//! Avro encoding and decoding against the schema files in `schemas/`.
//!
//! The `.avsc` files are read once at start; there is no second copy of them
//! in the source. Records travel as plain Avro binary datums (no container
//! header, no registry prefix): producer and consumer both hold the same
//! schema files. That keeps the bytes readable by any Avro implementation,
//! which the tests check with an independent reader.
//!
//! The datum readers and writers borrow their parsed schemas, so the parsed
//! schemas are leaked once per [`Codec::load`] and live for the process. A
//! router loads them once; tests load them a handful of times.

use std::path::{Path, PathBuf};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{DeadLetter, DedupEntry, DispatchBatch, NormalizedWorkOrder, TechnicianRoster};

/// The schema files, in the order they are parsed (later ones may refer to
/// names defined by earlier ones).
pub const SCHEMA_FILES: [(&str, &str); 5] = [
    ("work_order.avsc", "cmms.NormalizedWorkOrder"),
    ("technician_roster.avsc", "cmms.TechnicianRoster"),
    ("dispatch_batch.avsc", "cmms.DispatchBatch"),
    ("dead_letter.avsc", "cmms.DeadLetter"),
    ("dedup_entry.avsc", "cmms.DedupEntry"),
];

/// Failure to load the schema files.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A schema file could not be read.
    #[error("cannot read schema file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The files did not parse as Avro schemas.
    #[error("invalid Avro schema in {dir}: {source}")]
    Parse {
        /// The schema directory.
        dir: PathBuf,
        /// The parser's complaint.
        source: Box<apache_avro::Error>,
    },
    /// A file parsed but does not define the record this build expects.
    #[error("schema file {path} defines {found}, expected {expected}")]
    WrongName {
        /// The file.
        path: PathBuf,
        /// The full name found.
        found: String,
        /// The full name expected.
        expected: &'static str,
    },
}

/// Failure to encode or decode one datum.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not a datum of the schema.
    #[error("not a {record} Avro datum: {source}")]
    Decode {
        /// The record expected.
        record: &'static str,
        /// The decoder's complaint.
        source: Box<apache_avro::Error>,
    },
    /// Decoding succeeded but bytes were left over, so the writer used another schema.
    #[error("not a {record} Avro datum: {trailing} trailing bytes after the record")]
    Trailing {
        /// The record expected.
        record: &'static str,
        /// Bytes left.
        trailing: usize,
    },
    /// The value does not fit the schema (a bug on our side, not the record's).
    #[error("cannot encode {record}: {source}")]
    Encode {
        /// The record.
        record: &'static str,
        /// The encoder's complaint.
        source: Box<apache_avro::Error>,
    },
}

/// One record type's reader and writer.
struct RecordCodec {
    name: &'static str,
    schema: &'static Schema,
    reader: GenericDatumReader<'static>,
    writer: GenericDatumWriter<'static>,
}

impl RecordCodec {
    fn new(
        name: &'static str,
        schema: &'static Schema,
        all: &'static [Schema],
    ) -> Result<Self, apache_avro::Error> {
        let schemata: Vec<&'static Schema> = all.iter().collect();
        let reader = GenericDatumReader::builder(schema)
            .writer_schemata(schemata.clone())?
            .build()?;
        let writer = GenericDatumWriter::builder(schema)
            .schemata(schemata)?
            .human_readable(false)
            .build()?;
        Ok(Self {
            name,
            schema,
            reader,
            writer,
        })
    }

    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        self.writer
            .write_ser_to_vec(value)
            .map_err(|e| CodecError::Encode {
                record: self.name,
                source: Box::new(e),
            })
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let mut cursor = bytes;
        let value = self
            .reader
            .read_deser::<T>(&mut cursor)
            .map_err(|e| CodecError::Decode {
                record: self.name,
                source: Box::new(e),
            })?;
        // A datum written with another schema can decode "successfully" into
        // garbage that stops early; leftover bytes are the tell.
        if !cursor.is_empty() {
            return Err(CodecError::Trailing {
                record: self.name,
                trailing: cursor.len(),
            });
        }
        Ok(value)
    }
}

/// Readers and writers for the five record types.
pub struct Codec {
    dir: PathBuf,
    work_order: RecordCodec,
    roster: RecordCodec,
    dispatch: RecordCodec,
    dead_letter: RecordCodec,
    dedup: RecordCodec,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").field("dir", &self.dir).finish()
    }
}

impl Codec {
    /// Reads and parses the schema files in `dir`.
    pub fn load(dir: &Path) -> Result<Self, SchemaError> {
        let mut texts = Vec::with_capacity(SCHEMA_FILES.len());
        for (file, _) in SCHEMA_FILES {
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|source| SchemaError::Read { path, source })?;
            texts.push(text);
        }
        let parse_err = |e: apache_avro::Error| SchemaError::Parse {
            dir: dir.to_path_buf(),
            source: Box::new(e),
        };
        let parsed = Schema::parse_list(&texts).map_err(parse_err)?;
        for ((file, expected), schema) in SCHEMA_FILES.iter().zip(&parsed) {
            let found = match schema {
                Schema::Record(r) => r.name.fullname(None),
                other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)),
            };
            if found != *expected {
                return Err(SchemaError::WrongName {
                    path: dir.join(file),
                    found,
                    expected,
                });
            }
        }
        // Leaked on purpose: see the module docs.
        let all: &'static [Schema] = Box::leak(parsed.into_boxed_slice());
        let make = |i: usize| RecordCodec::new(SCHEMA_FILES[i].1, &all[i], all).map_err(parse_err);
        Ok(Self {
            dir: dir.to_path_buf(),
            work_order: make(0)?,
            roster: make(1)?,
            dispatch: make(2)?,
            dead_letter: make(3)?,
            dedup: make(4)?,
        })
    }

    /// The directory the schemas were read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed work-order schema.
    pub fn work_order_schema(&self) -> &Schema {
        self.work_order.schema
    }

    /// Encodes a work order.
    pub fn encode_work_order(&self, v: &NormalizedWorkOrder) -> Result<Vec<u8>, CodecError> {
        self.work_order.encode(v)
    }
    /// Decodes a work order.
    pub fn decode_work_order(&self, b: &[u8]) -> Result<NormalizedWorkOrder, CodecError> {
        self.work_order.decode(b)
    }
    /// Encodes a roster entry.
    pub fn encode_roster(&self, v: &TechnicianRoster) -> Result<Vec<u8>, CodecError> {
        self.roster.encode(v)
    }
    /// Decodes a roster entry.
    pub fn decode_roster(&self, b: &[u8]) -> Result<TechnicianRoster, CodecError> {
        self.roster.decode(b)
    }
    /// Encodes a job packet.
    pub fn encode_dispatch(&self, v: &DispatchBatch) -> Result<Vec<u8>, CodecError> {
        self.dispatch.encode(v)
    }
    /// Decodes a job packet.
    pub fn decode_dispatch(&self, b: &[u8]) -> Result<DispatchBatch, CodecError> {
        self.dispatch.decode(b)
    }
    /// Encodes a dead letter.
    pub fn encode_dead_letter(&self, v: &DeadLetter) -> Result<Vec<u8>, CodecError> {
        self.dead_letter.encode(v)
    }
    /// Decodes a dead letter.
    pub fn decode_dead_letter(&self, b: &[u8]) -> Result<DeadLetter, CodecError> {
        self.dead_letter.decode(b)
    }
    /// Encodes a dedup changelog entry.
    pub fn encode_dedup_entry(&self, v: &DedupEntry) -> Result<Vec<u8>, CodecError> {
        self.dedup.encode(v)
    }
    /// Decodes a dedup changelog entry.
    pub fn decode_dedup_entry(&self, b: &[u8]) -> Result<DedupEntry, CodecError> {
        self.dedup.decode(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::samples;
    use crate::model::{TechnicianRoster, UnassignedReason};

    fn codec() -> Codec {
        Codec::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas")))
            .expect("schemas load")
    }

    #[test]
    fn work_order_round_trips() {
        let c = codec();
        for order in [
            samples::work_order("WO-1", "S1", "hvac"),
            samples::preventive_order("WO-2", "S1"),
        ] {
            let bytes = c.encode_work_order(&order).expect("encodes");
            assert_eq!(c.decode_work_order(&bytes).expect("decodes"), order);
        }
    }

    #[test]
    fn missing_optionals_round_trip() {
        let c = codec();
        let mut order = samples::work_order("WO-3", "S1", "hvac");
        order.site_id = None;
        order.asset_id = None;
        order.sla_deadline = None;
        order.attributes.clear();
        order.required_skills.clear();
        let bytes = c.encode_work_order(&order).expect("encodes");
        assert_eq!(c.decode_work_order(&bytes).expect("decodes"), order);
    }

    #[test]
    fn roster_round_trips() {
        let c = codec();
        let mut t: TechnicianRoster = samples::technician("T-9", "S1", "plumbing");
        t.shift_end = None;
        let bytes = c.encode_roster(&t).expect("encodes");
        assert_eq!(c.decode_roster(&bytes).expect("decodes"), t);
    }

    #[test]
    fn dispatch_batch_round_trips_with_embedded_orders() {
        let c = codec();
        let mut p = samples::packet(vec![
            samples::work_order("WO-1", "S1", "hvac"),
            samples::preventive_order("WO-2", "S1"),
        ]);
        p.orders[1].unassigned_reason = Some(UnassignedReason::OutsideShift);
        p.orders[1].repeat_of = Some("WO-0".into());
        p.orders[1].flags = vec!["pm_due_soon".into()];
        let bytes = c.encode_dispatch(&p).expect("encodes");
        assert_eq!(c.decode_dispatch(&bytes).expect("decodes"), p);
    }

    #[test]
    fn dead_letter_round_trips_with_raw_bytes() {
        let c = codec();
        let d = samples::dead_letter();
        let bytes = c.encode_dead_letter(&d).expect("encodes");
        let back = c.decode_dead_letter(&bytes).expect("decodes");
        assert_eq!(back, d);
        assert_eq!(
            back.original_value.as_deref(),
            Some(&[0xde, 0xad, 0xbe, 0xef][..])
        );
    }

    #[test]
    fn dedup_entry_round_trips() {
        let c = codec();
        let mut e = DedupEntry {
            schema_version: crate::model::SCHEMA_VERSION,
            order_id: "WO-1".into(),
            input_partition: 3,
            first_seen_at: samples::MONDAY_8AM,
            expires_at: samples::MONDAY_8AM + 8 * 3_600_000,
            batch_id: Some("00000000-0000-5000-8000-000000000000".into()),
        };
        let bytes = c.encode_dedup_entry(&e).expect("encodes");
        assert_eq!(c.decode_dedup_entry(&bytes).expect("decodes"), e);
        e.batch_id = None;
        let bytes = c.encode_dedup_entry(&e).expect("encodes");
        assert_eq!(c.decode_dedup_entry(&bytes).expect("decodes"), e);
        // The order id follows the version, as on every record: 0x02, then "WO-1".
        assert_eq!(&bytes[..6], &[0x02, 0x08, b'W', b'O', b'-', b'1']);
    }

    #[test]
    fn bytes_are_the_plain_avro_datum() {
        // Hand-check the first fields against the Avro spec: int schema_version
        // 1 zig-zags to 0x02, then the order id as a length-prefixed string.
        let c = codec();
        let bytes = c
            .encode_work_order(&samples::work_order("WO-1", "S1", "hvac"))
            .expect("encodes");
        assert_eq!(&bytes[..6], &[0x02, 0x08, b'W', b'O', b'-', b'1']);
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        let c = codec();
        for bytes in [
            &b""[..],
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            b"hello world, not avro",
        ] {
            assert!(c.decode_work_order(bytes).is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let c = codec();
        let mut bytes = c
            .encode_work_order(&samples::work_order("WO-1", "S1", "hvac"))
            .expect("encodes");
        bytes.extend_from_slice(b"extra");
        let err = c
            .decode_work_order(&bytes)
            .expect_err("trailing")
            .to_string();
        assert!(err.contains("trailing"), "{err}");
    }

    #[test]
    fn unreadable_schema_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Codec::load(dir.path()).expect_err("empty dir").to_string();
        assert!(err.contains("work_order.avsc"), "{err}");
    }

    #[test]
    fn malformed_schema_file_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas"));
        for (file, _) in SCHEMA_FILES {
            std::fs::copy(src.join(file), dir.path().join(file)).expect("copy");
        }
        std::fs::write(dir.path().join("dead_letter.avsc"), "{ not json").expect("write");
        let err = Codec::load(dir.path()).expect_err("bad json").to_string();
        assert!(err.contains("invalid Avro schema"), "{err}");
    }
}
