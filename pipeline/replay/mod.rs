//! Replay of real maintenance requests as intake traffic.
//!
//! Two public data sets (see `shared/data/README.md`) are turned into
//! [`NormalizedWorkOrder`] records and produced to the input topic at a chosen
//! rate, so the router can be exercised with the duplicates, gaps and messy
//! text of real requests instead of hand-made fixtures.
//!
//! The promise of this module: **every data row becomes exactly one order.**
//! Rows that are not building maintenance get the trade [`NON_BUILDING_TRADE`]
//! (the topology routes it to the fallback desk with a reason); rows with a
//! blank site keep `site_id = None` (the router dead-letters them); rows with
//! a value we cannot parse keep a best-effort order and say what went wrong in
//! the [`WARNING_ATTRIBUTE`] attribute. Only a file we cannot read at all (no
//! such file, a missing column, an I/O error) is an error.
//!
//! Conversion is pure ([`convert`], [`load`], [`rebase`]); producing is
//! [`produce`], paced by a schedule on the tokio clock.

mod nestor;
mod nyc311;
mod pace;
mod produce;
mod progress;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::model::NormalizedWorkOrder;

pub use pace::InvalidRate;
pub use produce::{
    produce, producer_config, ReplayError, ReplayReport, CONTENT_TYPE, DELIVERY_CHUNK,
};
pub use progress::{Progress, LOG_EVERY};

/// Trade given to requests that are not building maintenance (street,
/// parking, noise, sanitation, ...). The topology routes it to the fallback
/// topic with a reason, so such rows are visible instead of silently lost.
pub const NON_BUILDING_TRADE: &str = "non_building";

/// Attribute that explains why part of a row could not be used as it was
/// (an unparseable date, a column that does not hold what it should).
pub const WARNING_ATTRIBUTE: &str = "replay_warning";

/// The data sets the replay understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// NYC 311 service requests (`nyc311-2013-12-25.csv`).
    Nyc311,
    /// NIST Nestor mining excavator work orders (`nestor-excavators.csv`).
    Nestor,
}

impl Source {
    /// Every source, in the order they are listed in messages.
    pub const ALL: [Source; 2] = [Source::Nyc311, Source::Nestor];

