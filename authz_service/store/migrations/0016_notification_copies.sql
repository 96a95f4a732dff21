-- The outbox of approval notifications (issue #17): one copy per approver of
-- the channel, delivered by the channel's connector (WatchNotifications) and
-- recorded when it acknowledges it (AckNotification).
--
-- approvals.notice_version counts the changes a copy must show (a vote, the
-- decision, the expiry); a copy is behind while its shown_version is lower.
-- A copy holds no message text: the approver's platform id, the platform's
-- opaque reference of the message that shows it, and when delivery failed a
-- short reason class ("chat_not_found"). A copy handed to a connector is
-- leased for a short time (lease_until, lease_version), so a second connector
-- process on the channel does not post it again meanwhile.

ALTER TABLE approvals ADD COLUMN notice_version integer NOT NULL DEFAULT 1;

CREATE FUNCTION approvals_notice_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status OR NEW.approved_by IS DISTINCT FROM OLD.approved_by THEN
        NEW.notice_version := OLD.notice_version + 1;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER approvals_notice_version BEFORE UPDATE ON approvals
    FOR EACH ROW EXECUTE FUNCTION approvals_notice_version();

CREATE TABLE notification_copies (
    tenant_id     text NOT NULL,
    approval_id   text NOT NULL,
    channel_id    text NOT NULL,
    approver_id   text NOT NULL,  -- platform user id on the channel's platform
    state         text NOT NULL DEFAULT 'new' CHECK (state IN ('new', 'posted', 'unreachable')),
    shown_version integer NOT NULL DEFAULT 0,
    message_ref   text NOT NULL DEFAULT '' CHECK (length(message_ref) <= 256),
    reason        text NOT NULL DEFAULT '' CHECK (length(reason) <= 64),
    lease_until   timestamptz,
    lease_version integer NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, approval_id, approver_id),
    FOREIGN KEY (tenant_id, approval_id) REFERENCES approvals ON DELETE CASCADE
);
CREATE INDEX notification_copies_by_approver ON notification_copies (tenant_id, channel_id, approver_id);

ALTER TABLE notification_copies ENABLE ROW LEVEL SECURITY;
ALTER TABLE notification_copies FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON notification_copies
    USING (tenant_id = current_setting('authz.tenant', true))
    WITH CHECK (tenant_id = current_setting('authz.tenant', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON notification_copies TO authz_service;
