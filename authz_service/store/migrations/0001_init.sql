-- Foundation schema. Every tenant-owned table leads its keys with tenant_id and
-- is bound by row-level security on the transaction-local setting
-- `authz.tenant`, which the store sets with set_config(..., true) at the start of
-- every transaction. A query that forgets the tenant sees nothing.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authz_service') THEN
        CREATE ROLE authz_service LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
END
$$;

CREATE TABLE tenants (
    tenant_id    text PRIMARY KEY CHECK (tenant_id ~ '^[a-z0-9][a-z0-9-]{1,39}$'),
    display_name text NOT NULL DEFAULT '',
    approvers    text[] NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    tenant_id   text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    key_id      text NOT NULL,
    role        text NOT NULL CHECK (role IN ('connector', 'approver', 'admin')),
    name        text NOT NULL DEFAULT '',
    -- SHA-256 of the key's 256-bit secret part; the plaintext is shown once.
    secret_hash bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    PRIMARY KEY (tenant_id, key_id)
);

CREATE TABLE channels (
    tenant_id  text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    channel_id text NOT NULL,
    platform   text NOT NULL CHECK (platform IN ('telegram', 'slack', 'discord', 'whatsapp')),
    policy     jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, channel_id)
);

-- One user's DM-scope standing on one channel: allowed (allowlisted or
-- paired) or blocked. Blocking replaces an allow; there is never both.
CREATE TABLE subjects (
    tenant_id    text NOT NULL,
    channel_id   text NOT NULL,
    user_id      text NOT NULL,
    status       text NOT NULL CHECK (status IN ('allowed', 'blocked')),
    source       text NOT NULL CHECK (source IN ('admin', 'pairing')),
    display_name text NOT NULL DEFAULT '',
    permissions  text[] NOT NULL DEFAULT '{}',
    expires_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, channel_id, user_id),
    FOREIGN KEY (tenant_id, channel_id) REFERENCES channels ON DELETE CASCADE
);

-- Group sender allowlist: deliberately a different table from subjects, so a
-- DM pairing can never admit anyone to a group.
CREATE TABLE group_senders (
    tenant_id  text NOT NULL,
    channel_id text NOT NULL,
    group_id   text NOT NULL,  -- a platform group id, or '*'
    user_id    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, channel_id, group_id, user_id),
    FOREIGN KEY (tenant_id, channel_id) REFERENCES channels ON DELETE CASCADE
);

CREATE TABLE approvals (
    tenant_id    text NOT NULL,
    approval_id  text NOT NULL,
    kind         text NOT NULL DEFAULT 'pairing' CHECK (kind IN ('pairing')),
    channel_id   text NOT NULL,
    user_id      text NOT NULL,
    display_name text NOT NULL DEFAULT '',
    -- The code is HMAC(server key, code_seed); only its keyed hash is searchable.
    code_seed    bytea,
    code_hash    bytea,
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'approved', 'denied', 'blocked', 'expired')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    resolved_at  timestamptz,
    resolved_by  text NOT NULL DEFAULT '',
    reason       text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, approval_id),
    FOREIGN KEY (tenant_id, channel_id) REFERENCES channels ON DELETE CASCADE,
    CHECK ((status = 'pending') = (resolved_at IS NULL))
);

-- One live pairing request per (channel, user).
CREATE UNIQUE INDEX approvals_one_pending_pairing
    ON approvals (tenant_id, channel_id, user_id) WHERE status = 'pending' AND kind = 'pairing';
CREATE INDEX approvals_by_code ON approvals (tenant_id, channel_id, code_hash);
CREATE INDEX approvals_pending ON approvals (tenant_id, status, expires_at);

CREATE TABLE audit_events (
    tenant_id   text NOT NULL,
    event_id    bigint GENERATED ALWAYS AS IDENTITY,
    at          timestamptz NOT NULL DEFAULT now(),
    event       text NOT NULL,
    actor       text NOT NULL DEFAULT '',
    channel_id  text NOT NULL DEFAULT '',
    subject     text NOT NULL DEFAULT '',
    approval_id text NOT NULL DEFAULT '',
    trace_id    text NOT NULL DEFAULT '',
    details     jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX audit_by_time ON audit_events (tenant_id, at);
CREATE INDEX audit_by_subject ON audit_events (tenant_id, subject, event_id);

-- Append-only, whatever the caller's privileges.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only';
END
$$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

-- Row-level security. FORCE binds the table owner too; only superusers bypass,
-- and the service refuses to run as one.
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (tenant_id = current_setting('authz.tenant', true)
           OR current_setting('authz.operator', true) = 'on')
    WITH CHECK (tenant_id = current_setting('authz.tenant', true)
                OR current_setting('authz.operator', true) = 'on');

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['api_keys', 'channels', 'subjects', 'group_senders', 'approvals', 'audit_events']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''authz.tenant'', true)) '
            'WITH CHECK (tenant_id = current_setting(''authz.tenant'', true))', t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, api_keys, channels, subjects, group_senders, approvals
    TO authz_service;
GRANT SELECT, INSERT ON audit_events TO authz_service;
GRANT SELECT ON authz_schema_migrations TO authz_service;
