-- Dead letters an operator put back on their queues (ReplayDeadLetters): one row per queue and
-- replay, newest last, so that admins see what was replayed, by whom and when.
CREATE TABLE dead_letter_replays (
    id          BIGSERIAL PRIMARY KEY,
    replayed_by TEXT NOT NULL,          -- the admin key (tt_<id>), or 'operator' with auth off
    queue       TEXT NOT NULL,          -- denoise, vocode, results
    messages    BIGINT NOT NULL,
    size_bytes  BIGINT NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
