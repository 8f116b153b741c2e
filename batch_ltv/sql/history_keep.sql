-- The rows of one month of dds.user_ltv_history outside the days being computed
-- again, copied into the load table so that replacing the month keeps them.
INSERT INTO {load_table}
SELECT user_id, execution_day, ltv, user_class
FROM dds.user_ltv_history
WHERE toYYYYMM(execution_day) = %(month)s
    AND execution_day NOT BETWEEN toDate(%(first)s) AND toDate(%(last)s)
