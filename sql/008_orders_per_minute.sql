-- orders_per_minute: orders created and their revenue per status per minute of created_at,
-- maintained by the orders_per_minute job with event-time tumbling windows and a watermark: a
-- window's row is written once, when the watermark has passed its end (append mode). Orders that
-- arrive after their window was final are late: counted, and with LATE_EVENTS=deadLetter written
-- to dlq_events (error_kind late_event) with their bytes. Each source partition (or process,
-- scaled out) closes its own windows: a row's count and revenue are the sum of the partitions'
-- partial rows, each added once in its batch's transaction. Re-runnable.
CREATE TABLE IF NOT EXISTS public.orders_per_minute (
  window_start   TIMESTAMPTZ NOT NULL,
  status         TEXT        NOT NULL,
  window_end     TIMESTAMPTZ NOT NULL,
  order_count    BIGINT      NOT NULL,
  revenue        NUMERIC(16,2) NOT NULL,
  batch_version  BIGINT      NOT NULL,  -- the job's batch id + 1
  first_seen_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (window_start, status)
);
