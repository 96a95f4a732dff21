-- Rate limits on inbound messages (CheckUser): token buckets in the database,
-- so a limit holds across replicas and restarts.
--
-- One row per (tenant, channel, scope). Scopes: 'user:<user id>' (one user's
-- messages on the channel, direct and group together) and 'group:<group id>'
-- (all senders in one group). A bucket holds at most `burst` tokens and gains
-- `rate` tokens a second, judged by the database clock: it holds
-- least(burst, tokens + rate * (now() - updated_at)) right now. `rate` and
-- `burst` are the limit in force at the last update (each check passes the
-- current policy's, which win); `full_at` is when the bucket is full again.
--
-- A missing row is a full bucket, so rows whose `full_at` has passed carry no
-- information and may be deleted at any time (the service prunes them when it
-- creates a bucket). Deleting a channel deletes its buckets.

CREATE TABLE rate_buckets (
    tenant_id  text NOT NULL,
    channel_id text NOT NULL,
    scope      text NOT NULL CHECK (scope ~ '^(user|group):.' AND length(scope) <= 160),
    rate       double precision NOT NULL CHECK (rate > 0),
    burst      double precision NOT NULL CHECK (burst >= 1),
    tokens     double precision NOT NULL CHECK (tokens >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    full_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, channel_id, scope),
    FOREIGN KEY (tenant_id, channel_id) REFERENCES channels ON DELETE CASCADE
);

CREATE INDEX rate_buckets_full_at ON rate_buckets (tenant_id, full_at);

ALTER TABLE rate_buckets ENABLE ROW LEVEL SECURITY;
ALTER TABLE rate_buckets FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON rate_buckets
    USING (tenant_id = current_setting('authz.tenant', true))
    WITH CHECK (tenant_id = current_setting('authz.tenant', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON rate_buckets TO authz_service;