    /// The name used on the command line and as `source_system`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Nyc311 => "nyc311",
            Source::Nestor => "nestor",
        }
    }

    /// The file of this source in the shared data directory.
    pub fn default_file(self) -> &'static str {
        match self {
            Source::Nyc311 => "nyc311-2013-12-25.csv",
            Source::Nestor => "nestor-excavators.csv",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A replay source name that is not one of [`Source::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown replay source {value:?}: expected \"nyc311\" or \"nestor\"")]
pub struct UnknownSource {
    /// The name given.
    pub value: String,
}

impl FromStr for Source {
    type Err = UnknownSource;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        Source::ALL
            .into_iter()
            .find(|source| source.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| UnknownSource {
                value: s.to_owned(),
            })
    }
}

/// A replay file that cannot be read at all. Problems inside a row are not
/// errors: see the module docs.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be opened.
    #[error("cannot open replay file {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CSV reader failed (I/O error or broken quoting) at a data row.
    #[error("cannot read {format} data row {row}: {source}")]
    Read {
        /// The format being read.
        format: Source,
        /// 1-based data row (the header is row 0).
        row: u64,
        /// The reader's complaint.
        source: csv::Error,
    },
    /// The header lacks a column the format needs, so this is probably the
    /// other source's file.
    #[error("{format} file has no column {column:?} (header: {header:?}); is it a {format} file?")]
    MissingColumn {
        /// The format being read.
        format: Source,
        /// The column expected.
        column: &'static str,
        /// The header found, comma-joined.
        header: String,
    },
}

/// Opens `path` and converts every row with [`convert`].
pub fn load(source: Source, path: &Path) -> Result<Vec<NormalizedWorkOrder>, LoadError> {
    let file = std::fs::File::open(path).map_err(|e| LoadError::Open {
        path: path.to_path_buf(),
        source: e,
    })?;
    convert(source, std::io::BufReader::new(file))
}

/// Converts a whole CSV file of `source` into orders, one per data row, in
/// file order. Timestamps are the historical ones; see [`rebase`].
pub fn convert<R: Read>(source: Source, input: R) -> Result<Vec<NormalizedWorkOrder>, LoadError> {
    match source {
        Source::Nyc311 => nyc311::convert(input),
        Source::Nestor => nestor::convert(input),
    }
}

/// Shifts every timestamp of every order (reported, created, SLA deadline,
/// PM window) by one delta so that the earliest `created_at` becomes
/// `now_ms`, and returns that delta in milliseconds (0 for no orders).
///
/// The data is from 2001-2013: replayed as-is every SLA would be years
/// overdue and every dedup entry long expired. One common delta keeps the
/// gaps between orders and each order's time to deadline as they were.
pub fn rebase(orders: &mut [NormalizedWorkOrder], now_ms: i64) -> i64 {
    let Some(earliest) = orders.iter().map(|o| o.created_at).min() else {
        return 0;
    };
    let delta = now_ms.saturating_sub(earliest);
    for order in orders.iter_mut() {
        order.reported_at = order.reported_at.saturating_add(delta);
        order.created_at = order.created_at.saturating_add(delta);
        if let Some(deadline) = order.sla_deadline.as_mut() {
            *deadline = deadline.saturating_add(delta);
        }
        if let Some(pm) = order.pm.as_mut() {
            pm.window_start = pm.window_start.saturating_add(delta);
            pm.window_end = pm.window_end.saturating_add(delta);
        }
    }
    delta
}

/// Number of orders per trade, for reports and tests.
pub fn trade_counts(orders: &[NormalizedWorkOrder]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for order in orders {
        *counts.entry(order.trade.clone()).or_insert(0) += 1;
    }
    counts
}

/// A CSV file read into memory with only the columns a format needs, in the
/// order it asked for them. The files are a few MB at most, and both formats
/// need a first pass over all rows (the earliest date stands in for an
/// unparseable one), so streaming would buy nothing.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Reads `input`, locating `columns` by header name. Short rows yield
    /// empty strings for their missing fields and invalid UTF-8 is replaced,
    /// so a damaged row still becomes an order rather than an error.
    fn read<R: Read>(
        format: Source,
        input: R,
        columns: &[&'static str],
    ) -> Result<Self, LoadError> {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .has_headers(true)
            .from_reader(input);
        let read_err = |row: u64| {
            move |e: csv::Error| LoadError::Read {
                format,
                row,
                source: e,
            }
        };
        let header: Vec<String> = reader
            .byte_headers()
            .map_err(read_err(0))?
            .iter()
            .map(|h| {
                String::from_utf8_lossy(h)
                    .trim_start_matches('\u{feff}')
                    .trim()
                    .to_owned()
            })
            .collect();
        let mut index = Vec::with_capacity(columns.len());
        for &column in columns {
            let found = header.iter().position(|h| h == column);
            index.push(found.ok_or_else(|| LoadError::MissingColumn {
                format,
                column,
                header: header.join(","),
            })?);
        }
        let mut rows = Vec::new();
        let mut record = csv::ByteRecord::new();
        loop {
            let row = rows.len() as u64 + 1;
            if !reader
                .read_byte_record(&mut record)
                .map_err(read_err(row))?
            {
                break;
            }
            rows.push(
                index
                    .iter()
                    .map(|&i| {
                        let raw = record.get(i).unwrap_or_default();
                        String::from_utf8_lossy(raw).trim().to_owned()
                    })
                    .collect(),
            );
        }
        Ok(Self { rows })
    }
}

/// Collects the warnings of one row into the single attribute value.
#[derive(Debug, Default)]
struct Warnings(Vec<String>);

impl Warnings {
    fn push(&mut self, warning: String) {
        self.0.push(warning);
    }

    /// Stores the warnings, if any, under [`WARNING_ATTRIBUTE`].
    fn store(self, attributes: &mut BTreeMap<String, String>) {
        if !self.0.is_empty() {
            attributes.insert(WARNING_ATTRIBUTE.to_owned(), self.0.join("; "));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::codec::Codec;

    /// The data set's file in `CMMS_DATA_DIR`, or in the shared data
    /// directory beside the repository.
    pub(crate) fn data_file(source: Source) -> Option<PathBuf> {
        let dir = std::env::var_os("CMMS_DATA_DIR").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
            PathBuf::from,
        );
        let path = dir.join(source.default_file());
        if path.is_file() {
            Some(path)
        } else {
            eprintln!("skipping: replay data file {} is absent", path.display());
            None
        }
    }

    pub(crate) fn codec() -> Codec {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas"));
        Codec::load(dir).expect("schemas/ in the crate root must load")
    }

    #[test]
    fn source_parses_known_names_and_names_them_on_error() {
        assert_eq!("nyc311".parse::<Source>(), Ok(Source::Nyc311));
        assert_eq!(" Nestor ".parse::<Source>(), Ok(Source::Nestor));
        let err = "maximo".parse::<Source>().expect_err("not a source");
        let message = err.to_string();
        assert!(message.contains("\"maximo\""), "{message}");
        assert!(
            message.contains("nyc311") && message.contains("nestor"),
            "{message}"
        );
        for source in Source::ALL {
            assert_eq!(source.to_string().parse::<Source>(), Ok(source));
        }
    }

    #[test]
    fn wrong_file_for_format_names_the_missing_column() {
        let csv = "BscStartDate,Asset,OriginalShorttext,PMType,Cost\n2004-07-01,A,x,PM01,1\n";
        let err = convert(Source::Nyc311, csv.as_bytes()).expect_err("wrong format");
        assert!(
            matches!(
                err,
                LoadError::MissingColumn {
                    column: "Unique Key",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn rebase_moves_earliest_creation_to_now_and_keeps_gaps() {
        let Some(path) = data_file(Source::Nestor) else {
            return;
        };
        let original = load(Source::Nestor, &path).expect("nestor file loads");
        let mut orders = original.clone();
        let now = 1_760_000_000_000;
        let delta = rebase(&mut orders, now);
        assert_eq!(orders.iter().map(|o| o.created_at).min(), Some(now));
        for (before, after) in original.iter().zip(&orders) {
            assert_eq!(after.created_at - before.created_at, delta);
            assert_eq!(after.reported_at - before.reported_at, delta);
            assert_eq!(after.sla_deadline.map(|d| d - delta), before.sla_deadline);
            if let (Some(a), Some(b)) = (&after.pm, &before.pm) {
                assert_eq!(a.window_start - b.window_start, delta);
                assert_eq!(a.window_end - b.window_end, delta);
            }
        }
        assert_eq!(rebase(&mut [], now), 0);
    }

    #[test]
    fn rebase_shifts_nyc311_deadlines_too() {
        let Some(path) = data_file(Source::Nyc311) else {
            return;
        };
        let original = load(Source::Nyc311, &path).expect("nyc311 file loads");
        let mut orders = original.clone();
        let now = 1_760_000_000_000;
        let delta = rebase(&mut orders, now);
        let with_deadline = orders.iter().filter(|o| o.sla_deadline.is_some()).count();
        assert!(with_deadline > 0);
        for (before, after) in original.iter().zip(&orders) {
            assert_eq!(after.sla_deadline.map(|d| d - delta), before.sla_deadline);
            assert!(after.created_at >= now);
        }
    }
}
