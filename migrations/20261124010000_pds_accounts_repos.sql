-- The PDS, after the teaching PDS's schema (shared/seeds/pds-schema.md): accounts, repositories,
-- their blocks, refresh tokens, the PLC operation log, and the tables its later chapters name
-- (app passwords, a denormalised records listing). Changed from the seed, and why (docs/pds.md):
-- * `signing_key_priv` and `rotation_key_priv` hold the keys wrapped with AES-256-GCM under the
--   server's PDS master key (nonce || ciphertext || tag, bound to the DID), not hex plaintext.
-- * `handle` and `email` are NULL once an account is deleted, so both can be used again; the
--   row stays, with status `deleted`, so that its DID is never reissued.
-- * `repo_blocks.repo_rev` records the revision that created a block (the sync diffs of part 2
--   read blocks newer than a revision).
-- * `refresh_tokens` also bounds access tokens: an access token names its session's refresh
--   token, so signing out or rotating ends both.

CREATE TABLE pds.accounts (
    did               TEXT PRIMARY KEY CHECK (did ~ '^did:[a-z]+:[a-zA-Z0-9._:%-]+$'),
    handle            TEXT UNIQUE,
    email             TEXT UNIQUE,
    password_hash     TEXT NOT NULL,
    signing_key_priv  BYTEA NOT NULL,
    signing_key_pub   TEXT NOT NULL,
    rotation_key_priv BYTEA NOT NULL,
    rotation_key_pub  TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'active'
                      CHECK (status IN ('active', 'takendown', 'deactivated', 'deleted')),
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    status_changed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- The seed's accounts_handle_idx and accounts_email_idx are the UNIQUE constraints' indexes.

CREATE TABLE pds.repos (
    did        TEXT PRIMARY KEY REFERENCES pds.accounts (did) ON DELETE CASCADE,
    root_cid   TEXT NOT NULL,
    rev        TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE pds.repo_blocks (
    repo_did   TEXT NOT NULL REFERENCES pds.accounts (did) ON DELETE CASCADE,
    cid        TEXT NOT NULL,
    bytes      BYTEA NOT NULL,
    size       INTEGER NOT NULL,
    repo_rev   TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (repo_did, cid)
);
CREATE INDEX repo_blocks_cid_idx ON pds.repo_blocks (cid);
CREATE INDEX repo_blocks_rev_idx ON pds.repo_blocks (repo_did, repo_rev);

CREATE TABLE pds.refresh_tokens (
    jti               TEXT PRIMARY KEY,
    did               TEXT NOT NULL REFERENCES pds.accounts (did) ON DELETE CASCADE,
    expires_at        TIMESTAMPTZ NOT NULL,
    app_password_name TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX refresh_tokens_did_idx ON pds.refresh_tokens (did);
CREATE INDEX refresh_tokens_expiry_idx ON pds.refresh_tokens (expires_at);

CREATE TABLE pds.plc_operations (
    did        TEXT NOT NULL REFERENCES pds.accounts (did) ON DELETE CASCADE,
    cid        TEXT NOT NULL,
    operation  BYTEA NOT NULL,
    seq        BIGINT NOT NULL CHECK (seq >= 0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (did, seq)
);
CREATE INDEX plc_operations_cid_idx ON pds.plc_operations (cid);

CREATE TABLE pds.app_passwords (
    did           TEXT NOT NULL REFERENCES pds.accounts (did) ON DELETE CASCADE,
    name          TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    password_hash TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (did, name)
);

-- Reads by collection without walking the tree. The MST is the truth; this follows it in the
-- same transaction as every commit.
CREATE TABLE pds.records (
    did        TEXT NOT NULL REFERENCES pds.accounts (did) ON DELETE CASCADE,
    collection TEXT NOT NULL,
    rkey       TEXT NOT NULL,
    cid        TEXT NOT NULL,
    repo_rev   TEXT NOT NULL,
    indexed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (did, collection, rkey)
);
