-- Brute-force limits for pairing codes: failed code lookups (ResolveApproval by
-- channel and code) are counted per scope, in the database, so a limit holds
-- across replicas, worker processes and restarts.
--
-- One row per (tenant, scope). Scopes: 'code:channel:<channel id>',
-- 'code:key:<api key id>' (the caller) and 'code:tenant'. A window starts at
-- the first lookup after the previous one ended and lasts the configured
-- AUTHZ_CODE_ATTEMPT_WINDOW_SECONDS; `failures` counts failed lookups in it and
-- `refused` the lookups refused for being over a limit (only the first refusal
-- of a window is audited). Rows whose window has ended carry no information and
-- may be deleted at any time (the service prunes them).

CREATE TABLE attempt_limits (
    tenant_id    text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    scope        text NOT NULL CHECK (scope ~ '^code:(tenant|key:[a-z0-9]+|channel:[A-Za-z0-9_.-]+)$'),
    window_start timestamptz NOT NULL DEFAULT now(),
    failures     integer NOT NULL DEFAULT 0 CHECK (failures >= 0),
    refused      integer NOT NULL DEFAULT 0 CHECK (refused >= 0),
    PRIMARY KEY (tenant_id, scope)
);

ALTER TABLE attempt_limits ENABLE ROW LEVEL SECURITY;
ALTER TABLE attempt_limits FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON attempt_limits
    USING (tenant_id = current_setting('authz.tenant', true))
    WITH CHECK (tenant_id = current_setting('authz.tenant', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON attempt_limits TO authz_service;
