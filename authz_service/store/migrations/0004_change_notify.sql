-- Cache invalidation: every change that can alter a CheckUser or an API key
-- verification is announced on commit, to every replica, on channel
-- `authz_changes`: "<table> <tenant_id> <key...>" (space-separated; ids never
-- contain spaces). Cascaded deletes fire these row triggers too.

CREATE FUNCTION authz_changes_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
    payload text;
    -- Primary keys are never updated, so OLD and NEW name the same entry.
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    -- IF, not CASE: each branch may name only its own table's columns.
    IF TG_TABLE_NAME = 'channels' THEN
        payload := 'channels ' || r.tenant_id || ' ' || r.channel_id;
    ELSIF TG_TABLE_NAME = 'api_keys' THEN
        payload := 'api_keys ' || r.tenant_id || ' ' || r.key_id;
    ELSE  -- subjects, group_senders
        payload := TG_TABLE_NAME || ' ' || r.tenant_id || ' ' || r.channel_id || ' ' || r.user_id;
    END IF;
    PERFORM pg_notify('authz_changes', payload);
    RETURN NULL;
END
$$;

CREATE TRIGGER channels_changes AFTER INSERT OR UPDATE OR DELETE ON channels
    FOR EACH ROW EXECUTE FUNCTION authz_changes_notify();
CREATE TRIGGER subjects_changes AFTER INSERT OR UPDATE OR DELETE ON subjects
    FOR EACH ROW EXECUTE FUNCTION authz_changes_notify();
CREATE TRIGGER group_senders_changes AFTER INSERT OR UPDATE OR DELETE ON group_senders
    FOR EACH ROW EXECUTE FUNCTION authz_changes_notify();
CREATE TRIGGER api_keys_changes AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION authz_changes_notify();
