-- Issue #15: API keys bound to what they act for.
--
-- channels: a connector key acts only on these channels; on any other it gets
--   the answer of a channel that does not exist (flows.scope).
-- agents:   an agent key speaks only for these agent ids; any other is refused.
--
-- Empty arrays are the keys made before this migration: they keep working
-- tenant-wide, and `authz doctor` flags them until they are re-issued bound
-- (docs/security.md, "Binding API keys"). Only connector keys carry channels
-- and only agent keys carry agents.
ALTER TABLE api_keys
    ADD COLUMN channels text[] NOT NULL DEFAULT '{}',
    ADD COLUMN agents   text[] NOT NULL DEFAULT '{}',
    ADD CONSTRAINT api_keys_channels_connector_only CHECK (role = 'connector' OR channels = '{}'),
    ADD CONSTRAINT api_keys_agents_agent_only CHECK (role = 'agent' OR agents = '{}');
