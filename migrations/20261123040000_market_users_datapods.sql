-- The market service, after SourceNet's database (shared/seeds/market-sourcenet-schema.md): users,
-- their sessions, uploaded datasets and datapods. Purchases, escrow, reviews, downloads and AI
-- chat follow in their own migration. Changed from the seed, and why (docs/market.md):
-- * Times are TIMESTAMPTZ: replicas and clients in other time zones read the same instant.
-- * `users.sui_address` may be NULL until the user proves an address: the seed derived it from
--   client claims; an address is only recorded with a proof.
-- * `users.email` is indexed but not unique (see below).
-- * Sessions are stored as SHA-256 digests of their tokens (`sessions`).
-- * `datasets` holds uploads before they become datapods, with the dataset key wrapped by the
--   server's master key (`wrapped_key`); the seed had no place for the key but kept sellers'
--   keys in plaintext elsewhere.
-- * The full-text document is a stored generated column, `search_document`, indexed with the
--   seed's GIN index: ranking reads it instead of re-parsing title and description for every
--   match (measured: docs/performance.md). It coalesces `description`: in the seed a NULL
--   description made the whole document NULL, so such a datapod could not be found by its title.

CREATE TABLE market.users (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    google_id       VARCHAR(255) UNIQUE NOT NULL,
    email           VARCHAR(255) NOT NULL,
    name            VARCHAR(255),
    profile_image   VARCHAR(500),
    sui_address     VARCHAR(66) UNIQUE CHECK (sui_address ~ '^0x[0-9a-f]{64}$'),
    salt            VARCHAR(64) NOT NULL CHECK (salt ~ '^[0-9a-f]{64}$'),
    average_rating  DECIMAL(3, 2) NOT NULL DEFAULT 0,
    total_sales     INTEGER NOT NULL DEFAULT 0 CHECK (total_sales >= 0),
    total_purchases INTEGER NOT NULL DEFAULT 0 CHECK (total_purchases >= 0),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- The seed's indexes on google_id and sui_address duplicate their UNIQUE constraints'. The seed's
-- UNIQUE on email is dropped: identity is the issuer's `sub`, and an address can move between
-- accounts (a deleted and recreated account, a changed address) while the old row still holds it,
-- which would lock the new owner out of sign-in.
CREATE INDEX idx_users_email ON market.users (email);

CREATE TABLE market.sessions (
    token_sha256 BYTEA PRIMARY KEY CHECK (octet_length(token_sha256) = 32),
    user_id      UUID NOT NULL REFERENCES market.users (id) ON DELETE CASCADE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_user ON market.sessions (user_id);
CREATE INDEX sessions_expiry ON market.sessions (expires_at);

CREATE TABLE market.datasets (
    id                  UUID PRIMARY KEY,
    seller_id           UUID NOT NULL REFERENCES market.users (id) ON DELETE CASCADE,
    blob_id             VARCHAR(255) UNIQUE NOT NULL CHECK (blob_id ~ '^[0-9a-f]{64}$'),
    storage_size        BIGINT NOT NULL CHECK (storage_size >= 0),
    wrapped_key         BYTEA NOT NULL,
    encryption_key_hash VARCHAR(64) NOT NULL CHECK (encryption_key_hash ~ '^[0-9a-f]{64}$'),
    encryption_iv       VARCHAR(32) NOT NULL,
    file_type           VARCHAR(100) NOT NULL,
    file_size           BIGINT NOT NULL CHECK (file_size >= 0),
    data_hash           VARCHAR(64) NOT NULL CHECK (data_hash ~ '^[0-9a-f]{64}$'),
    schema              JSONB,
    sample_data         JSONB,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX datasets_seller ON market.datasets (seller_id);

CREATE TABLE market.datapods (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    seller_id           UUID NOT NULL REFERENCES market.users (id) ON DELETE CASCADE,
    title               VARCHAR(255) NOT NULL CHECK (length(title) >= 1),
    description         TEXT,
    category            VARCHAR(50),
    price_sui           DECIMAL(20, 9) NOT NULL CHECK (price_sui >= 0),
    walrus_blob_id      VARCHAR(255) UNIQUE NOT NULL,
    walrus_storage_size BIGINT,
    encryption_key_hash VARCHAR(64) NOT NULL,
    encryption_iv       VARCHAR(32) NOT NULL,
    file_type           VARCHAR(100),
    file_size           BIGINT,
    data_hash           VARCHAR(64),
    schema              JSONB,
    sample_data         JSONB,
    published           BOOLEAN NOT NULL DEFAULT false,
    purchase_count      INTEGER NOT NULL DEFAULT 0 CHECK (purchase_count >= 0),
    average_rating      DECIMAL(3, 2) NOT NULL DEFAULT 0,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    dataset_id          UUID UNIQUE NOT NULL REFERENCES market.datasets (id),
    search_document     TSVECTOR GENERATED ALWAYS AS
                        (to_tsvector('english', title || ' ' || coalesce(description, ''))) STORED
);
CREATE INDEX idx_datapods_seller ON market.datapods (seller_id, created_at DESC, id DESC);
CREATE INDEX idx_datapods_category ON market.datapods (category);
CREATE INDEX idx_datapods_published ON market.datapods (published);
CREATE INDEX idx_datapods_price ON market.datapods (price_sui);
CREATE INDEX idx_datapods_rating ON market.datapods (average_rating);
CREATE INDEX idx_datapods_search ON market.datapods USING gin (search_document);
-- What the browse orders walk: published datapods by each sort key.
CREATE INDEX datapods_published_newest ON market.datapods (created_at DESC, id DESC) WHERE published;
CREATE INDEX datapods_published_price ON market.datapods (price_sui, id) WHERE published;
CREATE INDEX datapods_published_rating ON market.datapods (average_rating DESC, id DESC) WHERE published;
CREATE INDEX datapods_published_sales ON market.datapods (purchase_count DESC, id DESC) WHERE published;
