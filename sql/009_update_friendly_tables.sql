-- The warehouse tables that CDC keeps current take an update for nearly every source change. With
-- room left on each page, PostgreSQL writes the new row version next to the old one and skips the
-- index entries (a HOT update: no indexed column changes). Measured with bench/e2e/run.sh's
-- update-heavy drain (200 000 changes over 20 000 orders): 2.3 s at fillfactor 100 (the default),
-- 1.9 s at 85, 1.7 s at 70, 1.5-1.7 s at 50; 70 costs about 40 % more table pages. It applies to
-- pages written from now on (VACUUM FULL or CLUSTER rewrites the existing ones). Re-runnable.
ALTER TABLE public.fact_orders SET (fillfactor = 70);
ALTER TABLE public.dim_customers SET (fillfactor = 70);
-- The table jobs' tables are rewritten as their groups and joined rows change: the same holds.
-- customer_order_stats' 200 000-event drain over 100 000 customers (bench/e2e/tables.sh), whose
-- second half updates every customer: merge 150-190 ms per 13 400 rows at 70 vs 210-320 ms at
-- 100, the drain 4.0-4.4 s vs 4.6-4.8 s (two alternating runs each).
ALTER TABLE public.customer_order_stats SET (fillfactor = 70);
ALTER TABLE public.orders_enriched SET (fillfactor = 70);
ALTER TABLE public.orders_per_minute SET (fillfactor = 70);
