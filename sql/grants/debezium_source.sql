-- The least a role needs to be Debezium's source login (pgoutput): REPLICATION (a slot and the
-- replication stream) and SELECT on the captured tables (the initial snapshot); nothing else (no
-- superuser, no CREATE, no other table). The publication is made here, by an owner of the tables,
-- so the connector runs with publication.autocreate.mode=disabled and never needs ownership.
-- Not applied by scripts/migrate.sh: run it as a superuser for the role Debezium logs in as, e.g.
--   psql -v role=cdc_source -v publication=dataflow_cdc -f sql/grants/debezium_source.sql
-- (tests/e2e: e2e.source_role). Re-runnable.
ALTER ROLE :"role" WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE;
GRANT CONNECT ON DATABASE :"DBNAME" TO :"role";
GRANT USAGE ON SCHEMA public TO :"role";
GRANT SELECT ON public.customers, public.orders TO :"role";
SELECT NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = :'publication') AS create_publication \gset
\if :create_publication
  CREATE PUBLICATION :"publication" FOR TABLE public.customers, public.orders;
\endif
