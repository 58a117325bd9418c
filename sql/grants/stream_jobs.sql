-- The least a role needs to run the stateless CDC jobs (stream_customers, stream_orders,
-- stream_all_tables) with the checkpoint in the warehouse: read and write the tables it maintains,
-- the dead-letter table and the checkpoint tables; nothing else (no superuser, no CREATE: the
-- jobs' staging tables are temporary, which PUBLIC may create by default). Not applied by
-- scripts/migrate.sh: run it for the role the jobs log in as, e.g.
--   psql -v role=etl_writer -f sql/grants/stream_jobs.sql
-- (tests/e2e: e2e.least_privilege). Re-runnable.
GRANT CONNECT, TEMPORARY ON DATABASE :"DBNAME" TO :"role";
GRANT USAGE ON SCHEMA public TO :"role";
GRANT SELECT, INSERT, UPDATE ON public.dim_customers, public.fact_orders TO :"role";
GRANT SELECT, INSERT ON public.dlq_events TO :"role";
GRANT USAGE ON SEQUENCE public.dlq_events_id_seq TO :"role";
GRANT SELECT, INSERT, UPDATE, DELETE ON public.dataflow_checkpoints, public.dataflow_offsets, public.dataflow_commits,
  public.dataflow_partition_offsets, public.dataflow_state TO :"role";
