-- The store service, after Lakery's database (shared/seeds/store-lakery-schema.md): manifests and
-- their contents. Added: `seq`, a gap-free order for followers (writers serialise on an advisory
-- lock), and `store.inline_values` for the bytes of the inline storage.

CREATE TYPE store.serializer_type AS ENUM ('value', 'stream');

CREATE TABLE store.manifests (
    id            UUID PRIMARY KEY,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    class_id      UUID NOT NULL,
    unpacker_name TEXT NOT NULL CHECK (length(unpacker_name) BETWEEN 1 AND 256),
    tags          JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(tags) = 'object'),
    seq           BIGSERIAL NOT NULL UNIQUE
);
CREATE INDEX manifests_newest ON store.manifests (created_at DESC, id DESC);
CREATE INDEX manifests_class ON store.manifests (class_id, created_at DESC, id DESC);
CREATE INDEX manifests_tags ON store.manifests USING GIN (tags jsonb_path_ops);

CREATE TABLE store.contents (
    id                     UUID PRIMARY KEY,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    manifest_id            UUID NOT NULL REFERENCES store.manifests (id) ON DELETE CASCADE,
    content_name           TEXT NOT NULL CHECK (length(content_name) BETWEEN 1 AND 1024),
    content_type           TEXT NOT NULL,
    content_encoding       TEXT NOT NULL DEFAULT '',
    content_size           BIGINT NOT NULL CHECK (content_size >= 0),
    content_hash           TEXT NOT NULL CHECK (content_hash ~ '^[0-9a-f]{64}$'),
    content_hash_algorithm TEXT NOT NULL DEFAULT 'sha256' CHECK (content_hash_algorithm = 'sha256'),
    serializer_name        TEXT NOT NULL,
    serializer_type        store.serializer_type NOT NULL,
    storage_name           TEXT NOT NULL,
    storage_data           JSONB NOT NULL,
    tags                   JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(tags) = 'object'),
    UNIQUE (manifest_id, content_name)
);
-- Garbage collection asks "does anything still point at these bytes in this storage?".
CREATE INDEX contents_bytes ON store.contents (storage_name, content_hash);

-- Bytes of the inline storage, content-addressed like the others.
CREATE TABLE store.inline_values (
    sha256     TEXT PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    data       BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
