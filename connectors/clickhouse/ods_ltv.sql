-- Every user's LTV computed from scratch from the current sales in the ODS
-- (users with no live sale are absent), to check revetl.user_ltv against it.
SELECT user_id, sum(amount) AS ltv, count() AS sale_count
FROM revetl.sales FINAL
GROUP BY user_id
ORDER BY user_id
