-- Compares the warehouse with the source: one row per table with the number of mismatches.
-- A live source row must have a live warehouse row with the same values; a warehouse row whose
-- source row is gone must be soft-deleted. Used by scripts/verify-warehouse and the e2e tests.
SELECT 'customers' AS source_table,
       count(*) FILTER (WHERE c.id IS NOT NULL AND (d.customer_id IS NULL OR d.is_deleted
                        OR d.email IS DISTINCT FROM c.email OR d.country IS DISTINCT FROM c.country
                        OR d.created_at IS DISTINCT FROM c.created_at OR d.updated_at IS DISTINCT FROM c.updated_at))
         AS stale_or_missing,
       count(*) FILTER (WHERE c.id IS NULL AND NOT d.is_deleted) AS not_deleted,
       count(c.id) AS source_rows
FROM public.customers c FULL JOIN public.dim_customers d ON d.customer_id = c.id
UNION ALL
SELECT 'orders',
       count(*) FILTER (WHERE o.id IS NOT NULL AND (f.order_id IS NULL OR f.is_deleted
                        OR f.customer_id IS DISTINCT FROM o.customer_id OR f.amount IS DISTINCT FROM o.amount
                        OR f.status IS DISTINCT FROM o.status OR f.updated_at IS DISTINCT FROM o.updated_at)),
       count(*) FILTER (WHERE o.id IS NULL AND NOT f.is_deleted),
       count(o.id)
FROM public.orders o FULL JOIN public.fact_orders f ON f.order_id = o.id;
