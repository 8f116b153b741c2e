-- Apply one batch of LTV events in one statement. The caller holds the schema's
-- writer lock (stream_app.target.lock_target) and passes at most one event per user,
-- the one with the highest source LSN. {schema} is an allow-listed identifier and
-- {batch} the batch rows as a relation named b.
--
-- An event is fresh when its LSN is above the user's tombstone's and above the
-- user's row's, or equal to the row's with another LTV, class or discount; stale
-- events change nothing. An equal LSN with another LTV counts because ClickHouse
-- stamps every snapshot row with the snapshot's one LSN: a user whose snapshot
-- sales span several blocks gets several messages with that LSN, each more
-- complete than the one before, in topic order. An equal LSN with another class
-- is a re-rank under changed rules (batch_ltv's `backfill target`). Neither
-- applies to a delete, whose LSN is always its own. A plain
-- duplicate stays stale. A fresh event with the same LTV and class only advances
-- source_lsn and stat_date (so a stale event seen later is still refused) and
-- keeps updated_at. Every fresh change of class, first appearance
-- (old_class NULL) and deletion (new_class NULL) included, appends to rank_changes.
WITH batch AS (
    SELECT * FROM {batch}
),
known AS (
    SELECT
        b.*,
        CASE WHEN b.user_deleted THEN NULL ELSE b.user_class END AS new_class,
        h.user_class AS old_class,
        h.source_lsn AS row_lsn,
        h.ltv AS row_ltv,
        h.discount_pct AS row_discount,
        t.source_lsn AS tombstone_lsn
    FROM batch AS b
    LEFT JOIN {schema}.user_ltv_history AS h ON h.user_id = b.user_id
    LEFT JOIN {schema}.user_ltv_tombstones AS t ON t.user_id = b.user_id
),
fresh AS (
    SELECT *
    FROM known
    WHERE (
            row_lsn IS NULL
            OR source_lsn > row_lsn
            OR (
                source_lsn = row_lsn
                AND NOT user_deleted
                AND (ltv, new_class, discount_pct)
                    IS DISTINCT FROM (row_ltv, old_class, row_discount)
            )
        )
        AND (tombstone_lsn IS NULL OR source_lsn > tombstone_lsn)
),
upserted AS (
    INSERT INTO {schema}.user_ltv_history AS h (
        user_id, stat_date, ltv, user_class, discount_pct, source_lsn, updated_at
    )
    SELECT user_id, stat_date, ltv, user_class, discount_pct, source_lsn, now()
    FROM fresh
    WHERE NOT user_deleted
    ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE SET
        stat_date = excluded.stat_date,
        ltv = excluded.ltv,
        user_class = excluded.user_class,
        discount_pct = excluded.discount_pct,
        source_lsn = excluded.source_lsn,
        updated_at = CASE
            WHEN (h.ltv, h.user_class, h.discount_pct) IS DISTINCT FROM
                (excluded.ltv, excluded.user_class, excluded.discount_pct)
            THEN excluded.updated_at
            ELSE h.updated_at
        END
    WHERE excluded.source_lsn > h.source_lsn
        OR (
            excluded.source_lsn = h.source_lsn
            AND (excluded.ltv, excluded.user_class, excluded.discount_pct)
                IS DISTINCT FROM (h.ltv, h.user_class, h.discount_pct)
        )
    RETURNING h.user_id
),
deleted AS (
    DELETE FROM {schema}.user_ltv_history AS h
    USING fresh AS f
    WHERE f.user_deleted AND h.user_id = f.user_id AND h.source_lsn < f.source_lsn
    RETURNING h.user_id
),
tombstoned AS (
    INSERT INTO {schema}.user_ltv_tombstones AS t (
        user_id, source_lsn, source_committed_at
    )
    SELECT user_id, source_lsn, source_committed_at
    FROM fresh
    WHERE user_deleted
    ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE SET
        source_lsn = excluded.source_lsn,
        source_committed_at = excluded.source_committed_at
    WHERE excluded.source_lsn > t.source_lsn
    RETURNING t.user_id
),
revived AS (
    DELETE FROM {schema}.user_ltv_tombstones AS t
    USING fresh AS f
    WHERE NOT f.user_deleted AND t.user_id = f.user_id AND t.source_lsn < f.source_lsn
    RETURNING t.user_id
),
changed AS (
    INSERT INTO {schema}.rank_changes (
        user_id, old_class, new_class, ltv, source_lsn, source_committed_at
    )
    SELECT user_id, old_class, new_class, ltv, source_lsn, source_committed_at
    FROM fresh
    WHERE old_class IS DISTINCT FROM new_class
    ORDER BY user_id
    RETURNING user_id
)
SELECT
    (SELECT count(*) FROM batch) AS events,
    (SELECT count(*) FROM fresh) AS fresh,
    (SELECT count(*) FROM upserted) AS upserts,
    (SELECT count(*) FROM deleted) AS deletes,
    (SELECT count(*) FROM tombstoned) AS tombstones,
    (SELECT count(*) FROM revived) AS undeletes,
    (SELECT count(*) FROM changed) AS rank_changes;
