-- The tenant's IANA time zone (TenantSettings.timezone), in which send-policy
-- time windows are judged. The service validates it with zoneinfo; the CHECK
-- only keeps the column to the shape of a zone name.
ALTER TABLE tenants ADD COLUMN timezone text NOT NULL DEFAULT 'UTC'
    CHECK (timezone ~ '^[A-Za-z][A-Za-z0-9_+/-]{0,63}$');

-- Every replica caches channels with their tenant's zone (migration 0004's
-- cache invalidation): a change of zone is announced as "tenants <tenant_id>",
-- and each replica forgets that tenant's entries. Replicas that predate this
-- payload treat it as unknown and clear their whole cache, which is safe.
CREATE FUNCTION authz_tenant_changes_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('authz_changes', 'tenants ' || NEW.tenant_id);
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_timezone_changes AFTER UPDATE OF timezone ON tenants
    FOR EACH ROW WHEN (OLD.timezone IS DISTINCT FROM NEW.timezone)
    EXECUTE FUNCTION authz_tenant_changes_notify();
