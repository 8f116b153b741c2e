-- Execution days first .. last (both included, within one month) of
-- dds.user_ltv_history, into the load table {load_table}, from the CDC state
-- tables. For each day, every user that exists (created before the day and not
-- deleted) gets the LTV of all live sales created before the day, times in UTC as
-- Debezium delivers the source's TIMESTAMP columns. {user_class} is the rank
-- rules' multiIf over `ltv`, built from validated rules only.
--
-- The LTV of a day is the LTV before the range's first day plus the sales of the
-- range's earlier days: one window over a users x days grid instead of one scan
-- of the sales per day.
INSERT INTO {load_table} (user_id, execution_day, ltv, user_class)
WITH
    before_range AS (
        SELECT user_id, sum(amount) AS ltv
        FROM revetl.sales FINAL
        WHERE created_at < toDateTime64(toDate(%(first)s), 6, 'UTC')
        GROUP BY user_id
    ),
    in_range AS (
        SELECT user_id, toDate(created_at, 'UTC') AS sale_day, sum(amount) AS amount
        FROM revetl.sales FINAL
        WHERE created_at >= toDateTime64(toDate(%(first)s), 6, 'UTC')
            AND created_at < toDateTime64(toDate(%(last)s), 6, 'UTC')
        GROUP BY user_id, sale_day
    ),
    live_users AS (
        SELECT id AS user_id, created_at
        FROM revetl.users FINAL
        WHERE is_deleted = 0
    ),
    days AS (
        SELECT toDate(%(first)s) + number AS execution_day
        FROM numbers(%(days)s)
    ),
    grid AS (
        SELECT
            u.user_id AS user_id,
            u.created_at AS created_at,
            d.execution_day AS execution_day,
            coalesce(b.ltv, 0) AS base,
            coalesce(r.amount, 0) AS day_amount
        FROM live_users AS u
        CROSS JOIN days AS d
        LEFT JOIN before_range AS b ON b.user_id = u.user_id
        LEFT JOIN in_range AS r
            ON r.user_id = u.user_id AND r.sale_day = d.execution_day
    ),
    daily AS (
        SELECT
            user_id,
            created_at,
            execution_day,
            base + sum(day_amount) OVER (
                PARTITION BY user_id
                ORDER BY execution_day
                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
            ) AS ltv
        FROM grid
    )
SELECT user_id, execution_day, ltv, {user_class} AS user_class
FROM daily
WHERE created_at IS NULL
    OR created_at < toDateTime64(execution_day, 6, 'UTC')
