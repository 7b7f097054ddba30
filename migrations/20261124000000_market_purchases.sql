-- The market's purchases, escrow, reviews, downloads and AI chat, after SourceNet's database
-- (shared/seeds/market-sourcenet-schema.md). Changed from the seed, and why (docs/market.md):
-- * A purchase's datapod cannot be deleted (ON DELETE RESTRICT, not CASCADE): buyers keep what
--   they paid for, and sales records stay. Sellers unpublish instead.
-- * `UNIQUE (buyer_id, datapod_id)` spares refunded purchases (a partial unique index), so a
--   buyer who was refunded can buy again.
-- * `decryption_key` holds the dataset key wrapped for the buyer's X25519 public key, never a
--   key the server could hand to anyone else; the buyer's public key is kept beside it.
-- * Status moves only along the lifecycle (pending_payment -> processing -> completed, and
--   processing or completed -> refunded), enforced by a trigger, for purchases and escrow alike.
-- * The counters are maintained by triggers that fire on every change of status: the seed only
--   counted purchases inserted as `completed`, so one inserted as pending and completed later
--   was never counted, and a refund never uncounted. Ratings are recomputed on insert, update
--   and delete, after locking the row they summarise (two reviews committed at once would each
--   have averaged without the other).
-- * Times are TIMESTAMPTZ.

CREATE TABLE market.purchases (
    id                UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    buyer_id          UUID NOT NULL REFERENCES market.users (id) ON DELETE CASCADE,
    datapod_id        UUID NOT NULL REFERENCES market.datapods (id) ON DELETE RESTRICT,
    payment_tx_digest VARCHAR(100) UNIQUE NOT NULL,
    amount_sui        DECIMAL(20, 9) NOT NULL CHECK (amount_sui >= 0),
    encrypted_blob_id VARCHAR(255),
    decryption_key    TEXT,
    decryption_iv     VARCHAR(32),
    status            VARCHAR(20) NOT NULL DEFAULT 'pending_payment',
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at      TIMESTAMPTZ,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The buyer's X25519 public key, 32 bytes: what the dataset key is wrapped for.
    buyer_public_key  BYTEA NOT NULL CHECK (octet_length(buyer_public_key) = 32),
    -- The price when the purchase was made, in SUI (the payment must cover it).
    price_sui         DECIMAL(20, 9) NOT NULL CHECK (price_sui >= 0),
    idempotency_key   VARCHAR(255),
    -- Background work (payment checks, fulfilment): when to try next, how often it was tried,
    -- and the last failure.
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error        TEXT,
    refund_reason     TEXT,
    refunded_at       TIMESTAMPTZ,
    CONSTRAINT check_status
        CHECK (status IN ('pending_payment', 'processing', 'completed', 'refunded')),
    CONSTRAINT purchase_idempotency UNIQUE (buyer_id, idempotency_key)
);
CREATE UNIQUE INDEX unique_buyer_datapod ON market.purchases (buyer_id, datapod_id)
    WHERE status <> 'refunded';
-- The seed's indexes on buyer_id and payment_tx_digest are served by the keys above.
CREATE INDEX idx_purchases_buyer ON market.purchases (buyer_id, created_at DESC, id DESC);
CREATE INDEX idx_purchases_datapod ON market.purchases (datapod_id, created_at DESC, id DESC);
CREATE INDEX idx_purchases_status ON market.purchases (status);
-- What the background worker claims.
CREATE INDEX purchases_due ON market.purchases (next_attempt_at)
    WHERE status IN ('pending_payment', 'processing');

CREATE TABLE market.escrow_transactions (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    purchase_id      UUID NOT NULL UNIQUE REFERENCES market.purchases (id) ON DELETE CASCADE,
    seller_id        UUID REFERENCES market.users (id),
    amount_sui       DECIMAL(20, 9) NOT NULL CHECK (amount_sui >= 0),
    escrow_object_id VARCHAR(66),
    status           VARCHAR(20) NOT NULL DEFAULT 'holding',
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    released_at      TIMESTAMPTZ,
    refunded_at      TIMESTAMPTZ,
    CONSTRAINT check_escrow_status CHECK (status IN ('holding', 'released', 'refunded'))
);
CREATE INDEX idx_escrow_status ON market.escrow_transactions (status);
CREATE INDEX escrow_seller ON market.escrow_transactions (seller_id);

