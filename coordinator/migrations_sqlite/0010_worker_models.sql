-- See migrations/0010_worker_models.sql; a JSON array of "name@version".
ALTER TABLE workers ADD COLUMN models TEXT NOT NULL DEFAULT '[]';
