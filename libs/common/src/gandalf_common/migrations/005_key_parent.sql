-- Keys a member mints record the key it authenticated with: they are
-- narrower than it (admin API rule) and are deleted together with it.

ALTER TABLE api_keys ADD COLUMN parent_key_id text
    REFERENCES api_keys (id) ON DELETE CASCADE;
CREATE INDEX api_keys_parent_key_id_idx ON api_keys (parent_key_id);
