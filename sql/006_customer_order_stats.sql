-- customer_order_stats: per customer, aggregates of its live orders, maintained by the
-- customer_order_stats job from the orders changelog as a table (updates and deletes retract what
-- the old row contributed). Equal at quiescence to
--   SELECT customer_id, count(*), sum(amount), avg(amount), max(amount), min(created_at),
--          max(created_at) FROM orders GROUP BY customer_id
-- over the rows that are not is_deleted. Re-runnable.
CREATE TABLE IF NOT EXISTS public.customer_order_stats (
  customer_id     BIGINT PRIMARY KEY,
  order_count     BIGINT,
  total_amount    NUMERIC(16,2),
  avg_amount      NUMERIC(16,6),
  max_amount      NUMERIC(12,2),
  first_order_at  TIMESTAMPTZ,
  last_order_at   TIMESTAMPTZ,
  source_lsn      BIGINT,                 -- the newest LSN among the customer's live orders
  is_deleted      BOOLEAN     NOT NULL DEFAULT false,  -- the customer has no order left
  batch_version   BIGINT      NOT NULL,   -- the job's batch id + 1: newer batches win
  first_seen_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
