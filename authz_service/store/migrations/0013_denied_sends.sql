-- Denied sends, aggregated (issue #15 item 9a). A flooding agent used to write
-- one 2 KB audit row per denied EvaluateSend (700 a second); now each denial
-- counts in one row per (tenant, interval bucket, API key, agent, channel,
-- target), upserted in the transaction of the decision, so a crash loses no
-- count and the limit holds across replicas and workers.
--
-- The first denial of a bucket is audited at once as `send.denied` (what was
-- there before, plus `count: 1`); the rest only count. When a bucket has
-- closed, the service moves it into the audit as one `send.denied_summary`
-- event with the total (if more than the first) and deletes the row, in one
-- transaction: DELETE ... RETURNING locks each row, so two replicas never both
-- summarise one bucket. Rows are working state, not audit: the service may
-- delete them, and only by summarising them.
--
-- Beyond 20 distinct targets per key, agent and bucket, further targets count
-- under target '*' (an agent spraying random targets cannot grow rows either).

CREATE TABLE send_denials (
    tenant_id    text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    bucket_start timestamptz NOT NULL,
    key_id       text NOT NULL,
    agent_id     text NOT NULL,
    channel_id   text NOT NULL,
    target       text NOT NULL,
    denials      bigint NOT NULL DEFAULT 1 CHECK (denials >= 1),
    first_at     timestamptz NOT NULL DEFAULT now(),
    last_at      timestamptz NOT NULL DEFAULT now(),
    session_id   text NOT NULL DEFAULT '',
    origin       text NOT NULL DEFAULT '',
    reason       text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, bucket_start, key_id, agent_id, channel_id, target)
);

ALTER TABLE send_denials ENABLE ROW LEVEL SECURITY;
ALTER TABLE send_denials FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON send_denials
    USING (tenant_id = current_setting('authz.tenant', true))
    WITH CHECK (tenant_id = current_setting('authz.tenant', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON send_denials TO authz_service;

-- Move closed buckets into the audit: one `send.denied_summary` per bucket that
-- counted more than its first (already audited) denial; every closed bucket
-- is deleted. p_tenant: that tenant only (the caller's, from the denial path);
-- NULL: every tenant (the service's periodic sweep, in an operator
-- transaction so that tenants are visible). Returns the summaries written.
-- SECURITY DEFINER only so the sweep can set each tenant in turn; row-level
-- security still applies to every statement, and the function refuses what the
-- caller's own scope would not allow (another tenant, every tenant without the
-- operator scope, an interval under 1 s).
CREATE FUNCTION authz_summarise_send_denials(p_tenant text, p_interval_seconds integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    t text;
    prior text := current_setting('authz.tenant', true);
    written integer := 0;
    n integer;
BEGIN
    -- As row-level security would: a tenant transaction summarises its own tenant
    -- only; every tenant needs the operator scope; open buckets are never closed early.
    IF p_interval_seconds IS NULL OR p_interval_seconds < 1 THEN
        RAISE EXCEPTION 'authz_summarise_send_denials: the interval must be at least 1 second';
    END IF;
    IF p_tenant IS NULL THEN
        IF coalesce(current_setting('authz.operator', true), '') <> 'on' THEN
            RAISE EXCEPTION 'authz_summarise_send_denials: every tenant needs the operator scope';
        END IF;
    ELSIF p_tenant IS DISTINCT FROM prior THEN
        RAISE EXCEPTION 'authz_summarise_send_denials: a tenant transaction summarises its own tenant only';
    END IF;
    FOR t IN SELECT tenant_id FROM tenants WHERE p_tenant IS NULL OR tenant_id = p_tenant LOOP
        PERFORM set_config('authz.tenant', t, true);
        WITH closed AS (
            DELETE FROM send_denials
            WHERE tenant_id = t AND bucket_start + make_interval(secs => p_interval_seconds) <= now()
            RETURNING *
        )
        INSERT INTO audit_events (tenant_id, event, actor, channel_id, subject, details)
        SELECT tenant_id, 'send.denied_summary', 'agent:' || agent_id, channel_id, target,
               jsonb_build_object('count', denials, 'key', key_id, 'interval_seconds', p_interval_seconds,
                                  'bucket_start', bucket_start, 'first_at', first_at, 'last_at', last_at,
                                  'reason', reason)
        FROM closed WHERE denials > 1
        ORDER BY bucket_start, first_at;
        GET DIAGNOSTICS n = ROW_COUNT;
        written := written + n;
    END LOOP;
    PERFORM set_config('authz.tenant', coalesce(prior, ''), true);
    RETURN written;
END
$$;
REVOKE ALL ON FUNCTION authz_summarise_send_denials(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authz_summarise_send_denials(text, integer) TO authz_service;
