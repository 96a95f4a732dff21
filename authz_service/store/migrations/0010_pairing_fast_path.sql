-- Pairing's common cases in one statement each (issue #6): a fresh request by
-- a stranger, and the single decision that settles it. Each function is a
-- guarded write: it sets the tenant (row-level security applies as in a
-- transaction the service opens; SECURITY INVOKER), takes the same locks as
-- the general path, checks that the state the service decided on still holds,
-- and only then writes. When anything differs it writes nothing and says so
-- (no row, or the reason); the service then runs the general path
-- (flows/pairing.py), which handles every case. The decisions stay in the service: these functions only
-- refuse to write on state that moved.

-- Live requests, per tenant and channel: counted under a channel's cap on
-- every new request (that count used to scan every approval the channel ever
-- had, through approvals_by_code, so RequestPairing slowed down as history
-- grew) and per tenant for the pending gauge. Partial, so a decided request
-- leaves it: the index stays as small as the live requests, and a decision
-- writes one index entry less than with approvals_pending, which it replaces.
DROP INDEX approvals_pending;
CREATE INDEX approvals_pending_by_channel ON approvals (tenant_id, channel_id, expires_at)
    WHERE status = 'pending';

-- One subject upsert for both paths (queries.put_subject calls it too).
-- ttl_seconds <= 0: no expiry. An empty display name keeps the stored one.
CREATE FUNCTION authz_put_subject(
    p_tenant text, p_channel text, p_user text, p_status text, p_source text,
    p_display_name text, p_permissions text[], p_ttl_seconds integer)
RETURNS SETOF subjects
LANGUAGE sql VOLATILE AS $$
    INSERT INTO subjects (tenant_id, channel_id, user_id, status, source, display_name, permissions, expires_at)
    VALUES (p_tenant, p_channel, p_user, p_status, p_source, p_display_name, p_permissions,
            CASE WHEN p_ttl_seconds > 0 THEN now() + make_interval(secs => p_ttl_seconds) END)
    ON CONFLICT (tenant_id, channel_id, user_id) DO UPDATE
      SET status = EXCLUDED.status, source = EXCLUDED.source,
          display_name = CASE WHEN EXCLUDED.display_name = '' THEN subjects.display_name
                              ELSE EXCLUDED.display_name END,
          permissions = EXCLUDED.permissions, expires_at = EXCLUDED.expires_at, updated_at = now()
    RETURNING *
$$;

-- RequestPairing for a user with no subject row and no pending request, on a
-- channel whose platform and policy are still p_platform and p_policy (the
-- platform qualifies user ids and approvers), under its cap of live requests.
-- Locks the channel as the general path does (FOR NO KEY UPDATE: it
-- serializes the cap). p_expires_at comes from the service's estimate of the
-- database clock: it must be within 2 seconds of now() + p_ttl_seconds.
-- Returns 'created' when the request and its audit row were written; else,
-- having written nothing, 'policy_changed', 'state_changed' (the user's
-- standing, a pending request, the cap) or 'clock_skew'.
CREATE FUNCTION authz_pairing_create(
    p_tenant text, p_channel text, p_platform text, p_policy jsonb, p_user text, p_approval_id text,
    p_display_name text, p_code_seed bytea, p_code_hash bytea, p_expires_at timestamptz,
    p_ttl_seconds integer, p_required integer, p_max_pending integer, p_actor text, p_trace text,
    p_details jsonb)
RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM set_config('authz.tenant', p_tenant, true);
    PERFORM 1 FROM channels c
     WHERE c.tenant_id = p_tenant AND c.channel_id = p_channel AND c.platform = p_platform
       AND c.policy = p_policy
       FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN 'policy_changed';
    END IF;
    IF abs(extract(epoch FROM p_expires_at - (now() + make_interval(secs => p_ttl_seconds)))) > 2 THEN
        RETURN 'clock_skew';
    END IF;
    IF EXISTS (SELECT 1 FROM subjects s
                WHERE s.tenant_id = p_tenant AND s.channel_id = p_channel AND s.user_id = p_user)
       OR EXISTS (SELECT 1 FROM approvals a
                   WHERE a.tenant_id = p_tenant AND a.channel_id = p_channel AND a.user_id = p_user
                     AND a.kind = 'pairing' AND a.status = 'pending')
       -- count(approval_id): see queries.count_live_pending.
       OR (SELECT count(a.approval_id) FROM approvals a
            WHERE a.tenant_id = p_tenant AND a.channel_id = p_channel
              AND a.status = 'pending' AND a.expires_at > now()) >= p_max_pending
    THEN
        RETURN 'state_changed';
    END IF;
    INSERT INTO approvals (tenant_id, approval_id, kind, channel_id, user_id, display_name,
                           code_seed, code_hash, expires_at, required_approvals)
    VALUES (p_tenant, p_approval_id, 'pairing', p_channel, p_user, p_display_name,
            p_code_seed, p_code_hash, p_expires_at, p_required);
    INSERT INTO audit_events (tenant_id, event, actor, channel_id, subject, approval_id, trace_id, details)
    VALUES (p_tenant, 'pairing.requested', p_actor, p_channel, p_user, p_approval_id, p_trace, p_details);
    RETURN 'created';
END
$$;

