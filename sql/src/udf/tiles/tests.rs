use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use datafusion::prelude::SessionContext;

use super::*;

/// A tiny deterministic generator (no dependency needed for a test).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn ctx() -> SessionContext {
    let ctx = SessionContext::new();
    for f in crate::udf::aggregate_functions() {
        ctx.register_udaf(f.as_ref().clone());
    }
    ctx
}

#[test]
fn config_round_trips_and_rejects_garbage() {
    let c = Config {
        last_day: 19822,
        ops: vec![ColumnOp { op: Op::Sum, window: 30 }, ColumnOp { op: Op::Max, window: 0 }],
        combine: true,
    };
    assert_eq!(Config::parse(&c.render()).expect("parses"), c);
    let off = Config { combine: false, ..c.clone() };
    assert!(off.render().ends_with(";combine=0"), "{}", off.render());
    assert_eq!(Config::parse(&off.render()).expect("parses"), off);
    for bad in ["", "t=x;ops=sum:1", "t=1;ops=avg:3", "t=1;ops=sum", "q=1"] {
        assert!(Config::parse(bad).is_err(), "{bad}");
    }
}

/// Every (entity, day) of the output equals a brute-force evaluation over
/// random rows, for sums, mins and maxes with bounded and unbounded windows,
/// through partial and final aggregation over several partitions.
#[tokio::test]
async fn matches_brute_force_on_random_rows() {
    let mut rng = Lcg(7);
    let (mut k, mut day, mut start, mut a, mut b) = (vec![], vec![], vec![], vec![], vec![]);
    let last = 60i64;
    let mut starts = std::collections::BTreeMap::new();
    for key in 0..40i64 {
        if key % 7 != 3 {
            let s = 20 + rng.next(50) as i64; // some start after `last`: no rows
            starts.insert(key, s);
            k.push(key);
            day.push(None);
            start.push(Some(s));
            a.push(None);
            b.push(None);
        }
        for _ in 0..rng.next(30) {
            k.push(key);
            day.push(Some(rng.next(70) as i64));
            start.push(None);
            a.push((rng.next(5) > 0).then(|| rng.next(100) as i64 - 20));
            b.push((rng.next(4) > 0).then(|| rng.next(1000) as f64 / 7.0));
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("day", DataType::Int64, true),
        Field::new("start", DataType::Int64, true),
        Field::new("a", DataType::Int64, true),
        Field::new("b", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(k.clone())),
            Arc::new(Int64Array::from(day.clone())),
            Arc::new(Int64Array::from(start.clone())),
            Arc::new(Int64Array::from(a.clone())),
            Arc::new(datafusion::arrow::array::Float64Array::from(b.clone())),
        ],
    )
    .expect("batch");
    // Several small batches over 4 partitions: partial + final aggregation.
    let parts: Vec<Vec<RecordBatch>> = (0..4)
        .map(|p| {
            (0..batch.num_rows())
                .skip(p * 37)
                .step_by(4 * 37)
                .map(|o| batch.slice(o, (batch.num_rows() - o).min(37)))
                .collect()
        })
        .collect();
    let ctx = ctx();
    let table = datafusion::datasource::MemTable::try_new(schema, parts).expect("mem");
    ctx.register_table("r", Arc::new(table)).expect("register");
    for cfg in [
        "t=60;ops=sum:7,max:0,min:5,sum:0,max:3",
        "t=60;ops=sum:7,max:0,min:5,sum:0,max:3;combine=0",
    ] {
        check_against_brute_force(&ctx, cfg, &k, &day, &a, &b, &starts, last).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn check_against_brute_force(
    ctx: &SessionContext,
    cfg: &str,
    k: &[i64],
    day: &[Option<i64>],
    a: &[Option<i64>],
    b: &[Option<f64>],
    starts: &std::collections::BTreeMap<i64, i64>,
    last: i64,
) {
    let sql = format!(
        "SELECT k, u['__day'] AS d, u['c0'] AS s7, u['c1'] AS mx, u['c2'] AS mn5, u['c3'] AS fs, u['c4'] AS fmx3 \
         FROM (SELECT k, unnest({NAME}('{cfg}', day, start, a, a, a, b, b)) AS u FROM r GROUP BY k) ORDER BY k, d"
    );
    let out = ctx.sql(&sql).await.expect("plan").collect().await.expect("run");

    let rows: Vec<(i64, Option<i64>, Option<i64>, Option<f64>)> =
        (0..k.len()).map(|i| (k[i], day[i], a[i], b[i])).collect();
    let mut expected = Vec::new();
    for (&key, &s) in starts.iter() {
        for d in s..=last {
            let win = |w: i64| {
                rows.iter().filter(move |r| {
                    r.0 == key && r.1.is_some_and(|x| x <= d && (w == 0 || x > d - w))
                })
            };
            let ints = |w| win(w).filter_map(|r| r.2).collect::<Vec<_>>();
            let floats = |w| win(w).filter_map(|r| r.3).collect::<Vec<_>>();
            let s7 = {
                let v = ints(7);
                (!v.is_empty()).then(|| v.iter().sum::<i64>())
            };
            let mx = ints(0).into_iter().max();
            let mn5 = ints(5).into_iter().min();
            let fs = {
                let v = floats(0);
                (!v.is_empty()).then(|| v.iter().sum::<f64>())
            };
            let fmx3 = floats(3).into_iter().reduce(f64::max);
            expected.push((key, d, s7, mx, mn5, fs, fmx3));
        }
    }
    let mut got = Vec::new();
    for bt in &out {
        let col = |i: usize| bt.column(i).as_primitive::<Int64Type>().clone();
        let fcol = |i: usize| bt.column(i).as_primitive::<Float64Type>().clone();
        let (kk, dd, s7, mx, mn5, fs, fmx3) =
            (col(0), col(1), col(2), col(3), col(4), fcol(5), fcol(6));
        let opt = |a: &Int64Array, i: usize| (!a.is_null(i)).then(|| a.value(i));
        let fopt = |a: &datafusion::arrow::array::Float64Array, i: usize| {
            (!a.is_null(i)).then(|| a.value(i))
        };
        for i in 0..bt.num_rows() {
            got.push((
                kk.value(i),
                dd.value(i),
                opt(&s7, i),
                opt(&mx, i),
                opt(&mn5, i),
                fopt(&fs, i),
                fopt(&fmx3, i),
            ));
        }
    }
    // Compared in key order (the engine may not keep ORDER BY through unnest).
    got.sort_by_key(|r| (r.0, r.1));
    assert_eq!(got.len(), expected.len(), "row count");
    assert!(expected.len() > 500, "the test data must produce many rows");
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!((g.0, g.1, g.2, g.3, g.4), (e.0, e.1, e.2, e.3, e.4), "{g:?} vs {e:?}");
        let close = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
            (None, None) => true,
            _ => false,
        };
        assert!(close(g.5, e.5) && close(g.6, e.6), "{g:?} vs {e:?}");
    }
}

