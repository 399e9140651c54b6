-- Makes Dagster's pool slots a real semaphore on PostgreSQL (apply once to the Dagster database, after
-- Dagster has created its tables; idempotent):
--     psql "$DAGSTER_POSTGRES_URL" -f deploy/postgres/concurrency_slot_guard.sql
--
-- Why: Dagster (1.13) claims a pool slot by selecting a free row of concurrency_slots FOR UPDATE SKIP
-- LOCKED, then updating it, on an autocommit connection: the row lock ends with the SELECT, so two steps
-- claiming at the same instant can select the same free slot and both "claim" it (the UPDATE does not
-- check that the slot is still free). The pool then runs more steps than its limit; seen here once in
-- seven runs of 8 processes on a pool of 2 (infinity_assets_tests/test_reliability.py). See the review of
-- dagster-io/dagster#34092 on the same autocommit pattern.
--
-- The guard: an UPDATE that would hand a slot already held by one step to another step changes nothing.
-- Dagster then sees 0 rows updated, reports the slot as blocked, and the step tries again at its next poll,
-- as it does when the pool is full. Freeing a slot (step_key back to NULL), taking a free one and updates
-- that keep the holder (e.g. marking a slot deleted) pass unchanged.

CREATE OR REPLACE FUNCTION infinity_assets_keep_held_slot() RETURNS trigger AS $$
BEGIN
    IF OLD.step_key IS NOT NULL AND NEW.step_key IS NOT NULL
       AND (NEW.step_key IS DISTINCT FROM OLD.step_key OR NEW.run_id IS DISTINCT FROM OLD.run_id) THEN
        RETURN NULL;  -- the slot is held by another step: skip this row
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS infinity_assets_keep_held_slot ON concurrency_slots;
CREATE TRIGGER infinity_assets_keep_held_slot
    BEFORE UPDATE ON concurrency_slots
    FOR EACH ROW EXECUTE FUNCTION infinity_assets_keep_held_slot();
