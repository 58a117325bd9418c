-- The warehouse tables that CDC keeps current take an update for nearly every source change. With
-- room left on each page, PostgreSQL writes the new row version next to the old one and skips the
-- index entries (a HOT update: no indexed column changes). Measured with bench/e2e/run.sh's
-- update-heavy drain (200 000 changes over 20 000 orders): 2.3 s at fillfactor 100 (the default),
-- 1.9 s at 85, 1.7 s at 70, 1.5-1.7 s at 50; 70 costs about 40 % more table pages. It applies to
-- pages written from now on (VACUUM FULL or CLUSTER rewrites the existing ones). Re-runnable.
ALTER TABLE public.fact_orders SET (fillfactor = 70);
ALTER TABLE public.dim_customers SET (fillfactor = 70);
-- The table jobs' tables are rewritten as their groups and joined rows change: the same holds.
-- An aggregate's rows are rewritten most: a batch updates a large part of them, in one
-- transaction, so the old versions on a page cannot be pruned before the batch commits and every
-- row of a page needs room for its new version at once. At 70 only 42 % of customer_order_stats'
-- updates were HOT in its 200 000-event drain over 100 000 customers (bench/e2e/tables.sh, whose
-- second half updates every customer); at 50, all of them: merge 0.79-0.85 s against 0.98-1.50 s
-- in all, the drain 3.0-3.3 s against 3.3-4.2 s (two alternating runs each). (At 100 against 70,
-- earlier: merge 210-320 against 150-190 ms per 13 400 rows.) The table holds one row per
-- customer, so twice its pages is little.
ALTER TABLE public.customer_order_stats SET (fillfactor = 50);
ALTER TABLE public.orders_enriched SET (fillfactor = 70);
ALTER TABLE public.orders_per_minute SET (fillfactor = 70);
