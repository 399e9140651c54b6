-- OPT-IN OPS WORKAROUND for Dagster 1.13.x on PostgreSQL: makes the pool slots of concurrency_slots (a table
-- that belongs to Dagster) a real semaphore across processes. Not needed for correctness of this package: the
-- Infinity client's max_concurrency and the server's 429 answers already bound the load on the GPU servers;
-- the guard only makes the `infinity` pool's limit exact. Remove it before any Dagster upgrade or
-- `dagster instance migrate` (DROP statements at the end of this comment), then re-check the issue below.
--
-- Apply once to the Dagster database, after `dagster instance migrate`, saying which Dagster is installed
-- (the script refuses any version but 1.13.x, and a concurrency_slots table of another shape):
--     PGOPTIONS="-c infinity_assets.dagster_version=$(python -c 'import dagster; print(dagster.__version__)')" \
--         psql "$DAGSTER_POSTGRES_URL" -v ON_ERROR_STOP=1 -f deploy/postgres/concurrency_slot_guard.sql
-- (infinity_assets_dev.postgres.apply_slot_guard does the same from Python.) Idempotent.
--
-- Why (upstream, no issue filed at the time of writing; the same autocommit pattern was found in review of
-- dagster-io/dagster#34092, "Pool assignment lock ends early", for assign_pending_steps): Dagster 1.13's
-- SqlEventLogStorage.claim_concurrency_slot selects a free row of concurrency_slots FOR UPDATE SKIP LOCKED
-- and then updates it, on an autocommit connection (index_connection): the row lock ends with the SELECT, so
-- two steps claiming at the same instant can select the same free slot and both "claim" it (the UPDATE does
-- not check that the slot is still free). The pool then runs more steps than its limit; seen here once in
-- seven runs of 8 processes on a pool of 2 (infinity_assets_tests/test_reliability.py).
--
-- The guard: an UPDATE that would hand a slot already held by one step to another step changes nothing.
-- Dagster then sees 0 rows updated, reports the slot as blocked, and the step tries again at its next poll,
-- as it does when the pool is full. Freeing a slot (step_key back to NULL), taking a free one and updates
-- that keep the holder (e.g. marking a slot deleted) pass unchanged.
--
-- To remove it:
--     DROP TRIGGER IF EXISTS infinity_assets_keep_held_slot ON concurrency_slots;
--     DROP FUNCTION IF EXISTS infinity_assets_keep_held_slot();

DO $$
DECLARE
    version text := coalesce(current_setting('infinity_assets.dagster_version', true), '');
    columns int;
BEGIN
    IF version NOT LIKE '1.13.%' THEN
        RAISE EXCEPTION 'concurrency_slot_guard.sql was written for Dagster 1.13.x, got Dagster version %',
            CASE WHEN version = '' THEN '(not given)' ELSE quote_literal(version) END
            USING HINT = 'pass the installed version: PGOPTIONS="-c infinity_assets.dagster_version=<dagster.__version__>"; '
                         'on another Dagster version, check whether the claim race is fixed before adapting the guard';
    END IF;
    SELECT count(*) INTO columns FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'concurrency_slots'
          AND column_name IN ('run_id', 'step_key', 'deleted');
    IF columns <> 3 THEN
        RAISE EXCEPTION 'concurrency_slots (run_id, step_key, deleted) not found in schema %: run `dagster instance migrate` first',
            current_schema();
    END IF;
END
$$;

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
