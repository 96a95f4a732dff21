-- Pairing lifecycle (#5): quorum votes on approvals, admin-issued invite codes,
-- and attempt limits for invite codes.

-- Quorum. `required_approvals` is captured from the channel's policy when the
-- request is created (a later policy change does not alter live requests).
-- `approved_by` holds the distinct approvers who voted so far, in order; it is
-- only changed under the row's lock (ResolveApproval locks it FOR UPDATE) and
-- with a compare-and-set on `pending`, so concurrent votes from two processes
-- add up and exactly one of them makes the approval final.
ALTER TABLE approvals
    ADD COLUMN required_approvals integer NOT NULL DEFAULT 1
        CHECK (required_approvals BETWEEN 1 AND 5),
    ADD COLUMN approved_by text[] NOT NULL DEFAULT '{}',
    ADD CONSTRAINT approvals_votes_bounded
        CHECK (cardinality(approved_by) <= required_approvals);

-- Invite codes: a user who sends one to the bot is allowed on the channel.
-- The code (16 characters) is shown once; only HMAC(server key, tenant,
-- channel, code) is stored, and rows are looked up by it.
CREATE TABLE invites (
    tenant_id   text NOT NULL,
    invite_id   text NOT NULL,
    channel_id  text NOT NULL,
    code_hash   bytea NOT NULL,
    max_uses    integer NOT NULL CHECK (max_uses BETWEEN 1 AND 10000),
    uses        integer NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses),
    permissions text[] NOT NULL DEFAULT '{}',
    note        text NOT NULL DEFAULT '',
    created_by  text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    PRIMARY KEY (tenant_id, invite_id),
    FOREIGN KEY (tenant_id, channel_id) REFERENCES channels ON DELETE CASCADE
);
CREATE UNIQUE INDEX invites_by_code ON invites (tenant_id, channel_id, code_hash);
CREATE INDEX invites_by_channel ON invites (tenant_id, channel_id, created_at);

ALTER TABLE invites ENABLE ROW LEVEL SECURITY;
ALTER TABLE invites FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON invites
    USING (tenant_id = current_setting('authz.tenant', true))
    WITH CHECK (tenant_id = current_setting('authz.tenant', true));
GRANT SELECT, INSERT, UPDATE ON invites TO authz_service;

-- Failed invite redemptions are counted like pairing code guesses (0005):
-- 'invite:channel:<channel id>' and 'invite:user:<channel id>:<user id>'.
ALTER TABLE attempt_limits DROP CONSTRAINT attempt_limits_scope_check;
ALTER TABLE attempt_limits ADD CONSTRAINT attempt_limits_scope_check CHECK (
    scope ~ '^code:(tenant|key:[a-z0-9]+|channel:[A-Za-z0-9_.-]+)$'
    OR scope ~ '^invite:(channel:[A-Za-z0-9_.-]+|user:[A-Za-z0-9_.-]+:[A-Za-z0-9+:_-]+)$'
);
