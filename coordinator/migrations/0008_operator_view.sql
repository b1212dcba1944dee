-- What operators see of a worker beyond its slots: where its model runs and how full its
-- denoiser forwards are (chunks per forward over its last minute), both from its heartbeat.
ALTER TABLE workers ADD COLUMN device TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN chunks_per_forward REAL NOT NULL DEFAULT 0;

-- Why messages were dead-lettered (a worker or the coordinator could not parse them), newest
-- last; the store keeps the latest 1000. The messages themselves wait in the dead-letter queue.
CREATE TABLE dead_letters (
    id          BIGSERIAL PRIMARY KEY,
    refused_by  TEXT NOT NULL,          -- a worker's name, or 'coordinator'
    queue       TEXT NOT NULL,          -- the queue it came from: denoise, vocode, results
    error       TEXT NOT NULL,
    size_bytes  BIGINT NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
