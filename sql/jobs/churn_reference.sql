-- Naive point-in-time reference for sql/jobs/churn.yaml: the features of ONE
-- feature date ${D}, straight from the raw tables. Tests compare the backfill
-- with it and the churn benchmark runs it once per date (the Airflow-loop
-- baseline). Written independently of the spec compiler on purpose.
WITH u AS (
    SELECT user_id, signup_date, segment FROM users WHERE signup_date <= DATE '${D}'
),
t30 AS (
    SELECT user_id, sum(amount) AS spend, CAST(sum(amount) AS DOUBLE) / count(amount) AS avg_value
    FROM transactions
    WHERE ts >= CAST(DATE '${D}' - INTERVAL '29 days' AS TIMESTAMP)
      AND ts < CAST(DATE '${D}' + INTERVAL '1 day' AS TIMESTAMP)
    GROUP BY user_id
),
t7 AS (
    SELECT user_id, count(*) AS n
    FROM transactions
    WHERE ts >= CAST(DATE '${D}' - INTERVAL '6 days' AS TIMESTAMP)
      AND ts < CAST(DATE '${D}' + INTERVAL '1 day' AS TIMESTAMP)
    GROUP BY user_id
),
lg AS (
    SELECT user_id, max(ts) AS last_login
    FROM events
    WHERE event_type = 'login' AND ts < CAST(DATE '${D}' + INTERVAL '1 day' AS TIMESTAMP)
    GROUP BY user_id
),
e30 AS (
    SELECT user_id,
           count(CASE WHEN event_type = 'page_view' THEN 1 END) AS page_views,
           count(CASE WHEN event_type = 'feature_use' THEN 1 END) AS feature_uses
    FROM events
    WHERE ts >= CAST(DATE '${D}' - INTERVAL '29 days' AS TIMESTAMP)
      AND ts < CAST(DATE '${D}' + INTERVAL '1 day' AS TIMESTAMP)
    GROUP BY user_id
),
k90 AS (
    SELECT user_id, count(*) AS n
    FROM tickets
    WHERE created_ts >= CAST(DATE '${D}' - INTERVAL '89 days' AS TIMESTAMP)
      AND created_ts < CAST(DATE '${D}' + INTERVAL '1 day' AS TIMESTAMP)
    GROUP BY user_id
),
r90 AS (
    SELECT user_id,
           avg((date_part('epoch', resolved_ts) - date_part('epoch', created_ts)) / 3600.0) AS hours
    FROM tickets
    WHERE created_ts >= CAST(DATE '${D}' - INTERVAL '89 days' AS TIMESTAMP)
      AND created_ts < CAST(DATE '${D}' + INTERVAL '1 day' AS TIMESTAMP)
      AND resolved_ts IS NOT NULL
      AND resolved_ts < CAST(DATE '${D}' + INTERVAL '1 day' AS TIMESTAMP)
    GROUP BY user_id
)
SELECT
    u.user_id,
    DATE '${D}' AS feature_date,
    coalesce(t30.spend, 0) AS total_spend_30d,
    coalesce(t7.n, 0) AS txn_count_7d,
    t30.avg_value AS avg_txn_value_30d,
    DATE '${D}' - CAST(lg.last_login AS DATE) AS days_since_last_login,
    coalesce(e30.page_views, 0) AS page_views_30d,
    coalesce(e30.feature_uses, 0) AS feature_use_count_30d,
    coalesce(k90.n, 0) AS ticket_count_90d,
    r90.hours AS avg_resolution_hours_90d,
    u.segment,
    DATE '${D}' - u.signup_date AS tenure_days
FROM u
LEFT JOIN t30 ON t30.user_id = u.user_id
LEFT JOIN t7 ON t7.user_id = u.user_id
LEFT JOIN lg ON lg.user_id = u.user_id
LEFT JOIN e30 ON e30.user_id = u.user_id
LEFT JOIN k90 ON k90.user_id = u.user_id
LEFT JOIN r90 ON r90.user_id = u.user_id
