-- The PDS's event sequence (the seed's future `repo_seq`): every commit, identity change and
-- account status change, in the order their transactions committed. Events are written in the
-- same transaction as what they describe, under one advisory lock taken just before commit, so
-- sequence numbers are assigned in commit order and a follower reading `seq > cursor` never
-- skips an event that commits late. `event` is the encoded quintet.pds.v1.SubscribeReposResponse.
CREATE SEQUENCE pds.repo_seq_seq;
CREATE TABLE pds.repo_seq (
    seq          BIGINT PRIMARY KEY,
    did          TEXT NOT NULL,
    event_type   TEXT NOT NULL CHECK (event_type IN ('commit', 'identity', 'account', 'sync')),
    event        BYTEA NOT NULL,
    sequenced_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX repo_seq_time_idx ON pds.repo_seq (sequenced_at);
