//! `sluice gen churn`: deterministic raw event data for churn features.
//!
//! Tables (each `OUT/<table>/part-<n>.parquet`):
//! - `users(user_id BIGINT, signup_date DATE, segment VARCHAR, country VARCHAR)`
//! - `transactions(txn_id BIGINT, user_id BIGINT, ts TIMESTAMP, amount DECIMAL(12,2))`
//! - `events(user_id BIGINT, ts TIMESTAMP, event_type VARCHAR, duration_s INT)`
//! - `tickets(ticket_id BIGINT, user_id BIGINT, created_ts TIMESTAMP, resolved_ts TIMESTAMP, priority VARCHAR)`
//!
//! Same arguments → same rows: every (table, day) has its own RNG seeded
//! from `--seed`, the table and the day. Activity is drawn per day: each
//! row picks a user uniformly, or by a Zipf law over user ids when
//! `--zipf Z > 0` (user 1 hottest), and is dropped when that user had not
//! signed up yet. The hottest 1% of users are long-standing accounts (signed
//! up before the range). It streams day by day: memory holds one batch and
//! the users' signup dates, never the whole data set.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{
    ArrayRef, Date32Builder, Decimal128Builder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, LogNormal, Zipf};

use crate::error::{Error, Result};

/// What to generate.
#[derive(Debug, Clone)]
pub struct ChurnConfig {
    pub users: u64,
    pub start: NaiveDate,
    pub days: u32,
    pub seed: u64,
    /// Zipf exponent of activity over users; 0 = uniform.
    pub zipf: f64,
    /// Average transactions per user per day.
    pub txn_rate: f64,
    /// Average events per user per day.
    pub event_rate: f64,
    /// Average support tickets per user per day.
    pub ticket_rate: f64,
}

impl Default for ChurnConfig {
    fn default() -> Self {
        Self {
            users: 10_000,
            start: NaiveDate::from_ymd_opt(2024, 1, 1).unwrap_or_default(),
            days: 90,
            seed: 42,
            zipf: 0.0,
            txn_rate: 0.2,
            event_rate: 1.5,
            ticket_rate: 0.01,
        }
    }
}

const ROWS_PER_BATCH: usize = 65_536;
const ROWS_PER_FILE: u64 = 4_000_000;
const MICROS_PER_DAY: i64 = 86_400_000_000;
const SEGMENTS: [(&str, f64); 3] = [("consumer", 0.70), ("smb", 0.25), ("enterprise", 0.05)];
const COUNTRIES: [&str; 8] = ["US", "GB", "DE", "FR", "IN", "BR", "JP", "CA"];
const EVENT_TYPES: [(&str, f64); 3] = [("login", 0.2), ("page_view", 0.6), ("feature_use", 0.2)];
const PRIORITIES: [(&str, f64); 4] =
    [("low", 0.5), ("medium", 0.3), ("high", 0.15), ("urgent", 0.05)];

fn pick<'a>(rng: &mut ChaCha8Rng, choices: &[(&'a str, f64)]) -> &'a str {
    let x: f64 = rng.random();
    let mut acc = 0.0;
    for (v, w) in choices {
        acc += w;
        if x < acc {
            return v;
        }
    }
    choices[choices.len() - 1].0
}

