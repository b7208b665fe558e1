-- Admin API: who created a key (members manage only their own keys, also
-- when the key has no user_id), and the masked form of each provider secret
-- (first 3 + last 4 characters, computed when the secret is written) so
-- responses can show which secret is set without ever decrypting it.

ALTER TABLE api_keys ADD COLUMN created_by text;
CREATE INDEX api_keys_created_by_idx ON api_keys (created_by);
CREATE INDEX api_keys_user_id_idx ON api_keys (user_id);

ALTER TABLE providers ADD COLUMN secret_hints jsonb NOT NULL DEFAULT '{}'::jsonb;
