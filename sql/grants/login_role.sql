-- A login role, made or given a new password (idempotent): what a role of sql/grants/ logs in
-- with. Not applied by scripts/migrate.sh; run as a superuser, e.g.
--   psql -v role=etl_jobs -v pw=secret -f sql/grants/login_role.sql
-- (scripts/stack and docker/postgres-roles.sh make the stack's and the deployment's roles so).
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') AS create_role \gset
\if :create_role
  CREATE ROLE :"role" LOGIN PASSWORD :'pw' NOSUPERUSER NOCREATEDB NOCREATEROLE;
\else
  ALTER ROLE :"role" PASSWORD :'pw';
\endif
