-- ClickHouse side of revetl: Debezium change events of users and sales -> exact
-- current LTV per user -> one LTV change per touched user per processed block.
--
-- Placeholders {{name}} are filled by connectors/clickhouse_schema.py with validated,
-- quoted values. A statement ends with ";" at the end of a line, and a line that
-- starts with "--" is dropped before the statements are split.
--
-- Chain (every arrow is a materialized view; Null tables store nothing):
--
--   cdc_kafka (Kafka, both topics; kafka_source.sql, production only)
--     -> cdc_landing (Null)           one row per message; tests insert here
--     -> cdc_events (Null)            parsed and validated; error = '' when good
--          -> dead_letters             the others, with the reason
--          -> ods_changes (Null)       users events as they are; per sale of the
--                                      block, one row per (owner, sale) key
--               -> users               ReplacingMergeTree(version, is_deleted)
--               -> sales               ReplacingMergeTree(version, is_deleted)
--                                      ORDER BY (user_id, id): a user's sales
--               -> sales_by_id         the same rows ORDER BY (id, user_id): a
--                                      sale's keys and versions
--               -> ltv_changes (Null)  recomputed LTV of the touched users
--                    -> user_ltv       ReplacingMergeTree, the last write wins
--                    -> sink           the LTV relay over HTTP (relay_sink.sql),
--                                      or the table ltv_changes_out in tests
--                                      (plain_sink.sql)
--
-- Why the LTV is exact
-- * Nothing is added to or subtracted from a stored LTV. Each block recomputes
--   the touched users' LTV from the current state of their sales, so an event
--   delivered twice (at-least-once Kafka) or a whole block replayed after a
--   failure cannot count twice, and the next touch of a user repairs any earlier
--   mistake. Signed deltas into a SummingMergeTree count every redelivery again.
-- * version = source.lsn * 2 + (op != 'r'): a later change of a row has a greater
--   version, and a live change that shares its lsn with a snapshot read is the
--   newer one. The state of a row is always the one of greatest version (argMax,
--   ReplacingMergeTree), so an older event arriving after a newer one changes
--   nothing.
-- * A sale is stored under the key (user_id, id), so one user's sales are one
--   range of the primary key. When a sale changes owner, every former owner's key
--   gets a tombstone at the new version. The former owners come from
--   sales_by_id, where every key ever written keeps its newest row (merges only
--   drop older rows of the same key), and from before.user_id. The current state
--   of a sale is argMax over its stored rows and the block's events, so it is
--   right whatever order the events arrive in, gaps included.
-- * Users and sales go through one Kafka table with one consumer: blocks are
--   processed one after the other, and one block carries both kinds of events, so
--   a user deleted while one of its sales changes gets one message built from
--   both changes.
--
-- What a view can see (measured on chDB 3.7.2 = ClickHouse 25.8.2)
-- * Every reference to a view's source table reads the inserted block only. FINAL
--   on it is refused at the top level of the view's query; in a scalar subquery
--   it is accepted and still reads the block only.
-- * Other tables are read whole through the Merge-engine aliases *_all, where
--   FINAL works. Whether such a read already sees what a sibling view, or the
--   view's own parent, wrote for the same insert depends on the order the server
--   runs the views in (the order of system.tables.dependencies_table, which is
--   not the creation order): a view chained on a table saw its triggering block
--   through the alias in one creation order and not in another. No view here
--   relies on it: each reads the state committed by earlier inserts and adds its
--   own block, which gives the same result either way.
-- * Column aliases are visible in WHERE: a SELECT that names an output 'entity'
--   and filters on entity filters on its own alias. Filters here sit in CTEs.
--
-- Limits
-- * One INSERT into cdc_landing must reach the views as ONE block. When an insert
--   is split, a block's views may not see what the previous blocks of the same
--   insert wrote: measured, a 20-block insert left each user's LTV one block's
--   changes short in user_ltv and in the last message, while sales stayed right.
--   The next change of such a user repairs it. The Kafka table reads at most
--   kafka_max_block_size messages per insert (65,536 by default here): one block.
--   Direct inserts (tests, backfills) stay one block up to 1,048,449 rows and
--   256 MiB (max_insert_block_size, min_insert_block_size_rows and
--   min_insert_block_size_bytes, and the same limits for the views' outputs):
--   keep each INSERT under them and do not lower those settings.
-- * One writer at a time. A direct insert while the Kafka table consumes is a
--   second writer: two concurrent blocks touching one user may emit in either
--   order. user_ltv and the messages are then right again after the user's next
--   change.
-- * Messages follow processing order. source_lsn is the newest event touching
--   the user in that block: a redelivered old event gives a message with the
--   current LTV and an older source_lsn, and all snapshot reads share one lsn, so
--   the messages of a user during the snapshot carry the same source_lsn while
--   the LTV grows block by block. The relay sets no message key.
-- * A deleted user's sales are not cascaded (the source has no foreign key): the
--   user is emitted with user_deleted = 1 and the LTV of its remaining live
--   sales; deletes of those sales, if the source makes them, arrive as their own
--   events. A later insert of the same user id clears the flag.
-- * Sales events need integer id and user_id, and an integer amount unless op is
--   'd'; others go to dead_letters with the reason, as do ops other than c, u, d,
--   r (TRUNCATE is 't').
-- * OPTIMIZE ... FINAL CLEANUP on sales, sales_by_id or users would drop the
--   tombstones that keep late older events out: do not run it.
-- * sales_by_id stores every sale a second time, ordered by id: the price of
--   finding all keys and versions of a block's sales in one indexed read.
-- * Cost, measured on 2 cores with 5M sales of 10,000 users: 0.17 s for a block
--   of one event (mostly planning the views' queries), 0.24 s for 10 to 200
--   changes, 0.4 s for 1,000 amount changes touching 500 users, 0.6 s for 1,000
--   moves (touching about 1,400 users); the initial snapshot runs at about
--   38,000 sales/s in 65,536-row blocks (each block recomputes every touched
--   user). index_granularity 1024 on sales beat 256 and 8192.

CREATE DATABASE IF NOT EXISTS revetl;

CREATE TABLE IF NOT EXISTS revetl.cdc_landing
(
    received_at DateTime64(3) DEFAULT now64(3),
    topic String,
    `partition` UInt64,
    `offset` UInt64,
    raw String,
    kafka_error String DEFAULT ''
)
ENGINE = Null;

CREATE TABLE IF NOT EXISTS revetl.cdc_events
(
    received_at DateTime64(3),
    topic String,
    `partition` UInt64,
    `offset` UInt64,
    raw String,
    error String,
    entity LowCardinality(String),
    op LowCardinality(String),
    source_lsn UInt64,
    source_ts_ms Int64,
    version UInt64,
    is_deleted UInt8,
    id Int64,
    user_id Int64,
    before_user_id Nullable(Int64),
    amount Int64,
    branch Nullable(Int32),
    created_at Nullable(DateTime64(6, 'UTC')),
    first_name Nullable(String),
    last_name Nullable(String),
    middle_name Nullable(String),
    birthday Nullable(Date32),
    email Nullable(String)
)
ENGINE = Null;

CREATE TABLE IF NOT EXISTS revetl.dead_letters
(
    received_at DateTime64(3),
    topic String,
    `partition` UInt64,
    `offset` UInt64,
    raw String,
    error String
)
ENGINE = MergeTree
ORDER BY (received_at, topic, `partition`, `offset`);

CREATE TABLE IF NOT EXISTS revetl.ods_changes
(
    entity LowCardinality(String),
    id Int64,
    user_id Int64,
    version UInt64,
    is_deleted UInt8,
    amount Int64,
    branch Nullable(Int32),
    created_at Nullable(DateTime64(6, 'UTC')),
    first_name Nullable(String),
    last_name Nullable(String),
    middle_name Nullable(String),
    birthday Nullable(Date32),
    email Nullable(String),
    source_lsn UInt64,
    source_ts_ms Int64,
    trigger_version UInt64,
    trigger_ts_ms Int64
)
ENGINE = Null;

CREATE TABLE IF NOT EXISTS revetl.users
(
    id Int64,
    created_at Nullable(DateTime64(6, 'UTC')),
    first_name Nullable(String),
    last_name Nullable(String),
    middle_name Nullable(String),
    birthday Nullable(Date32),
    email Nullable(String),
    version UInt64,
    is_deleted UInt8,
    source_lsn UInt64,
    source_ts_ms Int64
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY id;

CREATE TABLE IF NOT EXISTS revetl.sales
(
    user_id Int64,
    id Int64,
    created_at Nullable(DateTime64(6, 'UTC')),
    branch Nullable(Int32),
    amount Int64,
    version UInt64,
    is_deleted UInt8,
    source_lsn UInt64,
    source_ts_ms Int64
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (user_id, id)
SETTINGS index_granularity = {{sales_index_granularity}};

CREATE TABLE IF NOT EXISTS revetl.sales_by_id
(
    id Int64,
    user_id Int64,
    created_at Nullable(DateTime64(6, 'UTC')),
    branch Nullable(Int32),
    amount Int64,
    version UInt64,
    is_deleted UInt8,
    source_lsn UInt64,
    source_ts_ms Int64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (id, user_id)
SETTINGS index_granularity = {{sales_by_id_index_granularity}};

CREATE TABLE IF NOT EXISTS revetl.ltv_changes
(
    user_id Int64,
    ltv Int64,
    sale_count UInt64,
    source_lsn UInt64,
    source_ts_ms Int64,
    user_deleted UInt8
)
ENGINE = Null;

CREATE TABLE IF NOT EXISTS revetl.user_ltv
(
    user_id Int64,
    ltv Int64,
    sale_count UInt64,
    user_deleted UInt8,
    source_lsn UInt64,
    source_ts_ms Int64,
    updated_at DateTime64(3) DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY user_id;

CREATE TABLE IF NOT EXISTS revetl.users_all AS revetl.users
ENGINE = Merge('revetl', '^users$');

CREATE TABLE IF NOT EXISTS revetl.sales_all AS revetl.sales
ENGINE = Merge('revetl', '^sales$');

CREATE TABLE IF NOT EXISTS revetl.sales_by_id_all AS revetl.sales_by_id
ENGINE = Merge('revetl', '^sales_by_id$');

-- Views are created from the end of the chain back to its start, so that a block
-- never enters a half-built chain.

CREATE MATERIALIZED VIEW IF NOT EXISTS revetl.user_ltv_mv TO revetl.user_ltv AS
SELECT user_id, ltv, sale_count, user_deleted, source_lsn, source_ts_ms
FROM revetl.ltv_changes;

CREATE MATERIALIZED VIEW IF NOT EXISTS revetl.users_mv TO revetl.users AS
SELECT
    id, created_at, first_name, last_name, middle_name, birthday, email,
    version, is_deleted, source_lsn, source_ts_ms
FROM revetl.ods_changes
WHERE entity = 'user';

CREATE MATERIALIZED VIEW IF NOT EXISTS revetl.sales_mv TO revetl.sales AS
SELECT
    user_id, id, created_at, branch, amount, version, is_deleted, source_lsn,
    source_ts_ms
FROM revetl.ods_changes
WHERE entity = 'sale';

CREATE MATERIALIZED VIEW IF NOT EXISTS revetl.sales_by_id_mv TO revetl.sales_by_id AS
SELECT
    id, user_id, created_at, branch, amount, version, is_deleted, source_lsn,
    source_ts_ms
FROM revetl.ods_changes
WHERE entity = 'sale';

-- The LTV of every user the block touches: users events touch their user, sales
-- rows touch the current owner and every former owner (their tombstones). A
-- block row is never older than the stored rows of its key (ods_changes_mv
-- derives it from them), so the live sales of a user are its stored live rows
-- (FINAL, through the alias) whose key is not in the block, plus the block's live
-- rows. That holds whether or not the sibling views have already written this
-- block, so the result does not depend on the order the server runs them in.
CREATE MATERIALIZED VIEW IF NOT EXISTS revetl.ltv_changes_mv TO revetl.ltv_changes AS
WITH
    touched AS (
        SELECT user_id, max((trigger_version, trigger_ts_ms)) AS newest
        FROM revetl.ods_changes
        GROUP BY user_id
    ),
    ltv AS (
        SELECT user_id, sum(amount) AS ltv, count() AS sale_count
        FROM
        (
            SELECT user_id, amount
            FROM revetl.ods_changes
            WHERE entity = 'sale' AND is_deleted = 0
            UNION ALL
            SELECT user_id, amount
            FROM revetl.sales_all FINAL
            WHERE user_id IN (SELECT user_id FROM revetl.ods_changes)
                AND (user_id, id) NOT IN (
                    SELECT user_id, id FROM revetl.ods_changes WHERE entity = 'sale'
                )
        )
        GROUP BY user_id
    ),
    user_state AS (
        SELECT id AS user_id, argMax(is_deleted, version) AS user_deleted
        FROM
        (
            SELECT id, version, is_deleted
            FROM revetl.ods_changes
            WHERE entity = 'user'
            UNION ALL
            SELECT id, version, is_deleted
            FROM revetl.users_all
            WHERE id IN (SELECT user_id FROM revetl.ods_changes)
        )
        GROUP BY id
    )
SELECT
    t.user_id AS user_id,
    toInt64(ifNull(l.ltv, 0)) AS ltv,
    toUInt64(ifNull(l.sale_count, 0)) AS sale_count,
    intDiv(t.newest.1, 2) AS source_lsn,
    t.newest.2 AS source_ts_ms,
    toUInt8(ifNull(u.user_deleted, 0)) AS user_deleted
FROM touched AS t
LEFT JOIN ltv AS l ON l.user_id = t.user_id
LEFT JOIN user_state AS u ON u.user_id = t.user_id
SETTINGS join_use_nulls = 1;

-- Users events pass through. For every sale of the block: its stored rows (all
-- its keys, from sales_by_id), its keys (stored ones, and the users in the
-- events' after and before images), its current state (argMax over the stored
-- rows and the block's events, a live row winning a tie with the tombstones of
-- the same version), and one row per key: live for the current owner, a tombstone
-- for the others.
CREATE MATERIALIZED VIEW IF NOT EXISTS revetl.ods_changes_mv TO revetl.ods_changes AS
WITH
    user_events AS (
        SELECT
            id, version, is_deleted, created_at, first_name, last_name, middle_name,
            birthday, email, source_lsn, source_ts_ms
        FROM revetl.cdc_events
        WHERE error = '' AND entity = 'user'
    ),
    sale_events AS (
        SELECT
            id, user_id, before_user_id, version, is_deleted, amount, branch,
            created_at, source_lsn, source_ts_ms
        FROM revetl.cdc_events
        WHERE error = '' AND entity = 'sale'
    ),
    stored AS (
        SELECT
            id, user_id, version, is_deleted, amount, branch, created_at, source_lsn,
            source_ts_ms
        FROM revetl.sales_by_id_all
        WHERE id IN (SELECT id FROM sale_events)
    ),
    sale_owners AS (
        SELECT DISTINCT id, user_id
        FROM
        (
            SELECT id, user_id FROM sale_events
            UNION ALL
            SELECT id, assumeNotNull(before_user_id) AS user_id
            FROM sale_events
            WHERE before_user_id IS NOT NULL
            UNION ALL
            SELECT id, user_id FROM stored
        )
    ),
    sale_current AS (
        SELECT
            id,
            argMax(
                (
                    version, user_id, is_deleted, amount, branch, created_at,
                    source_lsn, source_ts_ms
                ),
                (version, 1 - is_deleted)
            ) AS c
        FROM
        (
            SELECT
                id, user_id, version, is_deleted, amount, branch, created_at,
                source_lsn, source_ts_ms
            FROM sale_events
            UNION ALL
            SELECT
                id, user_id, version, is_deleted, amount, branch, created_at,
                source_lsn, source_ts_ms
            FROM stored
        )
        GROUP BY id
    ),
    sale_newest AS (
        SELECT id, max((version, source_ts_ms)) AS newest
        FROM sale_events
        GROUP BY id
    )
SELECT *
FROM
(
    SELECT
        'user' AS entity, id, id AS user_id, version, is_deleted, toInt64(0) AS amount,
        CAST(NULL, 'Nullable(Int32)') AS branch, created_at, first_name, last_name,
        middle_name, birthday, email, source_lsn, source_ts_ms,
        version AS trigger_version, source_ts_ms AS trigger_ts_ms
    FROM user_events
    UNION ALL
    SELECT
        'sale' AS entity,
        o.id AS id,
        o.user_id AS user_id,
        c.c.1 AS version,
        toUInt8(c.c.3 = 1 OR o.user_id != c.c.2) AS is_deleted,
        c.c.4 AS amount,
        c.c.5 AS branch,
        c.c.6 AS created_at,
        CAST(NULL, 'Nullable(String)') AS first_name,
        CAST(NULL, 'Nullable(String)') AS last_name,
        CAST(NULL, 'Nullable(String)') AS middle_name,
        CAST(NULL, 'Nullable(Date32)') AS birthday,
        CAST(NULL, 'Nullable(String)') AS email,
        c.c.7 AS source_lsn,
        c.c.8 AS source_ts_ms,
        n.newest.1 AS trigger_version,
        n.newest.2 AS trigger_ts_ms
    FROM sale_owners AS o
    INNER JOIN sale_current AS c ON c.id = o.id
    INNER JOIN sale_newest AS n ON n.id = o.id
);

CREATE MATERIALIZED VIEW IF NOT EXISTS revetl.dead_letters_mv TO revetl.dead_letters AS
SELECT received_at, topic, `partition`, `offset`, raw, error
FROM revetl.cdc_events
WHERE error != '';

-- Parsing and validation. Nothing here may throw: an exception would fail the
-- whole block, and the Kafka table would retry it forever. Each JSON document is
-- parsed once into a map of raw values (envelope, source, row image); a value is
-- an integer when toInt64OrNull accepts its raw text, which refuses "12" (a
-- string), 1.5 and anything beyond Int64. A missing key reads as ''.
CREATE MATERIALIZED VIEW IF NOT EXISTS revetl.cdc_events_mv TO revetl.cdc_events AS
SELECT
    received_at, topic, `partition`, `offset`, raw,
    multiIf(
        kafka_error != '', concat('kafka: ', kafka_error),
        NOT valid_json, 'not valid JSON',
        NOT startsWith(trimLeft(raw), '{'), 'not a JSON object',
        entity = '', concat('unknown topic ', topic),
        NOT startsWith(op_raw, '"'), 'op is missing or not a string',
        op NOT IN ('c', 'u', 'd', 'r'), concat('unknown op ', op),
        lsn_value IS NULL, 'source.lsn is missing or not an integer',
        lsn_value < 0, 'source.lsn is negative',
        ts_ms_value IS NULL, 'source.ts_ms is missing or not an integer',
        NOT startsWith(row_json, '{'), concat(image, ' is missing or not an object'),
        id_value IS NULL, concat(image, '.id is missing or not an integer'),
        entity = 'sale' AND user_id_value IS NULL,
            concat(image, '.user_id is missing or not an integer'),
        entity = 'sale' AND op != 'd' AND amount_value IS NULL,
            concat(image, '.amount is missing or not an integer'),
        entity = 'sale' AND amount_value IS NULL AND amount_raw NOT IN ('', 'null'),
            concat(image, '.amount is not an integer'),
        entity = 'sale' AND branch_value IS NULL AND branch_raw NOT IN ('', 'null'),
            concat(image, '.branch is not an integer'),
        entity = 'sale' AND NOT ifNull(branch_value BETWEEN -2147483648 AND 2147483647, 1),
            concat(image, '.branch is out of the INT range'),
        entity = 'sale' AND op = 'u' AND toInt64OrNull(before_user_id_raw) IS NULL
            AND before_user_id_raw NOT IN ('', 'null'),
            'before.user_id is not an integer',
        created_at_value IS NULL AND created_at_raw NOT IN ('', 'null'),
            concat(image, '.created_at is not an integer'),
        NOT ifNull(created_at_value BETWEEN -2208988800000000 AND 10413791999000000, 1),
            concat(image, '.created_at is out of range (microseconds since epoch)'),
        entity = 'user' AND birthday_value IS NULL AND birthday_raw NOT IN ('', 'null'),
            concat(image, '.birthday is not an integer'),
        entity = 'user' AND NOT ifNull(birthday_value BETWEEN -25567 AND 120529, 1),
            concat(image, '.birthday is out of range (days since epoch)'),
        entity = 'user' AND NOT arrayAll(
            v -> v IN ('', 'null') OR startsWith(v, '"'), text_raws),
            concat(image, ': a name or the email is not a string'),
        ''
    ) AS error,
    entity,
    op,
    toUInt64(greatest(ifNull(lsn_value, 0), 0)) AS source_lsn,
    ifNull(ts_ms_value, 0) AS source_ts_ms,
    source_lsn * 2 + toUInt64(op != 'r') AS version,
    toUInt8(op = 'd') AS is_deleted,
    ifNull(id_value, 0) AS id,
    if(entity = 'user', id, ifNull(user_id_value, 0)) AS user_id,
    if(op = 'u', toInt64OrNull(before_user_id_raw), NULL) AS before_user_id,
    ifNull(amount_value, 0) AS amount,
    CAST(branch_value, 'Nullable(Int32)') AS branch,
    if(created_at_value IS NULL, NULL, fromUnixTimestamp64Micro(
        least(greatest(assumeNotNull(created_at_value), -2208988800000000),
            10413791999000000), 'UTC')) AS created_at,
    if(startsWith(text_raws[1], '"'), JSONExtractString(text_raws[1]), NULL)
        AS first_name,
    if(startsWith(text_raws[2], '"'), JSONExtractString(text_raws[2]), NULL)
        AS last_name,
    if(startsWith(text_raws[3], '"'), JSONExtractString(text_raws[3]), NULL)
        AS middle_name,
    if(birthday_value IS NULL, NULL, addDays(toDate32('1970-01-01'),
        least(greatest(assumeNotNull(birthday_value), -25567), 120529))) AS birthday,
    if(startsWith(text_raws[4], '"'), JSONExtractString(text_raws[4]), NULL) AS email
FROM
(
    -- Stage 3: typed values from the raw texts of the row image.
    SELECT
        received_at, topic, `partition`, `offset`, raw, kafka_error, entity, valid_json,
        op_raw, op, image, row_json, lsn_value, ts_ms_value, before_user_id_raw,
        toInt64OrNull(row['id']) AS id_value,
        toInt64OrNull(row['user_id']) AS user_id_value,
        row['amount'] AS amount_raw,
        toInt64OrNull(amount_raw) AS amount_value,
        row['branch'] AS branch_raw,
        toInt64OrNull(branch_raw) AS branch_value,
        row['created_at'] AS created_at_raw,
        toInt64OrNull(created_at_raw) AS created_at_value,
        row['birthday'] AS birthday_raw,
        toInt64OrNull(birthday_raw) AS birthday_value,
        [row['first_name'], row['last_name'], row['middle_name'], row['email']]
            AS text_raws
    FROM
    (
        -- Stage 2: the envelope's parts; the row image is 'before' for deletes.
        SELECT
            received_at, topic, `partition`, `offset`, raw, kafka_error, entity,
            valid_json,
            envelope['op'] AS op_raw,
            JSONExtractString(op_raw) AS op,
            if(op = 'd', 'before', 'after') AS image,
            envelope[image] AS row_json,
            CAST(JSONExtractKeysAndValuesRaw(row_json), 'Map(String, String)') AS row,
            CAST(JSONExtractKeysAndValuesRaw(envelope['source']), 'Map(String, String)')
                AS source,
            toInt64OrNull(source['lsn']) AS lsn_value,
            toInt64OrNull(source['ts_ms']) AS ts_ms_value,
            JSONExtractRaw(envelope['before'], 'user_id') AS before_user_id_raw
        FROM
        (
            -- Stage 1: one parse of the whole message.
            SELECT
                received_at, topic, `partition`, `offset`, raw, kafka_error,
                multiIf(
                    topic = {{users_topic}}, 'user', topic = {{sales_topic}}, 'sale', ''
                ) AS entity,
                isValidJSON(raw) AS valid_json,
                CAST(JSONExtractKeysAndValuesRaw(raw), 'Map(String, String)') AS envelope
            FROM revetl.cdc_landing
        )
    )
)
SETTINGS short_circuit_function_evaluation = 'disable';