CREATE TABLE market.reviews (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    purchase_id UUID NOT NULL UNIQUE REFERENCES market.purchases (id) ON DELETE CASCADE,
    buyer_id    UUID NOT NULL REFERENCES market.users (id) ON DELETE CASCADE,
    datapod_id  UUID NOT NULL REFERENCES market.datapods (id) ON DELETE CASCADE,
    rating      INTEGER NOT NULL CHECK (rating >= 1 AND rating <= 5),
    comment     TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_reviews_datapod ON market.reviews (datapod_id, created_at DESC, id DESC);
CREATE INDEX idx_reviews_buyer ON market.reviews (buyer_id);
CREATE INDEX idx_reviews_rating ON market.reviews (rating);

CREATE TABLE market.download_logs (
    id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    purchase_id   UUID NOT NULL REFERENCES market.purchases (id) ON DELETE CASCADE,
    buyer_id      UUID REFERENCES market.users (id),
    datapod_id    UUID REFERENCES market.datapods (id),
    downloaded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_downloads_purchase ON market.download_logs (purchase_id);
CREATE INDEX idx_downloads_datapod ON market.download_logs (datapod_id);
CREATE INDEX idx_downloads_date ON market.download_logs (downloaded_at);

CREATE TABLE market.ai_conversations (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      UUID NOT NULL REFERENCES market.users (id) ON DELETE CASCADE,
    title        VARCHAR(255),
    total_tokens INTEGER NOT NULL DEFAULT 0 CHECK (total_tokens >= 0),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_conversations_user ON market.ai_conversations (user_id, updated_at DESC, id DESC);

CREATE TABLE market.ai_messages (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id UUID NOT NULL REFERENCES market.ai_conversations (id) ON DELETE CASCADE,
    role            VARCHAR(20) NOT NULL CHECK (role IN ('user', 'assistant')),
    content         TEXT NOT NULL,
    tokens          INTEGER CHECK (tokens >= 0),
    context         JSONB,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    -- Orders the messages of a conversation (a user message and its answer are stored together).
    seq             BIGINT GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX idx_messages_conversation ON market.ai_messages (conversation_id, seq);

-- The per-user rate limit of AI messages: a fixed window counted in the database, so that every
-- replica enforces one limit.
CREATE TABLE market.ai_rate_windows (
    user_id      UUID PRIMARY KEY REFERENCES market.users (id) ON DELETE CASCADE,
    window_start TIMESTAMPTZ NOT NULL,
    count        INTEGER NOT NULL
);

-- Status moves only along the lifecycle.
CREATE FUNCTION market.check_purchase_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> OLD.status AND NOT (
        (OLD.status = 'pending_payment' AND NEW.status = 'processing') OR
        (OLD.status = 'processing' AND NEW.status IN ('completed', 'refunded')) OR
        (OLD.status = 'completed' AND NEW.status = 'refunded')
    ) THEN
        RAISE EXCEPTION 'purchase % cannot move from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER purchase_transition BEFORE UPDATE OF status ON market.purchases
    FOR EACH ROW EXECUTE FUNCTION market.check_purchase_transition();

CREATE FUNCTION market.check_escrow_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> OLD.status AND NOT (
        (OLD.status = 'holding' AND NEW.status IN ('released', 'refunded')) OR
        (OLD.status = 'released' AND NEW.status = 'refunded')
    ) THEN
        RAISE EXCEPTION 'escrow % cannot move from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER escrow_transition BEFORE UPDATE OF status ON market.escrow_transactions
    FOR EACH ROW EXECUTE FUNCTION market.check_escrow_transition();

-- purchase_count, total_purchases and total_sales count completed purchases: whenever a
-- purchase enters or leaves `completed` (inserted, updated or deleted), by the difference.
CREATE FUNCTION market.count_purchases() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was INTEGER := 0;
    now_counted INTEGER := 0;
    pod UUID;
    buyer UUID;
    seller UUID;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status = 'completed' THEN was := 1; END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status = 'completed' THEN now_counted := 1; END IF;
    IF was = now_counted THEN RETURN NULL; END IF;
    IF TG_OP = 'DELETE' THEN pod := OLD.datapod_id; buyer := OLD.buyer_id;
    ELSE pod := NEW.datapod_id; buyer := NEW.buyer_id; END IF;
    UPDATE market.datapods SET purchase_count = purchase_count + now_counted - was
        WHERE id = pod RETURNING seller_id INTO seller;
    -- Buyer and seller rows are locked in id order: two purchases between the same two users
    -- in opposite directions must not deadlock.
    PERFORM 1 FROM market.users WHERE id IN (buyer, seller) ORDER BY id FOR UPDATE;
    UPDATE market.users SET total_purchases = total_purchases + now_counted - was
        WHERE id = buyer;
    UPDATE market.users SET total_sales = total_sales + now_counted - was
        WHERE id = seller;
    RETURN NULL;
END $$;
CREATE TRIGGER purchase_counts AFTER INSERT OR UPDATE OF status OR DELETE ON market.purchases
    FOR EACH ROW EXECUTE FUNCTION market.count_purchases();

-- A datapod's rating is the average of its reviews; a seller's is the average of their rated
-- datapods' ratings (the seed's definition). Each row is locked before it is recomputed, so the
-- average reads every review committed before it.
CREATE FUNCTION market.rate(pod UUID) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    seller UUID;
BEGIN
    SELECT seller_id INTO seller FROM market.datapods WHERE id = pod FOR UPDATE;
    IF NOT FOUND THEN RETURN; END IF;
    UPDATE market.datapods SET average_rating = coalesce(
            (SELECT round(avg(rating), 2) FROM market.reviews WHERE datapod_id = pod), 0)
        WHERE id = pod;
    PERFORM 1 FROM market.users WHERE id = seller FOR UPDATE;
    UPDATE market.users SET average_rating = coalesce(
            (SELECT round(avg(average_rating), 2) FROM market.datapods
             WHERE seller_id = seller AND average_rating > 0), 0)
        WHERE id = seller;
END $$;

CREATE FUNCTION market.rate_reviewed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN PERFORM market.rate(OLD.datapod_id); END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND (TG_OP = 'INSERT' OR NEW.datapod_id <> OLD.datapod_id) THEN
        PERFORM market.rate(NEW.datapod_id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER review_ratings AFTER INSERT OR UPDATE OR DELETE ON market.reviews
    FOR EACH ROW EXECUTE FUNCTION market.rate_reviewed();
