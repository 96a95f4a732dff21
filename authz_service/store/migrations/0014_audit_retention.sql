-- Audit retention (issue #15 item 9e): audit_events becomes a table
-- partitioned by month on `at`, so old audit can be removed a whole month at a
-- time (DROP of a partition) while no single row can ever be deleted.
--
-- The move is generic: columns (whatever earlier migrations added, e.g. a key
-- id), row-level security, policies, triggers, indexes and grants (table and
-- column level) are read from the catalog of the old table and recreated on the
-- new one, so nothing that guarded it is lost. The primary key gains `at`
-- (a partitioned table's unique keys must contain the partition key); event_id
-- stays unique, from the same identity sequence position.
--
-- Partitions: one per calendar month (UTC), audit_events_pYYYYMM, plus
-- audit_events_pdefault for any row outside them (never pruned).
-- authz_audit_partitions(months_ahead) creates the months from the oldest row's
-- up to months_ahead ahead; the service calls it at start-up and before every
-- prune. authz_audit_prune(before) drops the month partitions that end on or
-- before `before` (never the current month's), and first records one
-- `audit.pruned` event in each tenant that had events in them. Both are
-- SECURITY DEFINER (they run as the schema owner) and are the only way the
-- service role can create or drop partitions: it still holds no DELETE on
-- audit_events and no privilege at all on the partitions themselves.

DO $$
DECLARE
    r record;
    defs text[] := '{}';
BEGIN
    ALTER TABLE audit_events RENAME TO audit_events_unpartitioned;
    -- Indexes, triggers, policies and grants of the old table, as statements on the new one.
    FOR r IN SELECT indexdef FROM pg_indexes
             WHERE schemaname = current_schema() AND tablename = 'audit_events_unpartitioned'
               AND indexname <> (SELECT conname FROM pg_constraint
                                 WHERE conrelid = 'audit_events_unpartitioned'::regclass AND contype = 'p')
    LOOP
        defs := defs || replace(r.indexdef, 'audit_events_unpartitioned', 'audit_events');
    END LOOP;
    FOR r IN SELECT pg_get_triggerdef(oid) AS def FROM pg_trigger
             WHERE tgrelid = 'audit_events_unpartitioned'::regclass AND NOT tgisinternal
    LOOP
        defs := defs || replace(r.def, 'audit_events_unpartitioned', 'audit_events');
    END LOOP;
    FOR r IN SELECT * FROM pg_policies
             WHERE schemaname = current_schema() AND tablename = 'audit_events_unpartitioned'
    LOOP
        defs := defs || format('CREATE POLICY %I ON audit_events AS %s FOR %s TO %s%s%s',
            r.policyname, r.permissive, r.cmd,
            (SELECT string_agg(quote_ident(x), ', ') FROM unnest(r.roles) x),
            CASE WHEN r.qual IS NULL THEN '' ELSE ' USING (' || r.qual || ')' END,
            CASE WHEN r.with_check IS NULL THEN '' ELSE ' WITH CHECK (' || r.with_check || ')' END);
    END LOOP;
    FOR r IN SELECT grantee, privilege_type FROM information_schema.role_table_grants
             WHERE table_schema = current_schema() AND table_name = 'audit_events_unpartitioned'
               AND grantee <> (SELECT tableowner FROM pg_tables
                               WHERE schemaname = current_schema() AND tablename = 'audit_events_unpartitioned')
    LOOP
        defs := defs || format('GRANT %s ON audit_events TO %I', r.privilege_type, r.grantee);
    END LOOP;
    FOR r IN SELECT a.attname, x.privilege_type, x.grantee::regrole::text AS grantee
             FROM pg_attribute a, aclexplode(a.attacl) x
             WHERE a.attrelid = 'audit_events_unpartitioned'::regclass AND a.attacl IS NOT NULL
    LOOP
        defs := defs || format('GRANT %s (%I) ON audit_events TO %s', r.privilege_type, r.attname, r.grantee);
    END LOOP;

    CREATE TABLE audit_events (
        LIKE audit_events_unpartitioned INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING GENERATED
            INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMMENTS,
        PRIMARY KEY (tenant_id, event_id, at)
    ) PARTITION BY RANGE (at);
    CREATE TABLE audit_events_pdefault PARTITION OF audit_events DEFAULT;
    ALTER TABLE audit_events_pdefault ENABLE ROW LEVEL SECURITY;
    ALTER TABLE audit_events_pdefault FORCE ROW LEVEL SECURITY;
    CREATE POLICY tenant_isolation ON audit_events_pdefault
        USING (tenant_id = current_setting('authz.tenant', true))
        WITH CHECK (tenant_id = current_setting('authz.tenant', true));

    -- Row-level security as it was (applied after the move, with the policies).
    IF (SELECT relrowsecurity FROM pg_class WHERE oid = 'audit_events_unpartitioned'::regclass) THEN
        defs := defs || 'ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY'::text;
    END IF;
    IF (SELECT relforcerowsecurity FROM pg_class WHERE oid = 'audit_events_unpartitioned'::regclass) THEN
        defs := defs || 'ALTER TABLE audit_events FORCE ROW LEVEL SECURITY'::text;
    END IF;
    PERFORM set_config('authz.defs', array_to_string(defs, E'\x1e'), true);
END
$$;

-- One month's partition, guarded like audit_events itself: row-level security
-- enabled and forced with the same tenant policy, and no grant, so no role
-- reads or writes a partition directly; rows come and go through audit_events
-- (authz_audit_prune lifts FORCE on a partition it is about to drop, to count
-- its events per tenant).
CREATE FUNCTION authz_audit_create_partition(p_month date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    name text := 'audit_events_p' || to_char(p_month, 'YYYYMM');
    lo timestamptz := date_trunc('month', p_month::timestamp) AT TIME ZONE 'UTC';
    hi timestamptz := (date_trunc('month', p_month::timestamp) + interval '1 month') AT TIME ZONE 'UTC';
    stray boolean;
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    -- FORCE binds this owner too: lift it to see every tenant's rows in the default partition.
    ALTER TABLE audit_events_pdefault NO FORCE ROW LEVEL SECURITY;
    stray := EXISTS (SELECT 1 FROM audit_events_pdefault WHERE at >= lo AND at < hi);
    ALTER TABLE audit_events_pdefault FORCE ROW LEVEL SECURITY;
    IF stray THEN
        RETURN false;  -- its rows sit in the default partition: leave them there (never pruned)
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', name);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', name);
    EXECUTE format('CREATE POLICY tenant_isolation ON %I '
                   'USING (tenant_id = current_setting(''authz.tenant'', true)) '
                   'WITH CHECK (tenant_id = current_setting(''authz.tenant'', true))', name);
    RETURN true;
END
$$;

-- This month's partition and the next p_months_ahead; returns how many were made.
CREATE FUNCTION authz_audit_partitions(p_months_ahead integer DEFAULT 3) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    made integer := 0;
BEGIN
    IF p_months_ahead < 0 OR p_months_ahead > 24 THEN
        RAISE EXCEPTION 'months_ahead must be between 0 and 24';
    END IF;
    FOR i IN 0..p_months_ahead LOOP
        IF authz_audit_create_partition(
               (date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => i))::date) THEN
            made := made + 1;
        END IF;
    END LOOP;
    RETURN made;
END
$$;

-- Partitions for the months of the old rows, and three ahead; then the rows.
-- While the move runs, the old table is renamed: nothing else can write it.
-- The owner is bound by FORCE ROW LEVEL SECURITY too (unless it is a superuser): read
-- the old rows with it off, for their months as for the move itself.
ALTER TABLE audit_events_unpartitioned NO FORCE ROW LEVEL SECURITY;
SELECT authz_audit_partitions(3);
SELECT authz_audit_create_partition(m)
FROM (SELECT DISTINCT date_trunc('month', at AT TIME ZONE 'UTC')::date AS m FROM audit_events_unpartitioned) months;
INSERT INTO audit_events OVERRIDING SYSTEM VALUE SELECT * FROM audit_events_unpartitioned;
SELECT setval(pg_get_serial_sequence('audit_events', 'event_id'),
              coalesce((SELECT max(event_id) FROM audit_events_unpartitioned), 0) + 1, false);
DROP TABLE audit_events_unpartitioned;
DO $$
DECLARE
    d text;
BEGIN
    FOREACH d IN ARRAY string_to_array(current_setting('authz.defs'), E'\x1e') LOOP
        EXECUTE d;
    END LOOP;
    PERFORM set_config('authz.defs', '', true);
    SELECT conname INTO d FROM pg_constraint WHERE conrelid = 'audit_events'::regclass AND contype = 'p';
    IF d <> 'audit_events_pkey' THEN
        EXECUTE format('ALTER TABLE audit_events RENAME CONSTRAINT %I TO audit_events_pkey', d);
    END IF;
    IF to_regclass('audit_events_event_id_seq') IS NULL THEN
        EXECUTE format('ALTER SEQUENCE %s RENAME TO audit_events_event_id_seq',
                       pg_get_serial_sequence('audit_events', 'event_id'));
    END IF;
END
$$;

CREATE FUNCTION authz_audit_prune(p_before date)
RETURNS TABLE (partition_name text, range_from timestamptz, range_to timestamptz, events bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    p record;
    t record;
    n bigint;
    cutoff timestamptz := least(p_before::timestamp AT TIME ZONE 'UTC',
                                date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC');
BEGIN
    IF p_before IS NULL THEN
        RAISE EXCEPTION 'before is required';
    END IF;
    -- A month's partition spans tenants: only an operator transaction prunes.
    IF coalesce(current_setting('authz.operator', true), '') <> 'on' THEN
        RAISE EXCEPTION 'authz_audit_prune: pruning needs the operator scope';
    END IF;
    FOR p IN
        SELECT c.relname,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz AS lo,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz AS hi
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_events'::regclass AND c.relname ~ '^audit_events_p[0-9]{6}$'
        ORDER BY 2
    LOOP
        CONTINUE WHEN p.hi > cutoff;
        n := 0;
        EXECUTE format('ALTER TABLE %I NO FORCE ROW LEVEL SECURITY', p.relname);
        FOR t IN EXECUTE format('SELECT tenant_id, count(*) AS c, min(at) AS lo, max(at) AS hi FROM %I GROUP BY 1',
                                p.relname) LOOP
            PERFORM set_config('authz.tenant', t.tenant_id, true);
            INSERT INTO audit_events (tenant_id, event, actor, details)
            VALUES (t.tenant_id, 'audit.pruned', 'operator',
                    jsonb_build_object('partition', p.relname, 'from', p.lo, 'to', p.hi, 'events', t.c,
                                       'before', p_before));
            n := n + t.c;
        END LOOP;
        PERFORM set_config('authz.tenant', '', true);
        EXECUTE format('DROP TABLE %I', p.relname);
        partition_name := p.relname; range_from := p.lo; range_to := p.hi; events := n;
        RETURN NEXT;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION authz_audit_create_partition(date) FROM PUBLIC;
REVOKE ALL ON FUNCTION authz_audit_partitions(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION authz_audit_prune(date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION authz_audit_partitions(integer) TO authz_service;
GRANT EXECUTE ON FUNCTION authz_audit_prune(date) TO authz_service;
