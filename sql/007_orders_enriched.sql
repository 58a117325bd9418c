-- orders_enriched: every order with its customer's email and country, maintained by the
-- orders_enriched job as a foreign-key join of the two changelogs read as tables: a customer's
-- change updates all of its orders. Equal at quiescence to
--   SELECT o.id, o.customer_id, c.email, c.country, o.amount, o.status
--   FROM orders o LEFT JOIN customers c ON c.id = o.customer_id
-- over the rows that are not is_deleted. Re-runnable.
CREATE TABLE IF NOT EXISTS public.orders_enriched (
  order_id       BIGINT PRIMARY KEY,
  customer_id    BIGINT,
  email          TEXT,
  country        TEXT,
  amount         NUMERIC(12,2),
  status         TEXT,
  is_deleted     BOOLEAN     NOT NULL DEFAULT false,  -- the order is gone
  batch_version  BIGINT      NOT NULL,                -- batch id + 1, or 2 x the order's LSN (+1) when scaled out
  first_seen_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
