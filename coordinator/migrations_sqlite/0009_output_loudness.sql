-- What an output measures after the gain stage: EBU R128 integrated loudness (LUFS) and true
-- peak (dBTP). NULL for silence and for rows from before the columns (a fixed RMS level then).
ALTER TABLE outputs ADD COLUMN loudness_lufs REAL;
ALTER TABLE outputs ADD COLUMN true_peak_dbtp REAL;
