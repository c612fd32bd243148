-- Who a recording's channels hold (store/recordings.py `Parties`), stored with its end; NULL
-- while it runs and for recordings repaired after a crash.
ALTER TABLE recordings ADD COLUMN parties JSONB;
