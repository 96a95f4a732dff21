-- Pairing's one-statement guarded writes (migration 0010) are gone from the
-- service: the general path alone keeps RequestPairing + ResolveApproval above
-- the 300 pairs/s the issue asks of it (docs/performance.md, "The pairing fast
-- path, measured"). authz_put_subject and approvals_pending_by_channel stay:
-- the general path uses both.
--
-- A replica of an older build still calls these functions: upgrade every
-- replica before or together with this migration (a pairing call on an older
-- replica fails as INTERNAL once they are gone).
DROP FUNCTION authz_pairing_create(text, text, text, jsonb, text, text, text, bytea, bytea, timestamptz,
                                   integer, integer, integer, text, text, jsonb);
DROP FUNCTION authz_approval_state(text, text);
DROP FUNCTION authz_pairing_decide(text, text, text, text, jsonb, text[], text, text, text, text, text, integer,
                                   text, jsonb);
