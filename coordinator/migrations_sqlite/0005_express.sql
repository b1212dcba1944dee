-- Interactive tasks a worker takes beyond its slots of each kind (its express lane): interactive
-- work is dispatched into this headroom when batch work fills the slots.
ALTER TABLE workers ADD COLUMN express_slots INTEGER NOT NULL DEFAULT 0;