fn rng_for(seed: u64, table: u64, day: u64) -> ChaCha8Rng {
    // SplitMix-style mixing so nearby (table, day) pairs get unrelated streams.
    let mut z = seed
        ^ (table.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        ^ (day.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

fn epoch_day(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()).num_days() as i32
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

/// Rows per Parquet row group of a generated table.
const ROWS_PER_ROW_GROUP: usize = 64 * 1024;

/// Writes a table as a sequence of Parquet files, rolling over by row count.
struct TableWriter {
    dir: PathBuf,
    schema: SchemaRef,
    writer: Option<ArrowWriter<File>>,
    file_rows: u64,
    files: usize,
    rows: u64,
}

impl TableWriter {
    fn new(dir: PathBuf, schema: SchemaRef) -> Self {
        Self { dir, schema, writer: None, file_rows: 0, files: 0, rows: 0 }
    }

    fn write(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.writer.is_none() || self.file_rows >= ROWS_PER_FILE {
            if let Some(w) = self.writer.take() {
                w.close()?;
            }
            // Row groups of 64 Ki rows: a scan splits a file by row groups, so
            // one big row group per file is one scan task however many
            // partitions a query asks for.
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
                .set_max_row_group_row_count(Some(ROWS_PER_ROW_GROUP))
                .build();
            let path = self.dir.join(format!("part-{}.parquet", self.files));
            self.writer =
                Some(ArrowWriter::try_new(File::create(path)?, self.schema.clone(), Some(props))?);
            self.files += 1;
            self.file_rows = 0;
        }
        if let Some(w) = self.writer.as_mut() {
            w.write(batch)?;
        }
        self.file_rows += batch.num_rows() as u64;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<(u64, usize)> {
        if self.writer.is_none() && self.files == 0 {
            // An empty table still gets a file, so readers know its schema.
            let path = self.dir.join("part-0.parquet");
            self.writer =
                Some(ArrowWriter::try_new(File::create(path)?, self.schema.clone(), None)?);
            self.files = 1;
        }
        if let Some(w) = self.writer.take() {
            w.close()?;
        }
        Ok((self.rows, self.files))
    }
}

/// Picks the user of an activity row.
enum UserPicker {
    Uniform(u64),
    Zipf(Zipf<f64>),
}

impl UserPicker {
    fn new(users: u64, zipf: f64) -> anyhow::Result<Self> {
        if zipf > 0.0 {
            Ok(Self::Zipf(Zipf::new(users as f64, zipf).map_err(|e| anyhow::anyhow!("zipf: {e}"))?))
        } else {
            Ok(Self::Uniform(users))
        }
    }

    fn pick(&self, rng: &mut ChaCha8Rng) -> u64 {
        match self {
            Self::Uniform(n) => rng.random_range(1..=*n),
            Self::Zipf(z) => z.sample(rng) as u64,
        }
    }
}

fn signup_days(cfg: &ChurnConfig) -> Vec<i32> {
    let start = epoch_day(cfg.start);
    let mut rng = rng_for(cfg.seed, 0, 0);
    let long_standing = (cfg.users / 100).max(1);
    (1..=cfg.users)
        .map(|id| {
            let before = id <= long_standing || rng.random_bool(0.6);
            if before {
                start - rng.random_range(1..=730)
            } else {
                start + rng.random_range(0..cfg.days.max(1) as i32)
            }
        })
        .collect()
}

fn users_table(cfg: &ChurnConfig, signups: &[i32], dir: PathBuf) -> anyhow::Result<(u64, usize)> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("signup_date", DataType::Date32, false),
        Field::new("segment", DataType::Utf8, false),
        Field::new("country", DataType::Utf8, false),
    ]));
    let mut out = TableWriter::new(dir, schema.clone());
    let mut rng = rng_for(cfg.seed, 1, 0);
    for chunk_start in (0..signups.len()).step_by(ROWS_PER_BATCH) {
        let end = (chunk_start + ROWS_PER_BATCH).min(signups.len());
        let (mut id, mut day, mut seg, mut country) =
            (Int64Builder::new(), Date32Builder::new(), StringBuilder::new(), StringBuilder::new());
        for (i, signup) in signups.iter().enumerate().take(end).skip(chunk_start) {
            id.append_value(i as i64 + 1);
            day.append_value(*signup);
            seg.append_value(pick(&mut rng, &SEGMENTS));
            country.append_value(COUNTRIES[rng.random_range(0..COUNTRIES.len())]);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(day.finish()),
            Arc::new(seg.finish()),
            Arc::new(country.finish()),
        ];
        out.write(&RecordBatch::try_new(schema.clone(), cols)?)?;
    }
    out.finish()
}

/// Rows per day for an average per-user rate (deterministic count).
fn rows_per_day(users: u64, rate: f64) -> usize {
    (users as f64 * rate).round() as usize
}

