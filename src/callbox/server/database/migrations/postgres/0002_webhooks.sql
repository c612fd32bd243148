-- The webhook queue every node delivers from (see webhooks/queue.py). A node claims the head
-- entry of an ordering key for a lease (claimed_by, claimed_until); a dead node's claims expire.
CREATE TABLE webhooks (
    id            BIGSERIAL PRIMARY KEY,
    ordering_key  TEXT NOT NULL,
    url           TEXT NOT NULL,
    event         TEXT NOT NULL,
    body          BYTEA NOT NULL,
    signing_key   TEXT NOT NULL,
    delivery_id   TEXT NOT NULL,
    created_at    DOUBLE PRECISION NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    claimed_by    TEXT,
    claimed_until TIMESTAMPTZ
);
CREATE INDEX webhooks_by_key ON webhooks (ordering_key, id);
CREATE TABLE deliveries (
    seq           BIGSERIAL,
    delivery_id   TEXT PRIMARY KEY,
    ordering_key  TEXT NOT NULL,
    url           TEXT NOT NULL,
    label         TEXT NOT NULL,
    status        TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    last_time     DOUBLE PRECISION,
    created_at    DOUBLE PRECISION NOT NULL
);
CREATE INDEX deliveries_by_key ON deliveries (ordering_key, created_at, seq);
