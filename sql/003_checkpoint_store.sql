-- The checkpoint store kept in the warehouse (connectors/postgres PostgresCheckpointStore): a
-- query's identity, its offsets log and its commit log. A batch's commit row is written in the
-- same transaction as its warehouse rows and dead letters, which makes the effects exactly-once.
-- Re-runnable.

CREATE TABLE IF NOT EXISTS public.dataflow_checkpoints (
  checkpoint_name  TEXT PRIMARY KEY,           -- like a checkpoint location; jobs use the query name
  query_id         TEXT        NOT NULL,       -- stable across restarts
  sources          TEXT        NOT NULL,       -- serialized QueryMetadata
  epoch            BIGINT      NOT NULL DEFAULT 0,  -- bumped by each run: fences older instances
  updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.dataflow_offsets (
  checkpoint_name  TEXT        NOT NULL REFERENCES public.dataflow_checkpoints ON DELETE CASCADE,
  batch_id         BIGINT      NOT NULL,
  entry            TEXT        NOT NULL,       -- the same text as a directory store's offsets/N
  created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (checkpoint_name, batch_id)
);

CREATE TABLE IF NOT EXISTS public.dataflow_commits (
  checkpoint_name  TEXT        NOT NULL REFERENCES public.dataflow_checkpoints ON DELETE CASCADE,
  batch_id         BIGINT      NOT NULL,
  commit_ts_ms     BIGINT      NOT NULL,
  PRIMARY KEY (checkpoint_name, batch_id)
);
