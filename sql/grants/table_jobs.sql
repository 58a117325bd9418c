-- The least a role needs to run the table jobs (customer_order_stats, orders_enriched,
-- orders_per_minute) with their checkpoint and operator state in the warehouse: what the stateless
-- jobs need (sql/grants/stream_jobs.sql: the DLQ, the checkpoint and state tables, TEMP), plus
-- their own tables, rows of which they also delete (TABLE_DELETES=hard). Not applied by
-- scripts/migrate.sh: run it for the role the table jobs log in as, e.g.
--   psql -v role=etl_tables -f sql/grants/table_jobs.sql
-- (tests/e2e: e2e.least_privilege). Re-runnable.
\ir stream_jobs.sql
GRANT SELECT, INSERT, UPDATE, DELETE ON public.customer_order_stats, public.orders_enriched, public.orders_per_minute TO :"role";
