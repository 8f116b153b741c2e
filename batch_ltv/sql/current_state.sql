-- Every user ClickHouse knows, with the LTV recomputed from the live sales and
-- the newest change ClickHouse has processed for the user (the version the
-- product DB's guard compares). A user's stored rows include tombstones and the
-- keys of sales that moved away, so the newest version covers every change that
-- touched the user; the product DB only ever holds versions ClickHouse emitted,
-- so it never holds a newer one than this.
WITH
    live AS (
        SELECT user_id, sum(amount) AS ltv, count() AS sale_count
        FROM revetl.sales FINAL
        GROUP BY user_id
    ),
    newest AS (
        SELECT user_id, max((source_lsn, source_ts_ms)) AS version
        FROM
        (
            SELECT user_id, source_lsn, source_ts_ms FROM revetl.sales
            UNION ALL
            SELECT id AS user_id, source_lsn, source_ts_ms FROM revetl.users
            UNION ALL
            SELECT user_id, source_lsn, source_ts_ms FROM revetl.user_ltv
        )
        GROUP BY user_id
    ),
    user_state AS (
        SELECT id AS user_id, argMax(is_deleted, version) AS user_deleted
        FROM revetl.users
        GROUP BY id
    )
SELECT
    n.user_id AS user_id,
    coalesce(l.ltv, 0) AS ltv,
    coalesce(l.sale_count, 0) AS sale_count,
    tupleElement(n.version, 1) AS source_lsn,
    tupleElement(n.version, 2) AS source_ts_ms,
    coalesce(s.user_deleted, 0) AS user_deleted
FROM newest AS n
LEFT JOIN live AS l ON l.user_id = n.user_id
LEFT JOIN user_state AS s ON s.user_id = n.user_id
ORDER BY user_id
