-- The registry service, after Pulsar's package backend (shared/seeds/registry-pulsar-schema.md).
-- Kept from the seed: users, packages, names, versions, stars with their columns. Added: owners,
-- scoped API tokens, the featured list, the event log, and what the seed lacks for safety:
-- foreign keys on stars, tombstones instead of deletes (a name or version number is never
-- reused), CHECKs on counters, and the SHA-256 of each tarball.

CREATE TYPE registry.version_status AS ENUM ('latest', 'published');

CREATE TABLE registry.users (
    uuid       UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    username   TEXT NOT NULL UNIQUE,
    -- Hex SHA-256 of the user's OAuth token, as the seed intends ("a hashed version").
    token      TEXT UNIQUE CHECK (token ~ '^[0-9a-f]{64}$'),
    avatar     TEXT NOT NULL DEFAULT '',
    -- The identity provider's stable id (GitHub's node_id): logins can be renamed, this cannot.
    node_id    TEXT UNIQUE,
    data       JSONB NOT NULL DEFAULT '{}'
);

CREATE TABLE registry.packages (
    pointer          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name             TEXT NOT NULL UNIQUE,
    created          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated          TIMESTAMPTZ NOT NULL DEFAULT now(),
    creation_method  TEXT NOT NULL,
    downloads        BIGINT NOT NULL DEFAULT 0 CHECK (downloads >= 0),
    stargazers_count BIGINT NOT NULL DEFAULT 0 CHECK (stargazers_count >= 0),
    -- readme, description, keywords, repository, and the latest version's manifest.
    data             JSONB NOT NULL DEFAULT '{}',
    package_type     TEXT NOT NULL DEFAULT 'package' CHECK (package_type IN ('package', 'theme')),
    deleted_at       TIMESTAMPTZ,
    -- Full-text document: name (A), description and keywords (B), readme (D). Written by the
    -- queries that change those fields.
    search           TSVECTOR NOT NULL DEFAULT ''::tsvector
);
CREATE INDEX packages_search ON registry.packages USING GIN (search);
CREATE INDEX packages_by_downloads ON registry.packages (downloads, pointer) WHERE deleted_at IS NULL;
CREATE INDEX packages_by_stars ON registry.packages (stargazers_count, pointer) WHERE deleted_at IS NULL;
CREATE INDEX packages_by_created ON registry.packages (created, pointer) WHERE deleted_at IS NULL;
CREATE INDEX packages_by_updated ON registry.packages (updated, pointer) WHERE deleted_at IS NULL;

-- Every name a package ever had; a name once taken is never given to another package.
CREATE TABLE registry.names (
    name    TEXT PRIMARY KEY,
    pointer UUID NOT NULL REFERENCES registry.packages (pointer)
);
CREATE INDEX names_pointer ON registry.names (pointer);

CREATE TABLE registry.versions (
    id             SERIAL PRIMARY KEY,
    package_id     UUID NOT NULL REFERENCES registry.packages (pointer),
    status         registry.version_status NOT NULL DEFAULT 'published',
    semver         VARCHAR(256) NOT NULL,
    engine         JSONB NOT NULL DEFAULT '{}',
    license        VARCHAR(256) NOT NULL DEFAULT '',
    meta           JSONB NOT NULL,
    tarball_sha256 BYTEA NOT NULL CHECK (octet_length(tarball_sha256) = 32),
    tarball_size   BIGINT NOT NULL CHECK (tarball_size > 0),
    downloads      BIGINT NOT NULL DEFAULT 0 CHECK (downloads >= 0),
    yanked         BOOLEAN NOT NULL DEFAULT FALSE,
    deleted_at     TIMESTAMPTZ,
    published_by   UUID REFERENCES registry.users (uuid),
    created        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (package_id, semver),
    -- Only an offered version can be the latest.
    CHECK (status = 'published' OR (NOT yanked AND deleted_at IS NULL))
);
CREATE UNIQUE INDEX versions_one_latest ON registry.versions (package_id) WHERE status = 'latest';
CREATE INDEX versions_tarball ON registry.versions (tarball_sha256);

CREATE TABLE registry.stars (
    package    UUID NOT NULL REFERENCES registry.packages (pointer),
    "user"     UUID NOT NULL REFERENCES registry.users (uuid),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (package, "user")
);
CREATE INDEX stars_by_user ON registry.stars ("user", created_at);

CREATE TABLE registry.owners (
    package  UUID NOT NULL REFERENCES registry.packages (pointer),
    "user"   UUID NOT NULL REFERENCES registry.users (uuid),
    added_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (package, "user")
);
CREATE INDEX owners_by_user ON registry.owners ("user");

-- Scoped API tokens, as crates.io and npm issue them; only the digest is kept.
CREATE TABLE registry.api_tokens (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      UUID NOT NULL REFERENCES registry.users (uuid),
    token_sha256 BYTEA NOT NULL UNIQUE CHECK (octet_length(token_sha256) = 32),
    name         TEXT NOT NULL,
    scopes       TEXT[] NOT NULL CHECK (scopes <@ ARRAY['publish-new', 'publish-update', 'yank', 'star']
                                        AND cardinality(scopes) > 0),
    -- NULL: every package the user owns; else only these names.
    packages     TEXT[],
    expires_at   TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX api_tokens_user ON registry.api_tokens (user_id, created_at);

CREATE TABLE registry.featured (
    pointer  UUID PRIMARY KEY REFERENCES registry.packages (pointer),
    added_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The event log mirrors follow. Writers take an advisory lock before inserting, so sequence
-- numbers become visible in order and a follower reading `seq > cursor` never skips one.
CREATE TABLE registry.events (
    seq        BIGSERIAL PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('published', 'yanked', 'unyanked', 'version_deleted',
                                             'package_deleted', 'renamed')),
    package    UUID NOT NULL REFERENCES registry.packages (pointer),
    name       TEXT NOT NULL,
    version    TEXT NOT NULL DEFAULT '',
    old_name   TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
