-- State of stateful operators (aggregations, windows, deduplication) kept with the checkpoint
-- (connectors/postgres PostgresCheckpointStore). A batch's state changes are written in the
-- transaction that writes its warehouse rows and its commit row, so state, output and commit are
-- one atomic step. Each row is one state file: a delta (the keys a batch changed) or a snapshot,
-- of one operator and one source partition, at the version (batch id) that produced it; the
-- bytes are the engine's state file format (dataflow/state.h). Re-runnable.

CREATE TABLE IF NOT EXISTS public.dataflow_state (
  checkpoint_name  TEXT     NOT NULL REFERENCES public.dataflow_checkpoints ON DELETE CASCADE,
  operator_id      INTEGER  NOT NULL,
  partition_topic  TEXT     NOT NULL,
  partition_id     INTEGER  NOT NULL,
  version          BIGINT   NOT NULL,
  is_snapshot      BOOLEAN  NOT NULL,
  data             BYTEA    NOT NULL,
  PRIMARY KEY (checkpoint_name, operator_id, partition_topic, partition_id, version, is_snapshot)
);

-- State files are varint-packed binary: compressing them on the way into TOAST (pglz) costs the
-- batch's transaction time and saves little. Measured with bench/e2e/tables.sh's events:
-- customer_order_stats drained 200 k events in 3.71 s with EXTERNAL, 4.51 s with the default.
ALTER TABLE public.dataflow_state ALTER COLUMN data SET STORAGE EXTERNAL;

-- The watermark the next batch runs with (Spark's nextBatchWatermarkMs); NULL: none yet.
ALTER TABLE public.dataflow_commits ADD COLUMN IF NOT EXISTS next_watermark_ms BIGINT;
