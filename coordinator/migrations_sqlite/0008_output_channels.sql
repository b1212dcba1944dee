-- Audio channels of an output (1: mono, tutti-mini; 2: stereo, Stable Audio). Rows from before
-- the column were all mono.
ALTER TABLE outputs ADD COLUMN channels INTEGER NOT NULL DEFAULT 1;
