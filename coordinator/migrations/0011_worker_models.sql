-- The model packs a worker serves ("name@version"), from its heartbeat: the model catalogue
-- tells from them whether live workers can run a model now. '[]' from a worker of an older
-- release, which does not say (the catalogue then counts it for every pack).
ALTER TABLE workers ADD COLUMN models JSONB NOT NULL DEFAULT '[]'::jsonb;