#[derive(Clone, Copy)]
enum Activity {
    Transactions,
    Events,
    Tickets,
}

fn activity_table(
    cfg: &ChurnConfig,
    signups: &[i32],
    kind: Activity,
    dir: PathBuf,
) -> anyhow::Result<(u64, usize)> {
    let ts = ts_type();
    let (table_id, rate, schema) = match kind {
        Activity::Transactions => (
            2,
            cfg.txn_rate,
            Schema::new(vec![
                Field::new("txn_id", DataType::Int64, false),
                Field::new("user_id", DataType::Int64, false),
                Field::new("ts", ts.clone(), false),
                Field::new("amount", DataType::Decimal128(12, 2), false),
            ]),
        ),
        Activity::Events => (
            3,
            cfg.event_rate,
            Schema::new(vec![
                Field::new("user_id", DataType::Int64, false),
                Field::new("ts", ts.clone(), false),
                Field::new("event_type", DataType::Utf8, false),
                Field::new("duration_s", DataType::Int32, false),
            ]),
        ),
        Activity::Tickets => (
            4,
            cfg.ticket_rate,
            Schema::new(vec![
                Field::new("ticket_id", DataType::Int64, false),
                Field::new("user_id", DataType::Int64, false),
                Field::new("created_ts", ts.clone(), false),
                Field::new("resolved_ts", ts.clone(), true),
                Field::new("priority", DataType::Utf8, false),
            ]),
        ),
    };
    let schema = Arc::new(schema);
    let mut out = TableWriter::new(dir, schema.clone());
    let picker = UserPicker::new(cfg.users, cfg.zipf)?;
    let amount: LogNormal<f64> = LogNormal::new(3.5, 1.0).map_err(|e| anyhow::anyhow!("{e}"))?;
    let resolution_hours: Exp<f64> = Exp::new(1.0 / 30.0).map_err(|e| anyhow::anyhow!("{e}"))?;
    let per_day = rows_per_day(cfg.users, rate);
    let mut next_id: i64 = 1;
    for day in 0..cfg.days {
        let day_num = epoch_day(cfg.start) + day as i32;
        let day_start = i64::from(day_num) * MICROS_PER_DAY;
        let mut rng = rng_for(cfg.seed, table_id, u64::from(day));
        let mut remaining = per_day;
        while remaining > 0 {
            let n = remaining.min(ROWS_PER_BATCH);
            remaining -= n;
            let mut ids = Int64Builder::new();
            let mut users = Int64Builder::new();
            let mut times = TimestampMicrosecondBuilder::new();
            let mut amounts = Decimal128Builder::new().with_precision_and_scale(12, 2)?;
            let mut kinds = StringBuilder::new();
            let mut durations = Int32Builder::new();
            let mut resolved = TimestampMicrosecondBuilder::new();
            for _ in 0..n {
                let user = picker.pick(&mut rng);
                let t = day_start + rng.random_range(0..MICROS_PER_DAY);
                // Draw every value before deciding to keep the row, so the
                // stream of random numbers does not depend on signups.
                let cents =
                    (amount.sample(&mut rng) * 100.0).round().clamp(0.0, 9_999_999_999.0) as i128;
                let kind_pick = match kind {
                    Activity::Events => pick(&mut rng, &EVENT_TYPES),
                    Activity::Tickets => pick(&mut rng, &PRIORITIES),
                    Activity::Transactions => "",
                };
                let duration = rng.random_range(1..=600);
                let is_resolved = rng.random_bool(0.8);
                let hours = resolution_hours.sample(&mut rng);
                let signup = signups.get((user - 1) as usize).copied().unwrap_or(i32::MAX);
                if signup > day_num {
                    continue;
                }
                match kind {
                    Activity::Transactions => {
                        ids.append_value(next_id);
                        users.append_value(user as i64);
                        times.append_value(t);
                        amounts.append_value(cents);
                    }
                    Activity::Events => {
                        users.append_value(user as i64);
                        times.append_value(t);
                        kinds.append_value(kind_pick);
                        durations.append_value(duration);
                    }
                    Activity::Tickets => {
                        ids.append_value(next_id);
                        users.append_value(user as i64);
                        times.append_value(t);
                        if is_resolved {
                            resolved.append_value(t + (hours * 3_600_000_000.0) as i64);
                        } else {
                            resolved.append_null();
                        }
                        kinds.append_value(kind_pick);
                    }
                }
                next_id += 1;
            }
            let cols: Vec<ArrayRef> = match kind {
                Activity::Transactions => vec![
                    Arc::new(ids.finish()),
                    Arc::new(users.finish()),
                    Arc::new(times.finish()),
                    Arc::new(amounts.finish()),
                ],
                Activity::Events => vec![
                    Arc::new(users.finish()),
                    Arc::new(times.finish()),
                    Arc::new(kinds.finish()),
                    Arc::new(durations.finish()),
                ],
                Activity::Tickets => vec![
                    Arc::new(ids.finish()),
                    Arc::new(users.finish()),
                    Arc::new(times.finish()),
                    Arc::new(resolved.finish()),
                    Arc::new(kinds.finish()),
                ],
            };
            out.write(&RecordBatch::try_new(schema.clone(), cols)?)?;
        }
    }
    out.finish()
}