-- ResolveApproval's read: the approval, its channel, the database clock, the
-- tenant's approvers and the requester's subject status, in one round trip.
CREATE FUNCTION authz_approval_state(p_tenant text, p_approval_id text)
RETURNS TABLE (approval approvals, channel_id text, platform text, policy jsonb, now timestamptz,
               approvers text[], subject_status text)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('authz.tenant', p_tenant, true);
    RETURN QUERY
    SELECT a, c.channel_id, c.platform, c.policy, now(),
           (SELECT t.approvers FROM tenants t WHERE t.tenant_id = a.tenant_id),
           (SELECT s.status FROM subjects s
             WHERE s.tenant_id = a.tenant_id AND s.channel_id = a.channel_id AND s.user_id = a.user_id)
      FROM approvals a
      JOIN channels c ON c.tenant_id = a.tenant_id AND c.channel_id = a.channel_id
     WHERE a.tenant_id = p_tenant AND a.approval_id = p_approval_id;
END
$$;

-- The one decision on a live pairing request that needs a single approval and
-- has no votes yet: approve, deny or block, with the requester's subject
-- (p_subject_status NULL: none, for deny) and the audit row. Locks the request
-- as the general path does; refuses (no row) if the request is not on
-- p_channel, the channel's platform and policy are no longer p_platform and
-- p_policy, the tenant's approvers are no longer p_approvers (NULL: not
-- checked; the service passes them when they decided who may resolve), the
-- request is no longer a live pairing request with no votes that needs one, or
-- an approve meets a user who was blocked meanwhile. Returns the decided request.
CREATE FUNCTION authz_pairing_decide(
    p_tenant text, p_approval_id text, p_channel text, p_platform text, p_policy jsonb, p_approvers text[],
    p_status text, p_actor text,
    p_reason text, p_subject_status text, p_subject_source text, p_ttl_seconds integer,
    p_trace text, p_details jsonb)
RETURNS SETOF approvals
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    a approvals;
    standing text;
BEGIN
    PERFORM set_config('authz.tenant', p_tenant, true);
    -- By primary key only, checked after the lock (on the row as it is now): with
    -- the conditions in the query, the planner may pick approvals_by_kind and
    -- walk every pending request of the tenant, and their dead versions.
    SELECT * INTO a FROM approvals r
     WHERE r.tenant_id = p_tenant AND r.approval_id = p_approval_id
       FOR UPDATE;
    IF NOT FOUND OR a.channel_id <> p_channel OR a.kind <> 'pairing' OR a.status <> 'pending'
       OR a.expires_at <= now() OR a.required_approvals <> 1 OR cardinality(a.approved_by) <> 0 THEN
        RETURN;
    END IF;
    PERFORM 1 FROM channels c
     WHERE c.tenant_id = p_tenant AND c.channel_id = p_channel AND c.platform = p_platform
       AND c.policy = p_policy;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_approvers IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM tenants t WHERE t.tenant_id = p_tenant AND t.approvers = p_approvers) THEN
        RETURN;
    END IF;
    -- Locked as the general path locks it: a concurrent block is seen, not overwritten.
    SELECT s.status INTO standing FROM subjects s
     WHERE s.tenant_id = p_tenant AND s.channel_id = a.channel_id AND s.user_id = a.user_id
       FOR UPDATE;
    IF p_status = 'approved' AND standing = 'blocked' THEN
        RETURN;
    END IF;
    UPDATE approvals r
       SET status = p_status, resolved_at = now(), resolved_by = p_actor, reason = p_reason,
           approved_by = CASE WHEN p_status = 'approved' THEN ARRAY[p_actor] ELSE r.approved_by END
     WHERE r.tenant_id = p_tenant AND r.approval_id = p_approval_id
    RETURNING * INTO a;
    IF p_subject_status IS NOT NULL THEN
        PERFORM authz_put_subject(p_tenant, a.channel_id, a.user_id, p_subject_status, p_subject_source,
                                  a.display_name, '{}', p_ttl_seconds);
    END IF;
    INSERT INTO audit_events (tenant_id, event, actor, channel_id, subject, approval_id, trace_id, details)
    VALUES (p_tenant, 'pairing.' || p_status, p_actor, a.channel_id, a.user_id, p_approval_id, p_trace,
            p_details);
    RETURN NEXT a;
END
$$;

REVOKE ALL ON FUNCTION authz_put_subject(text, text, text, text, text, text, text[], integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION authz_pairing_create(text, text, text, jsonb, text, text, text, bytea, bytea, timestamptz,
                                            integer, integer, integer, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION authz_approval_state(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION authz_pairing_decide(text, text, text, text, jsonb, text[], text, text, text, text, text, integer,
                                            text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authz_put_subject(text, text, text, text, text, text, text[], integer) TO authz_service;
GRANT EXECUTE ON FUNCTION authz_pairing_create(text, text, text, jsonb, text, text, text, bytea, bytea, timestamptz,
                                               integer, integer, integer, text, text, jsonb) TO authz_service;
GRANT EXECUTE ON FUNCTION authz_approval_state(text, text) TO authz_service;
GRANT EXECUTE ON FUNCTION authz_pairing_decide(text, text, text, text, jsonb, text[], text, text, text, text, text, integer,
                                               text, jsonb) TO authz_service;
