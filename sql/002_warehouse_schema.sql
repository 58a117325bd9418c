-- The warehouse: a star schema fed by the CDC jobs, and the dead-letter table. Same database as
-- the source, as in the original design. Re-runnable.

CREATE TABLE IF NOT EXISTS public.dim_customers (
  customer_id    BIGINT PRIMARY KEY,
  email          TEXT,                                -- null only for a delete of a never-seen key
  country        TEXT,
  created_at     TIMESTAMPTZ,
  updated_at     TIMESTAMPTZ,
  is_deleted     BOOLEAN     NOT NULL DEFAULT false,
  first_seen_at  TIMESTAMPTZ NOT NULL DEFAULT now(),  -- set once, on first insert
  last_seen_at   TIMESTAMPTZ NOT NULL DEFAULT now(),  -- refreshed by every applied change
  event_time     TIMESTAMPTZ,                         -- source commit time (source.ts_ms)
  source_lsn     BIGINT      NOT NULL                 -- version guard: only newer changes apply
);

CREATE TABLE IF NOT EXISTS public.fact_orders (
  order_id       BIGINT PRIMARY KEY,
  customer_id    BIGINT,
  amount         NUMERIC(12,2),
  status         TEXT,
  created_at     TIMESTAMPTZ,
  updated_at     TIMESTAMPTZ,
  is_deleted     BOOLEAN     NOT NULL DEFAULT false,
  event_time     TIMESTAMPTZ,
  source_lsn     BIGINT      NOT NULL,
  first_seen_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
  last_seen_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A delete of a key never seen before leaves a soft-deleted row without values.
ALTER TABLE public.dim_customers ALTER COLUMN email DROP NOT NULL;

CREATE INDEX IF NOT EXISTS fact_orders_customer_id_idx ON public.fact_orders (customer_id);

-- Every record a job could not process, with its exact bytes. Unique per source position, so a
-- replayed batch adds no duplicates.
CREATE TABLE IF NOT EXISTS public.dlq_events (
  id               BIGSERIAL PRIMARY KEY,
  source_topic     TEXT        NOT NULL,
  source_partition INTEGER     NOT NULL,
  source_offset    BIGINT      NOT NULL,
  record_key       BYTEA,
  raw_payload      BYTEA,
  error_kind       TEXT        NOT NULL,
  error_message    TEXT        NOT NULL,
  query_name       TEXT        NOT NULL,
  batch_id         BIGINT      NOT NULL,
  created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
  UNIQUE (source_topic, source_partition, source_offset)
);

CREATE INDEX IF NOT EXISTS dlq_events_created_at_idx ON public.dlq_events (created_at);
