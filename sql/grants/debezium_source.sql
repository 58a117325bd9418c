-- The least a role needs to be Debezium's source login (pgoutput): REPLICATION (a slot and the
-- replication stream), SELECT on the captured tables (the initial snapshot) and writing its
-- heartbeat row (below); nothing else (no superuser, no CREATE, no other table). The publication
-- is made here, by an owner of the tables, so the connector runs with
-- publication.autocreate.mode=disabled and never needs ownership.
-- Not applied by scripts/migrate.sh: run it as a superuser for the role Debezium logs in as, e.g.
--   psql -v role=cdc_source -v publication=dataflow_cdc -f sql/grants/debezium_source.sql
-- (tests/e2e: e2e.source_role). Re-runnable.
ALTER ROLE :"role" WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE;
GRANT CONNECT ON DATABASE :"DBNAME" TO :"role";
GRANT USAGE ON SCHEMA public TO :"role";
GRANT SELECT ON public.customers, public.orders TO :"role";
-- Debezium's heartbeat table: heartbeat.action.query (scripts/cdc/debezium-connector.json) writes
-- its one row every heartbeat. Debezium confirms a position to the slot only with a change it
-- captured, so while customers and orders are idle the slot would hold all the WAL written
-- meanwhile (the warehouse's writes, other databases) without bound. A captured write per
-- heartbeat gives it one; the table lives in its own schema so its topic (<prefix>.cdc.heartbeat)
-- is outside the jobs' dbserver1.public.* pattern.
CREATE SCHEMA IF NOT EXISTS cdc;
CREATE TABLE IF NOT EXISTS cdc.heartbeat (
  id      integer PRIMARY KEY,
  beat_at timestamptz NOT NULL
);
GRANT USAGE ON SCHEMA cdc TO :"role";
GRANT SELECT, INSERT, UPDATE ON cdc.heartbeat TO :"role";
SELECT NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = :'publication') AS create_publication \gset
\if :create_publication
  CREATE PUBLICATION :"publication" FOR TABLE public.customers, public.orders, cdc.heartbeat;
\else
  -- A publication made before the heartbeat table existed gets it.
  SELECT NOT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = :'publication'
                     AND schemaname = 'cdc' AND tablename = 'heartbeat') AS add_heartbeat \gset
  \if :add_heartbeat
    ALTER PUBLICATION :"publication" ADD TABLE cdc.heartbeat;
  \endif
\endif
