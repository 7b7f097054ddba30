-- The PDS's blobs (the seed's future `blobs` and `record_blobs`): uploaded files, stored once by
-- content in the shared blob storage (under `pds/`), listed per account, and the records that
-- reference them, so that blobs no record references are collected after a grace period.
CREATE TABLE pds.blobs (
    did        TEXT NOT NULL REFERENCES pds.accounts (did) ON DELETE CASCADE,
    cid        TEXT NOT NULL,
    sha256     BYTEA NOT NULL CHECK (octet_length(sha256) = 32),
    mime_type  TEXT NOT NULL,
    size       BIGINT NOT NULL CHECK (size >= 0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (did, cid)
);
CREATE INDEX blobs_sha256_idx ON pds.blobs (sha256);
CREATE INDEX blobs_created_idx ON pds.blobs (created_at);

-- Which record references which blob. Not a foreign key to `blobs`: an imported repository may
-- reference blobs that are uploaded after it.
CREATE TABLE pds.record_blobs (
    did         TEXT NOT NULL REFERENCES pds.accounts (did) ON DELETE CASCADE,
    record_path TEXT NOT NULL,
    blob_cid    TEXT NOT NULL,
    PRIMARY KEY (did, record_path, blob_cid)
);
CREATE INDEX record_blobs_blob_idx ON pds.record_blobs (did, blob_cid);
