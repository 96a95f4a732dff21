-- Web console sessions (docs/console.md, docs/security.md "Console sessions").
--
-- Logging in to the console with an API key opens a session: a random 256-bit
-- session secret goes to the browser in an HttpOnly cookie, and only its
-- SHA-256 is stored here, with the key it was opened with. Every console
-- request finds its row by that hash (in the cookie's tenant scope, so row-level
-- security applies), then checks the key itself again: a revoked key ends all
-- its sessions at once, and a session can never do more than its key. The key's
-- secret is never stored. Expiry is judged by the database clock; expired rows
-- carry nothing and are deleted by the next login of the tenant.

CREATE TABLE console_sessions (
    tenant_id    text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    session_hash bytea NOT NULL CHECK (length(session_hash) = 32),
    key_id       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, session_hash)
);
CREATE INDEX console_sessions_by_key ON console_sessions (tenant_id, key_id);

ALTER TABLE console_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE console_sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON console_sessions
    USING (tenant_id = current_setting('authz.tenant', true))
    WITH CHECK (tenant_id = current_setting('authz.tenant', true));
GRANT SELECT, INSERT, DELETE ON console_sessions TO authz_service;
