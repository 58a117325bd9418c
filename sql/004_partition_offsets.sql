-- Scale-out: several processes of one query share a Kafka consumer group, and the group decides
-- which partitions each reads. The checkpoint of such a query is the next offset of every
-- partition, written in the same transaction as the batch's rows (connectors/postgres
-- PostgresCheckpointStore). Each assignment leases the partition again with a higher epoch; a
-- commit must carry the newest epoch and continue from the stored offset, so an instance that
-- lost a partition (paused past the group's session timeout, say) cannot commit for it.
-- Re-runnable.

CREATE TABLE IF NOT EXISTS public.dataflow_partition_offsets (
  checkpoint_name  TEXT        NOT NULL REFERENCES public.dataflow_checkpoints ON DELETE CASCADE,
  source_index     INTEGER     NOT NULL,         -- the source's position in the query
  topic            TEXT        NOT NULL,
  kafka_partition  INTEGER     NOT NULL,
  next_offset      BIGINT,                       -- null: leased, never committed
  lease_epoch      BIGINT      NOT NULL DEFAULT 1,
  owner            TEXT        NOT NULL,         -- host:pid of the instance holding the lease
  leased_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
  committed_at     TIMESTAMPTZ,
  PRIMARY KEY (checkpoint_name, source_index, topic, kafka_partition)
);
