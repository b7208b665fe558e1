-- Vertex/Bedrock providers signing with the host's own credentials may only
-- use the official endpoint unless this is set (see gandalf_common.endpoints).

ALTER TABLE providers ADD COLUMN allow_custom_endpoint boolean NOT NULL DEFAULT false;
