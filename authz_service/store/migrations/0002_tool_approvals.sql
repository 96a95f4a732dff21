-- Tool-call approvals, standing grants, agent keys and change notifications.

-- Agent runtimes get their own key role: they may ask for approvals, never give them.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('connector', 'approver', 'admin', 'agent'));

-- Tool approvers per agent id: {"agent": ["telegram:42", ...]}.
ALTER TABLE tenants ADD COLUMN agent_approvers jsonb NOT NULL DEFAULT '{}';

-- A tool approval may run outside any channel. The foreign key to channels is
-- only checked when channel_id is set (MATCH SIMPLE).
ALTER TABLE approvals ALTER COLUMN channel_id DROP NOT NULL;
ALTER TABLE approvals DROP CONSTRAINT approvals_kind_check;
ALTER TABLE approvals ADD CONSTRAINT approvals_kind_check CHECK (kind IN ('pairing', 'tool'));
ALTER TABLE approvals
    ADD COLUMN tool_name        text,
    ADD COLUMN arguments        text,
    ADD COLUMN arguments_digest bytea,
    ADD COLUMN agent_id         text NOT NULL DEFAULT '',
    ADD COLUMN session_id       text NOT NULL DEFAULT '',
    ADD COLUMN risk             text NOT NULL DEFAULT 'medium'
                                CHECK (risk IN ('low', 'medium', 'high', 'critical')),
    ADD COLUMN summary          text NOT NULL DEFAULT '',
    ADD COLUMN request_key      text,
    ADD COLUMN redeemed_at      timestamptz,
    ADD COLUMN grant_id         text NOT NULL DEFAULT '',
    ADD CONSTRAINT approvals_shape CHECK (
        CASE kind
            WHEN 'pairing' THEN channel_id IS NOT NULL AND tool_name IS NULL
            ELSE tool_name IS NOT NULL AND arguments IS NOT NULL AND arguments_digest IS NOT NULL
        END),
    ADD CONSTRAINT approvals_redeemed_only_approved CHECK (redeemed_at IS NULL OR status = 'approved');

CREATE UNIQUE INDEX approvals_request_key ON approvals (tenant_id, request_key) WHERE request_key IS NOT NULL;
CREATE INDEX approvals_by_kind ON approvals (tenant_id, kind, status, created_at);

CREATE TABLE tool_grants (
    tenant_id        text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    grant_id         text NOT NULL,
    agent_id         text NOT NULL,
    tool_name        text NOT NULL,
    arguments        text NOT NULL,
    arguments_digest bytea NOT NULL,
    approval_id      text NOT NULL,
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    revoked_at       timestamptz,
    revoked_by       text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, grant_id)
);
-- At most one live grant per exact call and agent.
CREATE UNIQUE INDEX tool_grants_live ON tool_grants (tenant_id, agent_id, arguments_digest)
    WHERE revoked_at IS NULL;

ALTER TABLE tool_grants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tool_grants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tool_grants
    USING (tenant_id = current_setting('authz.tenant', true))
    WITH CHECK (tenant_id = current_setting('authz.tenant', true));
GRANT SELECT, INSERT, UPDATE ON tool_grants TO authz_service;

-- Every change to an approval is announced on commit, to every replica:
-- payload "<tenant_id> <approval_id>". Watchers re-read the row under their
-- tenant, so the payload carries nothing a listener could not see anyway.
CREATE FUNCTION approvals_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('authz_approvals', NEW.tenant_id || ' ' || NEW.approval_id);
    RETURN NULL;
END
$$;
CREATE TRIGGER approvals_notify AFTER INSERT OR UPDATE ON approvals
    FOR EACH ROW EXECUTE FUNCTION approvals_notify();
