-- Every user's current LTV as the pipeline last computed it, for reconciliation
-- against the source and the product DB. Deleted users stay, flagged.
SELECT user_id, ltv, sale_count, user_deleted
FROM revetl.user_ltv FINAL
ORDER BY user_id