#[tokio::test]
async fn decimals_dates_and_timestamps_keep_their_types() {
    let ctx = ctx();
    let sql = format!(
        "SELECT unnest({NAME}('t=3;ops=sum:2,max:0,min:0', day, start, v, ts, dt)) AS u FROM (VALUES \
           (CAST(NULL AS BIGINT), CAST(1 AS BIGINT), CAST(NULL AS DECIMAL(12,2)), CAST(NULL AS TIMESTAMP), CAST(NULL AS DATE)), \
           (1, NULL, CAST(1.25 AS DECIMAL(12,2)), TIMESTAMP '2024-01-01 10:00:00', DATE '2024-01-05'), \
           (2, NULL, CAST(2.50 AS DECIMAL(12,2)), TIMESTAMP '2024-01-03 10:00:00', DATE '2024-01-02')) AS r(day, start, v, ts, dt)"
    );
    let out = ctx.sql(&sql).await.expect("plan").collect().await.expect("run");
    let rendered =
        datafusion::arrow::util::pretty::pretty_format_batches(&out).expect("fmt").to_string();
    assert!(
        rendered.contains(
            "__day: 1, __date: 1970-01-02, c0: 1.25, c1: 2024-01-01T10:00:00, c2: 2024-01-05"
        ),
        "{rendered}"
    );
    assert!(
        rendered.contains(
            "__day: 2, __date: 1970-01-03, c0: 3.75, c1: 2024-01-03T10:00:00, c2: 2024-01-02"
        ),
        "{rendered}"
    );
    assert!(
        rendered.contains(
            "__day: 3, __date: 1970-01-04, c0: 2.50, c1: 2024-01-03T10:00:00, c2: 2024-01-02"
        ),
        "{rendered}"
    );
    let t = out[0].schema().field(0).data_type().clone();
    assert!(format!("{t}").contains("Decimal128(38, 2)"), "{t}");
}

#[tokio::test]
async fn bad_configuration_is_a_plan_error() {
    let ctx = ctx();
    let err = ctx
        .sql(&format!("SELECT {NAME}('t=1;ops=avg:3', 1, 1, 2)"))
        .await
        .expect("plans")
        .collect()
        .await
        .expect_err("must fail");
    assert!(err.to_string().contains("bad configuration"), "{err}");
    let err = ctx
        .sql(&format!("SELECT {NAME}('t=1;ops=sum:3,sum:3', 1, 1, 2)"))
        .await
        .expect("plans")
        .collect()
        .await
        .expect_err("must fail");
    assert!(err.to_string().contains("2 operations"), "{err}");
}

#[test]
fn values_of_one_entity_and_day_are_combined_before_the_shuffle() {
    // A hot entity: 1000 rows over 10 days in each of two columns.
    let mut entries = Vec::new();
    for i in 0..1000i64 {
        let day = (i % 10) as i32;
        entries.push(Entry { value: 1, group: 0, day, col: 0 });
        entries.push(Entry { value: i, group: 0, day, col: 1 });
        entries.push(Entry { value: (i as f64 * 0.5).to_bits() as i64, group: 1, day, col: 2 });
    }
    // Overflowing integer sums stay separate.
    entries.push(Entry { value: i64::MAX, group: 1, day: 3, col: 0 });
    entries.push(Entry { value: 1, group: 1, day: 3, col: 0 });
    let b = bucket(
        vec![Some(0), Some(0)],
        entries,
        &[Op::Sum, Op::Max, Op::Min],
        &[Kind::Int, Kind::Int, Kind::Float],
        true,
    );
    let of = |g: usize, j: usize| &b.entries[b.bounds[g * 3 + j]..b.bounds[g * 3 + j + 1]];
    assert_eq!(of(0, 0).len(), 10);
    assert!(of(0, 0).iter().all(|e| e.value == 100), "{:?}", of(0, 0));
    assert_eq!(
        of(0, 1).iter().map(|e| e.value).collect::<Vec<_>>(),
        (990..1000).collect::<Vec<_>>()
    );
    assert_eq!(of(0, 2).len(), 0);
    assert_eq!(of(1, 0).len(), 2, "{:?}", of(1, 0));
    let mins: Vec<f64> = of(1, 2).iter().map(|e| f64::from_bits(e.value as u64)).collect();
    assert_eq!(mins, (0..10).map(|d| d as f64 * 0.5).collect::<Vec<_>>());
    assert!(of(0, 0).windows(2).all(|w| w[0].day < w[1].day));
}
