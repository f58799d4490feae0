-- A unit of work written in one statement refuses itself when a check fails (a second copy of a
-- consumed message, a stale version): the error undoes the whole statement, so that the unit
-- needs no transaction of its own. The SQLSTATE says which check failed.
CREATE OR REPLACE FUNCTION unit_of_work_refused(code text, reason text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = code, MESSAGE = reason;
END
$$;
