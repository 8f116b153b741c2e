-- The original system's daily LTV history, rebuilt by `revetl backfill history`.
-- One row per live user per execution day: the LTV of every sale made before that
-- day and the class it gave. A run builds each month in a load table and swaps
-- it in whole (REPLACE PARTITION), so a range run again replaces its rows at
-- once and readers never see a month half written or twice.
CREATE DATABASE IF NOT EXISTS dds;

CREATE TABLE IF NOT EXISTS dds.user_ltv_history
(
    user_id Int64,
    execution_day Date,
    ltv Int64,
    user_class String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(execution_day)
ORDER BY (user_id, execution_day);
