-- CheckUser's cold read in one round trip. The function first sets the
-- transaction-local tenant, then reads: row-level security applies exactly as
-- in a transaction the service opens itself (SECURITY INVOKER, the default:
-- the caller's role, bound by RLS). Called outside an explicit transaction,
-- the setting dies with the statement's own transaction.
CREATE FUNCTION authz_check_state(p_tenant text, p_channel text, p_user text, p_group text)
RETURNS TABLE (
    channel_id   text,
    platform     text,
    policy       jsonb,
    now          timestamptz,
    timezone     text,
    status       text,
    source       text,
    display_name text,
    permissions  text[],
    expires_at   timestamptz,
    updated_at   timestamptz,
    in_group     boolean
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('authz.tenant', p_tenant, true);
    RETURN QUERY
    SELECT c.channel_id, c.platform, c.policy, now(),
           (SELECT tz.timezone FROM tenants tz WHERE tz.tenant_id = c.tenant_id),
           s.status, s.source, s.display_name, s.permissions, s.expires_at, s.updated_at,
           (p_group <> '' AND EXISTS (
               SELECT 1 FROM group_senders g
               WHERE g.tenant_id = c.tenant_id AND g.channel_id = c.channel_id
                 AND g.user_id = p_user AND g.group_id IN (p_group, '*')))
      FROM channels c
      LEFT JOIN subjects s
        ON s.tenant_id = c.tenant_id AND s.channel_id = c.channel_id AND s.user_id = p_user
     WHERE c.tenant_id = p_tenant AND c.channel_id = p_channel;
END
$$;

REVOKE ALL ON FUNCTION authz_check_state(text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authz_check_state(text, text, text, text) TO authz_service;
