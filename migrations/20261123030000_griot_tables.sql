-- The griot service, after the Griot node's schema (shared/seeds/griot-schema.md): packages and
-- installation jobs. Kept: every column of `packages` and `installations` with its meaning, and
-- the GIN index on `manifest`. Changed, and why (docs/griot.md):
-- * `installations.logs TEXT[]` became rows in `installation_logs` (one per line, numbered), so
--   that appending a line costs one small insert instead of rewriting a growing array, and
--   followers can resume from a line number. The view `installations_with_logs` gives the seed's
--   `logs` column back: all lines of the job, in order.
-- * Jobs carry what a shared work queue needs: a lease (`worker_id`, `lease_until`) so that a
--   dead worker's job is picked up again, an idempotency key, options, cancellation.
-- * `node_packages` records what is installed on each target node (rollback protection).
-- * `author_trust` holds the trust policy.
-- `uuid-ossp` is not needed: PostgreSQL 13+ has gen_random_uuid().

CREATE TABLE griot.packages (
    package_id    VARCHAR(64) PRIMARY KEY CHECK (package_id ~ '^[0-9a-f]{64}$'),
    manifest      JSONB NOT NULL CHECK (jsonb_typeof(manifest) = 'object'),
    artifact_url  TEXT NOT NULL,
    author_did    VARCHAR(255) NOT NULL,
    signature     TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set when the artifact's bytes are held in the blob storage (`artifact_url` = blob:...).
    artifact_size BIGINT CHECK (artifact_size >= 0),
    name          TEXT GENERATED ALWAYS AS (manifest ->> 'name') STORED,
    node_class    TEXT GENERATED ALWAYS AS (manifest ->> 'node_class') STORED,
    version       TEXT GENERATED ALWAYS AS (manifest ->> 'version') STORED
);
CREATE INDEX idx_packages_manifest ON griot.packages USING GIN (manifest);
CREATE INDEX packages_newest ON griot.packages (created_at DESC, package_id DESC);
CREATE INDEX packages_author ON griot.packages (author_did, created_at DESC, package_id DESC);
CREATE INDEX packages_name ON griot.packages (name, node_class, created_at DESC, package_id DESC);
CREATE INDEX packages_class ON griot.packages (node_class, created_at DESC, package_id DESC);

CREATE TABLE griot.author_trust (
    author_did VARCHAR(255) PRIMARY KEY,
    trust      TEXT NOT NULL CHECK (trust IN ('trusted', 'revoked')),
    note       TEXT NOT NULL DEFAULT '' CHECK (length(note) <= 1024),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE griot.installations (
    job_id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    package_id       VARCHAR(64) NOT NULL REFERENCES griot.packages (package_id),
    target_node_id   VARCHAR(255) NOT NULL,
    status           VARCHAR(50) NOT NULL
                     CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    status_message   TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at     TIMESTAMPTZ,
    idempotency_key  TEXT UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    options          JSONB NOT NULL DEFAULT '{}',
    started_at       TIMESTAMPTZ,
    attempts         INTEGER NOT NULL DEFAULT 0,
    worker_id        UUID,
    lease_until      TIMESTAMPTZ,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    -- The last log line's seq: the next line is log_count + 1.
    log_count        BIGINT NOT NULL DEFAULT 0,
    CHECK ((status IN ('completed', 'failed', 'cancelled')) = (completed_at IS NOT NULL))
);
CREATE INDEX idx_installations_status ON griot.installations (status);
-- Workers look for the oldest claimable job: pending, or running with an expired lease.
CREATE INDEX installations_claimable ON griot.installations (created_at)
    WHERE status IN ('pending', 'running');
CREATE INDEX installations_newest ON griot.installations (created_at DESC, job_id DESC);
CREATE INDEX installations_target ON griot.installations (target_node_id, created_at DESC, job_id DESC);
CREATE INDEX installations_package ON griot.installations (package_id, created_at DESC, job_id DESC);

CREATE TABLE griot.installation_logs (
    job_id    UUID NOT NULL REFERENCES griot.installations (job_id) ON DELETE CASCADE,
    seq       BIGINT NOT NULL CHECK (seq > 0),
    logged_at TIMESTAMPTZ NOT NULL,
    level     TEXT NOT NULL CHECK (level IN ('info', 'warn', 'error')),
    message   TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- The seed's `installations` with its `logs` column: every line of the job, in order.
CREATE VIEW griot.installations_with_logs AS
SELECT i.*,
       ARRAY(SELECT l.message FROM griot.installation_logs l
             WHERE l.job_id = i.job_id ORDER BY l.seq) AS logs
FROM griot.installations i;

CREATE TABLE griot.node_packages (
    target_node_id VARCHAR(255) NOT NULL,
    package_id     VARCHAR(64) NOT NULL REFERENCES griot.packages (package_id),
    name           TEXT NOT NULL,
    node_class     TEXT NOT NULL,
    version        TEXT NOT NULL,
    job_id         UUID NOT NULL REFERENCES griot.installations (job_id),
    installed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (target_node_id, package_id)
);
CREATE INDEX node_packages_name ON griot.node_packages (target_node_id, name, node_class);
