-- Source tables captured by Debezium. Re-runnable: every statement is idempotent.
--
-- Replica identity: DEFAULT (the primary key). Updates carry the full new row in `after`; deletes
-- carry only the key in `before`, which is all the warehouse needs to soft-delete. FULL would
-- double the WAL written per change for no gain here. A text value large enough to be TOASTed is
-- not logged again by an update that leaves it unchanged; Debezium then sends the
-- `__debezium_unavailable_value` placeholder, and the jobs keep the warehouse's stored value.
--
-- Deleting a customer deletes its orders (ON DELETE CASCADE): PostgreSQL logs each cascaded row,
-- so Debezium emits a delete event for every one of those orders and the warehouse soft-deletes
-- them too.

CREATE TABLE IF NOT EXISTS public.customers (
  id          BIGSERIAL PRIMARY KEY,
  email       TEXT        NOT NULL UNIQUE,
  country     TEXT,
  created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.orders (
  id           BIGSERIAL PRIMARY KEY,
  customer_id  BIGINT        NOT NULL REFERENCES public.customers (id) ON DELETE CASCADE,
  amount       NUMERIC(12,2) NOT NULL CHECK (amount >= 0),
  status       TEXT          NOT NULL DEFAULT 'pending',
  created_at   TIMESTAMPTZ   NOT NULL DEFAULT now(),
  updated_at   TIMESTAMPTZ   NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS orders_customer_id_idx ON public.orders (customer_id);

CREATE OR REPLACE FUNCTION public.set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END;
$$;

CREATE OR REPLACE TRIGGER customers_set_updated_at
  BEFORE UPDATE ON public.customers
  FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

CREATE OR REPLACE TRIGGER orders_set_updated_at
  BEFORE UPDATE ON public.orders
  FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

ALTER TABLE public.customers REPLICA IDENTITY DEFAULT;
ALTER TABLE public.orders REPLICA IDENTITY DEFAULT;
