-- One schema per service; each service's own migrations add its tables. `core` holds what the
-- server itself needs and every replica must agree on.
CREATE SCHEMA IF NOT EXISTS core;
CREATE SCHEMA IF NOT EXISTS registry;
CREATE SCHEMA IF NOT EXISTS store;
CREATE SCHEMA IF NOT EXISTS market;
CREATE SCHEMA IF NOT EXISTS griot;
CREATE SCHEMA IF NOT EXISTS pds;

-- Admin tokens, only as SHA-256 digests. A replica that generates a token on first start records
-- its digest here so that every replica sharing the database accepts it.
CREATE TABLE core.admin_tokens (
    token_sha256 BYTEA PRIMARY KEY CHECK (octet_length(token_sha256) = 32),
    origin       TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Server-wide keys shared by all replicas (e.g. the page-token MAC key), created once.
CREATE TABLE core.server_keys (
    name       TEXT PRIMARY KEY,
    key        BYTEA NOT NULL CHECK (octet_length(key) >= 32),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row naming this database installation, so that operators can tell which database a replica
-- is on and that it survived a restart.
CREATE TABLE core.installation (
    singleton  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    id         UUID NOT NULL DEFAULT gen_random_uuid(),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO core.installation DEFAULT VALUES;
