-- Data rights: purge and anonymise one user's data without breaking the audit trail.
--
-- audit_events stays append-only: every DELETE is refused, and so is every
-- UPDATE, except an anonymising one. That is an UPDATE made while the
-- transaction-local setting `authz.anonymize` is 'on' (the store sets it with
-- set_config(..., true) inside the purge and anonymise transactions only), and
-- it may only
--   * set actor and subject to a pseudonym ('anon:...') or leave them as they are;
--   * remove keys from details, or replace a value there with a pseudonym.
-- Which event happened, when, where, about which approval and in which trace
-- never changes. Row-level security still scopes the UPDATE to one tenant.

CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    k text;
BEGIN
    IF TG_OP <> 'UPDATE' OR coalesce(current_setting('authz.anonymize', true), '') <> 'on' THEN
        RAISE EXCEPTION 'audit_events is append-only';
    END IF;
    IF NEW.tenant_id IS DISTINCT FROM OLD.tenant_id
       OR NEW.event_id IS DISTINCT FROM OLD.event_id
       OR NEW.at IS DISTINCT FROM OLD.at
       OR NEW.event IS DISTINCT FROM OLD.event
       OR NEW.channel_id IS DISTINCT FROM OLD.channel_id
       OR NEW.approval_id IS DISTINCT FROM OLD.approval_id
       OR NEW.trace_id IS DISTINCT FROM OLD.trace_id THEN
        RAISE EXCEPTION 'audit_events: an anonymising update may change only actor, subject and details';
    END IF;
    IF NEW.actor IS DISTINCT FROM OLD.actor AND NEW.actor NOT LIKE 'anon:%' THEN
        RAISE EXCEPTION 'audit_events: an anonymising update may only replace the actor with a pseudonym';
    END IF;
    IF NEW.subject IS DISTINCT FROM OLD.subject AND NEW.subject NOT LIKE 'anon:%' THEN
        RAISE EXCEPTION 'audit_events: an anonymising update may only replace the subject with a pseudonym';
    END IF;
    IF jsonb_typeof(NEW.details) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'audit_events: an anonymising update must keep details an object';
    END IF;
    FOR k IN SELECT jsonb_object_keys(NEW.details) LOOP
        IF NOT (OLD.details ? k)
           OR (NEW.details -> k IS DISTINCT FROM OLD.details -> k
               AND NOT (jsonb_typeof(NEW.details -> k) = 'string' AND NEW.details ->> k LIKE 'anon:%')) THEN
            RAISE EXCEPTION 'audit_events: an anonymising update may only remove details or replace them with a pseudonym';
        END IF;
    END LOOP;
    RETURN NEW;
END
$$;

-- The trigger from 0001 keeps firing BEFORE UPDATE OR DELETE, now with the function above.
-- Column-level: the service can never rewrite which event happened, even before the trigger runs.
GRANT UPDATE (actor, subject, details) ON audit_events TO authz_service;