pub use super::Generated;
use super::{io_error, move_into_place, staging_dir};

pub const TABLES: [&str; 4] = ["users", "transactions", "events", "tickets"];

/// Generates the four tables under `out`, replacing tables already there.
///
/// # Errors
/// [`Error::Usage`] for out-of-range arguments, [`Error::Io`] naming the
/// path that failed. Nothing half-written is left behind.
pub fn generate(cfg: &ChurnConfig, out: &Path) -> Result<Vec<Generated>> {
    if cfg.users == 0 || cfg.users > 1_000_000_000 {
        return Err(Error::Usage(format!(
            "--users {} is out of range; expected 1..=1000000000",
            cfg.users
        )));
    }
    if cfg.days == 0 || cfg.days > 36_600 {
        return Err(Error::Usage(format!(
            "--days {} is out of range; expected 1..=36600",
            cfg.days
        )));
    }
    if !(cfg.zipf == 0.0 || (cfg.zipf > 0.0 && cfg.zipf.is_finite())) {
        return Err(Error::Usage(format!(
            "--zipf {} must be 0 (uniform) or a positive exponent such as 1.2",
            cfg.zipf
        )));
    }
    for (flag, rate) in [
        ("--txn-rate", cfg.txn_rate),
        ("--event-rate", cfg.event_rate),
        ("--ticket-rate", cfg.ticket_rate),
    ] {
        if !(rate >= 0.0 && rate.is_finite()) {
            return Err(Error::Usage(format!(
                "{flag} {rate} must be a non-negative number of rows per user per day"
            )));
        }
    }
    let io = io_error;
    let staging = staging_dir(out)?;
    for t in TABLES {
        let d = staging.path().join(t);
        std::fs::create_dir_all(&d).map_err(|e| io(&d, &e))?;
    }
    let signups = signup_days(cfg);
    let dir = |t: &str| staging.path().join(t);
    let results: Vec<anyhow::Result<(u64, usize)>> = std::thread::scope(|s| {
        let events = s.spawn(|| activity_table(cfg, &signups, Activity::Events, dir("events")));
        let mut first = vec![
            users_table(cfg, &signups, dir("users")),
            activity_table(cfg, &signups, Activity::Transactions, dir("transactions")),
        ];
        let tickets = activity_table(cfg, &signups, Activity::Tickets, dir("tickets"));
        first.push(
            events.join().unwrap_or_else(|_| Err(anyhow::anyhow!("generator thread panicked"))),
        );
        first.push(tickets);
        first
    });
    let mut generated = Vec::new();
    for (table, r) in ["users", "transactions", "events", "tickets"].into_iter().zip(results) {
        let (rows, files) = r.map_err(|e| io(&dir(table), &e))?;
        generated.push(Generated { table, path: out.join(table), rows, files });
    }
    move_into_place(staging.path(), &generated)?;
    Ok(generated)
}
